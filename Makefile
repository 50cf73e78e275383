# inwasm: `make demo` runs nginx with the module and an example filter; `make test` runs
# every test. Both install what is missing first (ci/setup.sh).
#
# NGINX=debian (default) builds the module against Debian's nginx 1.22 (/usr/sbin/nginx);
# NGINX=1.28 builds it against nginx 1.28 from the nginx-src crate.
NGINX ?= debian
DEMO_PORT ?= 8080

.PHONY: all setup filters build demo test host-test nginx-test fmt clippy clean
all: build

setup:
	@bash ci/setup.sh

filters: setup
	@bash ci/build-filters.sh

build: setup filters
	@NGINX=$(NGINX) bash ci/build.sh

demo: build
	@NGINX=$(NGINX) DEMO_PORT=$(DEMO_PORT) bash ci/demo.sh

test: build
	@NGINX=$(NGINX) bash ci/test.sh

fmt:
	cargo fmt --all

clippy:
	@NGINX_BUILD_DIR=$$(bash ci/nginx-tree.sh $(NGINX)) cargo clippy --release --workspace --all-targets -- -D warnings

clean:
	rm -rf build target
