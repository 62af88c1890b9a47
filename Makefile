# Thin wrapper around CMake. `make test` and `make demo` are the two commands.
BUILD ?= build
PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# The 60 s load test (ctest label `load`) runs only when asked: make test CTEST_ARGS='-L load'
CTEST_ARGS ?= -LE load
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CMAKE_FLAGS ?=
ifeq ($(SANITIZE),1)
BUILD := build-asan
CMAKE_FLAGS += -DMOONOPS_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
endif
ifeq ($(WERROR),1)
CMAKE_FLAGS += -DMOONOPS_WERROR=ON
endif

DEB_PACKAGES := build-essential cmake pkg-config git \
  liblua5.4-dev lua5.4 libyaml-dev libcurl4-openssl-dev libgit2-dev zlib1g-dev libssl-dev \
  libmicrohttpd-dev libsqlite3-dev lua-cjson lua-busted lua-check \
  docker-registry buildah skopeo umoci wrk webhook lighttpd apache2-utils openssh-server openssh-client cron \
  busybox-static python3 python3-yaml openssl clang curl procps valgrind linux-perf

.PHONY: all deps build test demo bench install uninstall clean fuzz format

all: build

deps:
	@if command -v dpkg >/dev/null && dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
	  echo "deps: all Debian packages present"; \
	else \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES); \
	fi

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)

build: $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

test: deps build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

demo: deps build
	./examples/demo.sh $(BUILD)/moonops

bench: deps build
	./bench/run.sh $(BUILD)/moonops

# DESTDIR stages a package: files go under $(DESTDIR)$(PREFIX) but name $(PREFIX).
install: build
	DESTDIR=$(DESTDIR) cmake --install $(BUILD) --prefix $(PREFIX)

# Removes exactly the files the last install recorded, then the directories it
# emptied; nothing else under $(PREFIX) (your own plugins there stay).
uninstall:
	@if [ -f $(BUILD)/install_manifest.txt ]; then \
	  sed 's|^|$(DESTDIR)|' $(BUILD)/install_manifest.txt | xargs -r -d '\n' rm -fv; \
	  for d in share/moonops lib/moonops include/moonops; do \
	    [ ! -d "$(DESTDIR)$(PREFIX)/$$d" ] || find "$(DESTDIR)$(PREFIX)/$$d" -depth -type d -empty -delete; \
	  done; \
	else echo "uninstall: nothing recorded as installed in $(BUILD) (run 'make install' first)"; fi

fuzz:
	./tests/fuzz/run.sh $(FUZZ_SECONDS)

format:
	clang-format -i engine/*.c engine/*.h include/moonops/*.h tests/unit/*.c

clean:
	rm -rf build build-asan
