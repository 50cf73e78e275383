# inwasm: `make demo` runs nginx with the module and an example filter; `make test` runs
# every test. Both install what is missing first (ci/setup.sh).
#
# NGINX=debian (default) builds the module against Debian's nginx 1.22 (/usr/sbin/nginx);
# NGINX=1.28 builds it against nginx 1.28 from the nginx-src crate. (Scripts get it as
# INWASM_NGINX: nginx itself reads an environment variable named NGINX.)
NGINX ?= debian
# `make test` covers both nginx builds unless NGINX is given on the command line.
TEST_NGINX ?= $(if $(filter command line,$(origin NGINX)),$(NGINX),debian 1.28)

.PHONY: all setup filters build demo test test-under-load deb test-deb bench fuzz soak asan fmt clippy clean
all: build

setup:
	@bash ci/setup.sh
	@bash ci/setup-envoy.sh

filters: setup
	@bash ci/build-filters.sh

build: setup filters
	@INWASM_NGINX=$(NGINX) bash ci/build.sh

# The demo and the tests build with the `release` profile (minutes faster than `dist`). The
# demo builds only what it runs: nginx's module and the example filter (no Envoy).
demo:
	@bash ci/setup.sh
	@bash ci/build-filters.sh example-headers
	@INWASM_NGINX=$(NGINX) INWASM_PROFILE=release INWASM_MODULES=nginx bash ci/build.sh
	@INWASM_NGINX=$(NGINX) bash ci/demo.sh

# clippy, every test against the first nginx build, against the others what runs nginx,
# then the fuzz targets briefly (the filters and the fuzz targets build alongside:
# ci/test-all.sh).
test: setup
	@TEST_NGINX="$(TEST_NGINX)" bash ci/test-all.sh

# `make test` three times in a row (RUNS to change it) with every CPU kept busy (stress-ng).
test-under-load: setup
	@bash ci/test-under-load.sh

# The nginx module as a Debian package (from the dist build against Debian's nginx), and the
# package tried for real: installed, run by Debian's nginx, reloaded, purged (as root).
deb: setup
	@INWASM_NGINX=debian bash ci/build.sh
	@bash ci/deb.sh

test-deb: deb filters
	@bash ci/test-deb.sh

bench: build
	@bash ci/bench/run.sh

# Each fuzz target for 5 minutes (FUZZ_SECONDS to change it).
fuzz: setup
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-300} bash ci/fuzz.sh

# Mixed good and misbehaving traffic for 10 minutes, with reloads (SOAK_SECONDS to change it).
soak: build
	@INWASM_NGINX=$(NGINX) python3 ci/soak.py --seconds $${SOAK_SECONDS:-600}

# The host's tests, then the nginx suite (nginx 1.28 and the module), built with AddressSanitizer.
asan: setup filters
	@bash ci/asan.sh

fmt:
	cargo fmt --all

clippy:
	@INWASM_NGINX=$(NGINX) bash ci/clippy.sh

clean:
	rm -rf build target
