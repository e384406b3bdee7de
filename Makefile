# The two set-up commands of the README: `make bench` and `make test`.
# Both install what the build needs first (scripts/bootstrap.sh).

SWIFT ?= swift

.PHONY: bootstrap build test test-tsan bench bench-docs clean

bootstrap:
	@bash scripts/bootstrap.sh

build: bootstrap
	$(SWIFT) build

# Every test of every module, in debug mode, serially (each test bounds its own time).
test: bootstrap
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --disable-swift-testing

# Every test again under ThreadSanitizer (its own build folder; CI runs it too).
test-tsan: bootstrap
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan
	$(SWIFT) test --skip-build --disable-swift-testing --sanitize=thread --scratch-path .build-tsan

# The main job: uvrpc-bench on defaults (every scenario, Swift and C servers
# under the same C load, about 30 s). Needs every product built in release.
bench: bootstrap
	$(SWIFT) build -c release
	.build/release/uvrpc-bench

# The run behind Docs/BENCHMARKS.md: the table, its JSON and the chart.
bench-docs: bootstrap
	$(SWIFT) build -c release
	.build/release/uvrpc-bench --repeat 3 --json Docs/benchmarks.json --svg Docs/benchmarks.svg | tee Docs/benchmarks.txt

clean:
	rm -rf .build
