# The two set-up commands of the README: `make bench` and `make test`.
# Both install what the build needs first (scripts/bootstrap.sh).

SWIFT ?= swift

.PHONY: bootstrap build test test-tsan test-asan fuzz soak attack bench bench-docs bench-docs-split bench-check docs clean

bootstrap:
	@bash scripts/bootstrap.sh

build: bootstrap
	$(SWIFT) build

# Every test of every module, in debug mode, serially (each test bounds its own time),
# then the compile-fail checks (Tests/CompileFail: thread misuse must not compile),
# then every figure the docs quote checked against the recorded bench JSON.
test: bootstrap
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --disable-swift-testing
	bash scripts/compile-fail.sh .build/debug
	python3 scripts/docs-figures.py --check Docs/benchmarks.json Docs/benchmarks-split.json

# Every test again under ThreadSanitizer (its own build folder; CI runs it too),
# with the one suppression Tests/tsan-suppressions.txt explains; every report
# is printed again at the end (scripts/test-sanitized.sh).
test-tsan: bootstrap
	bash scripts/test-sanitized.sh thread

# Every test under AddressSanitizer (LeakSanitizer off for the test process;
# scripts/test-sanitized.sh says why).
test-asan: bootstrap
	bash scripts/test-sanitized.sh address

# Fuzz an endpoint's whole receive path through an in-memory transport (libFuzzer + ASan); FUZZ_SECONDS=600 by default.
fuzz:
	bash scripts/fuzz.sh $(or $(FUZZ_SECONDS),600)

# Soak: uvrpc serve under checked traffic and faults; SOAK_SECONDS=600 by default.
soak: bootstrap
	bash scripts/soak.sh $(or $(SOAK_SECONDS),600)

# Hostile peers against uvrpc serve, each scenario checked against its target
# (memory, cut-off times, the probe's latency; Docs/RELIABILITY.md). About 3 minutes.
attack: bootstrap
	$(SWIFT) build -c release
	.build/release/uvrpc-attack

# The main job: uvrpc-bench on defaults (every scenario, Swift and C servers
# under the same C load, and the Swift-only hol scenario; about 100 s). Needs
# every product built in release.
bench: bootstrap
	$(SWIFT) build -c release
	.build/release/uvrpc-bench

# The run behind Docs/BENCHMARKS.md: the table, its JSON and the chart; then
# every figure the docs quote from it is filled in (scripts/docs-figures.py).
bench-docs: bootstrap
	$(SWIFT) build -c release
	.build/release/uvrpc-bench --repeat 3 --json Docs/benchmarks.json --svg Docs/benchmarks.svg | tee Docs/benchmarks.txt
	python3 scripts/docs-figures.py --command "make bench-docs" Docs/benchmarks.json Docs/benchmarks-split.json

# The same with the server and the load on different CPUs (Docs/benchmarks-split.*).
bench-docs-split: bootstrap
	$(SWIFT) build -c release
	.build/release/uvrpc-bench --pin split --repeat 3 --scenario small,latency,medium,bulk,fanin,client --json Docs/benchmarks-split.json | tee Docs/benchmarks-split.txt
	python3 scripts/docs-figures.py --command "make bench-docs" Docs/benchmarks.json Docs/benchmarks-split.json

# Allocation regression check: fails when mallocs per round trip exceed the recorded figures.
bench-check: bootstrap
	$(SWIFT) build -c release
	.build/release/uvrpc-bench --scenario allocs --json .build/allocs.json
	python3 scripts/bench-check.py .build/allocs.json

# The DocC documentation of UVLoop, UVRPC and UVRPCMessages (swift-docc-plugin), into .build/docs;
# first, every figure in the docs checked against the recorded bench JSON.
docs: bootstrap
	bash scripts/docs.sh

clean:
	rm -rf .build
