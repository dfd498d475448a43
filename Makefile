# Entry points. `make run` and `make test` are the README's two commands.
SHELL := /bin/bash
JOBS ?= $(shell nproc)
CMAKE_COMMON := -G Ninja -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
PORT ?= 3000

.PHONY: bootstrap build debug run test test-debug soak fuzz bench fmt fmt-check lint asan clean

bootstrap:
	@./scripts/bootstrap

build/release/build.ninja: | bootstrap
	@cmake -S . -B build/release $(CMAKE_COMMON) -DCMAKE_BUILD_TYPE=Release -DRAY_BUILD_TESTS=OFF >/dev/null

build/debug/build.ninja: | bootstrap
	@cmake -S . -B build/debug $(CMAKE_COMMON) -DCMAKE_BUILD_TYPE=Debug -DRAY_BUILD_BENCH=OFF >/dev/null

build: bootstrap build/release/build.ninja
	@cmake --build build/release -j $(JOBS) --target ray

debug: bootstrap build/debug/build.ninja
	@cmake --build build/debug -j $(JOBS)

run: build
	@echo "ray: serving profile tiny (mock backend) on http://127.0.0.1:$(PORT)"
	@echo "  try: curl -s localhost:$(PORT)/v1/infer -H 'content-type: application/json' -d '{\"input\":\"hi\"}'"
	@echo "  health: http://127.0.0.1:$(PORT)/health"
	@exec ./build/release/ray serve --profile tiny --port $(PORT)

# `make test` runs every suite once, in the sanitizer configuration (clang, ASan + UBSan, any UB aborts): the
# integration suites then drive an instrumented `ray`. `make test-debug` is the same suites in the GCC Debug
# build. The soak (tests/soak, label soak) runs with `make soak`.
SANITIZER_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
FUZZ_S ?= 20

build/asan/build.ninja: | bootstrap
	@CC=clang CXX=clang++ cmake -S . -B build/asan $(CMAKE_COMMON) -DCMAKE_BUILD_TYPE=Debug -DRAY_SANITIZE=ON -DRAY_FUZZ=ON -DRAY_BUILD_BENCH=OFF >/dev/null

asan: bootstrap build/asan/build.ninja
	@cmake --build build/asan -j $(JOBS)

test: asan
	@cd build/asan && $(SANITIZER_ENV) ctest --output-on-failure -j $(JOBS) --timeout 600 -LE soak

test-debug: debug
	@cd build/debug && ctest --output-on-failure -j $(JOBS) --timeout 300 -LE soak

soak: asan
	@cd build/asan && $(SANITIZER_ENV) ctest --output-on-failure -L soak --timeout 900

# Each libFuzzer target for FUZZ_S seconds from its committed corpus (a copy: new inputs stay out of the tree),
# with its dictionary tests/fuzz/<name>.dict when there is one.
fuzz: asan
	@set -e; for t in build/asan/tests/*_fuzz; do \
	  name=$$(basename $$t _fuzz); work=build/asan/fuzz-$$name; rm -rf $$work; mkdir -p $$work; \
	  cp -r tests/fuzz/corpus/$$name/. $$work/; \
	  dict=; if [ -f tests/fuzz/$$name.dict ]; then dict=-dict=tests/fuzz/$$name.dict; fi; \
	  echo "fuzz: $$name for $(FUZZ_S) s"; \
	  if ! $(SANITIZER_ENV) $$t -max_total_time=$(FUZZ_S) -print_final_stats=1 $$dict -artifact_prefix=$$work-crash- $$work > $$work.log 2>&1; then \
	    tail -n 80 $$work.log; echo "fuzz: $$name FAILED (the input: $$work-crash-*)"; exit 1; \
	  fi; \
	  tail -n 6 $$work.log; \
	done

# bench/overhead.sh (direct vs Ray vs nginx, ~5 min), bench/foundation.sh (Ray vs the reference server, < 1 min)
# and bench/metrics_scrape.sh (/metrics while the backend's hangs, ~15 s); each builds the Release targets it
# needs and rewrites its file in bench/results/.
bench: bootstrap build/release/build.ninja
	@./bench/overhead.sh
	@./bench/foundation.sh
	@./bench/metrics_scrape.sh

fmt:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

fmt-check:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format --dry-run --Werror

lint: build/debug/build.ninja
	@git ls-files 'src/*.cpp' | xargs clang-tidy -p build/debug --quiet


clean:
	@rm -rf build
