# The two set-up commands of the README: `make bench` and `make test`.
# Both install what the build needs first (scripts/bootstrap.sh).

SWIFT ?= swift

.PHONY: bootstrap build test test-tsan bench clean

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

# The main job: until the benchmark executable exists (issue 5) this runs the
# loopback echo demo of UVLoop in release mode.
bench: bootstrap
	$(SWIFT) run -c release uvloop-echo

clean:
	rm -rf .build
