# Activation vending: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv

.PHONY: help setup test-packages demo test lint test-emulator test-rust test-contract test-scripts test-template test-iam bench clean static build print-test-targets

# Every suite that runs `vending` against the emulator records the IAM requests of its AWS
# calls into IAM_CALLS/<suite> (scripts/emulator/emulator/iam_calls.py); a suite's run replaces its
# records. test-template (tests/iam, also `make test-iam` alone) evaluates them all against
# the templates' policies.
IAM_CALLS := $(CURDIR)/target/iam-calls
record_iam_calls = rm -rf $(IAM_CALLS)/$(1) && mkdir -p $(IAM_CALLS)/$(1) && export EMULATOR_IAM_CALLS_DIR=$(IAM_CALLS)/$(1) &&

# One debug build for lint, test-rust and test-scripts: clippy-driver compiles the
# workspace's own crates (as `cargo clippy` does, which runs `cargo check` with this
# wrapper and these arguments), but in a build that produces the test binaries, so the
# dependency tree compiles once instead of once for clippy and once for the tests. Every
# cargo command on target/debug uses the same wrapper, so nothing recompiles between them.
CLIPPY_DRIVER := $(shell rustc --print sysroot)/bin/clippy-driver
CLIPPY := RUSTC_WORKSPACE_WRAPPER=$(CLIPPY_DRIVER) CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__

# The statically linked release binary: what the container image ships (the Dockerfile
# runs the same cargo command; tests/template/test_ecs_template.py keeps them alike), and
# what `sam build` packages in tests/template/run.sh (same target directory, flags and
# target, so cargo finds it fresh). The one release build of `make test`. `-p vending`:
# the features of the vending package alone (as cargo-lambda builds it from lambda/), not
# unified with vending-bench's, or the two builds would not share a single artifact.
STATIC_TARGET ?= $(shell uname -m)-unknown-linux-gnu
STATIC_TARGET_DIR ?= target/static
STATIC_BIN := $(STATIC_TARGET_DIR)/$(STATIC_TARGET)/release/vending

help:
	@echo "make demo   bring up the emulator and servers, boot simulated servers, show a rotation, tear down"
	@echo "make test   everything CI runs: lint, Rust unit+integration tests, boot-script suites, template gates"
	@echo "make bench  benchmark the hot path and a boot storm (writes target/bench/summary.json)"
	@echo "make lint   docs check, cargo fmt --check, clippy -D warnings (building the test binaries), shellcheck"
	@echo "make static the static release binary the container ships ($(STATIC_BIN))"

setup:
	scripts/setup.sh

demo: setup
	scripts/demo.sh

# What `make test` runs, in order; .ci/run runs exactly these, one timed stage each.
TEST_TARGETS := lint test-emulator test-rust test-contract test-scripts test-template
test: $(TEST_TARGETS)

print-test-targets:
	@echo $(TEST_TARGETS)

# The docs and layout checks first: stdlib Python, a second, and they name what is missing
# or wrong (tests/docs/, tests/layout/: no import circle in lambda/src, no file over 600 lines).
lint: setup
	python3 tests/docs/check.py
	python3 -m unittest discover -s tests/docs
	python3 tests/layout/check.py
	python3 -m unittest discover -s tests/layout
	cargo fmt --all -- --check
	$(CLIPPY) cargo build --workspace --all-targets
	$(VENV)/bin/shellcheck scripts/*.sh tests/*/*.sh .ci/run

test-emulator: setup
	tests/emulator/run.sh

# The Debian packages the tests use (faketime): a no-op once installed.
test-packages:
	scripts/install-test-packages.sh

# Four tests at once: the integration tests mostly wait (on deadlines, leases and
# their emulators), so two cores run four of them well (docs/testing.md).
test-rust: setup test-packages
	$(call record_iam_calls,rust) RUST_TEST_THREADS=$${RUST_TEST_THREADS:-4} $(CLIPPY) cargo test --workspace

# The published contract (openapi.yaml) against the debug binary the Rust tests run.
test-contract: setup
	$(CLIPPY) cargo test --workspace --no-run --quiet
	$(call record_iam_calls,contract) VENDING_BIN="$${VENDING_BIN:-$(CURDIR)/target/debug/vending}" tests/contract/run.sh

# The boot-script suites run the debug binary the Rust tests run (VENDING_BIN overrides).
test-scripts: setup
	$(CLIPPY) cargo test --workspace --no-run --quiet
	$(call record_iam_calls,scripts) VENDING_BIN="$${VENDING_BIN:-$(CURDIR)/target/debug/vending}" tests/bootstrap/run.sh

test-template:
	tests/template/setup.sh
	IAM_CALLS_DIR=$(IAM_CALLS) tests/template/run.sh

# The IAM evaluation of the suites' recorded calls alone (test-template runs it too); run
# test-rust, test-contract and test-scripts first.
test-iam:
	tests/template/setup.sh
	IAM_CALLS_DIR=$(IAM_CALLS) tests/iam/run.sh

# The shared debug build alone (lint runs it too): .ci/run starts it while the Python
# tools install.
build:
	$(CLIPPY) cargo build --workspace --all-targets

static:
	CARGO_TARGET_DIR=$(STATIC_TARGET_DIR) RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target $(STATIC_TARGET) -p vending --bin vending

bench: setup
	scripts/bench.sh

clean:
	-scripts/local.sh down
	cargo clean
