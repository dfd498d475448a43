# Entry points. `make run` and `make test` are the README's two commands.
SHELL := /bin/bash
JOBS ?= $(shell nproc)
CMAKE_COMMON := -G Ninja -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
PORT ?= 3000

.PHONY: bootstrap build debug run test bench fmt fmt-check lint asan clean

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

test: debug
	@cd build/debug && ctest --output-on-failure -j $(JOBS) --timeout 300

bench: bootstrap build/release/build.ninja
	@cmake --build build/release -j $(JOBS)
	@./bench/foundation.sh

fmt:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

fmt-check:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format --dry-run --Werror

lint: build/debug/build.ninja
	@git ls-files 'src/*.cpp' | xargs clang-tidy -p build/debug --quiet

asan: bootstrap
	@CC=clang CXX=clang++ cmake -S . -B build/asan $(CMAKE_COMMON) -DCMAKE_BUILD_TYPE=Debug -DRAY_SANITIZE=ON -DRAY_BUILD_BENCH=OFF >/dev/null
	@cmake --build build/asan -j $(JOBS)
	@cd build/asan && ctest --output-on-failure -j $(JOBS) --timeout 600

clean:
	@rm -rf build
