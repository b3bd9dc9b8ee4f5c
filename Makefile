# Everyday commands; CMake does the real work.
BUILD ?= build
PYTHON ?= $(HOME)/.venvs/ref/bin/python
# e.g. make bench-bidir BENCH_ARGS=--quick (reduced sizes, written to bench/results/quick/)
BENCH_ARGS ?=
.PHONY: all test sanitize fuzz bench bench-bidir clean install
all:
	bash scripts/bootstrap.sh
test: all
	ctest --test-dir $(BUILD) --output-on-failure -j2
sanitize:
	BUILD_DIR=build-asan BUILD_TYPE=RelWithDebInfo CMAKE_ARGS="-DXATTN_SANITIZE=ON -DXATTN_BUILD_BENCH=OFF" bash scripts/bootstrap.sh
	ctest --test-dir build-asan --output-on-failure -j2
fuzz:
	bash scripts/fuzz.sh
bench: all
	PYTHON="$(PYTHON)" bash bench/run.sh $(BENCH_ARGS)
clean:
	rm -rf build build-asan build-fuzz
install: all
	cmake --install $(BUILD)
bench-bidir: all
	"$(PYTHON)" bench/bidir_bench.py $(BENCH_ARGS)
