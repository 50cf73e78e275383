# inwasm: `make demo` runs nginx with the module and an example filter; `make test` runs
# every test. Both install what is missing first (ci/setup.sh).
#
# NGINX=debian (default) builds the module against Debian's nginx 1.22 (/usr/sbin/nginx);
# NGINX=1.28 builds it against nginx 1.28 from the nginx-src crate. (Scripts get it as
# INWASM_NGINX: nginx itself reads an environment variable named NGINX.)
NGINX ?= debian

.PHONY: all setup filters build demo test host-test nginx-test fmt clippy clean
all: build

setup:
	@bash ci/setup.sh

filters: setup
	@bash ci/build-filters.sh

build: setup filters
	@INWASM_NGINX=$(NGINX) bash ci/build.sh

demo: build
	@INWASM_NGINX=$(NGINX) bash ci/demo.sh

test: build
	@INWASM_NGINX=$(NGINX) bash ci/test.sh

fmt:
	cargo fmt --all

clippy:
	@NGINX_BUILD_DIR=$$(bash ci/nginx-tree.sh $(NGINX)) cargo clippy --release --workspace --all-targets -- -D warnings

clean:
	rm -rf build target
