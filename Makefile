# Activation vending: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv

.PHONY: help setup demo test lint test-emulator test-rust test-scripts test-template bench clean

help:
	@echo "make demo   bring up the emulator and servers, boot simulated servers, show a rotation, tear down"
	@echo "make test   everything CI runs: lint, Rust unit+integration tests, boot-script suites, template gates"
	@echo "make bench  benchmark the hot path and a boot storm (writes target/bench/summary.json)"
	@echo "make lint   cargo fmt --check, clippy -D warnings, shellcheck"

setup:
	scripts/setup.sh

demo: setup
	scripts/demo.sh

test: lint test-emulator test-rust test-scripts test-template

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/shellcheck scripts/*.sh tests/*/*.sh .ci/run

test-emulator: setup
	tests/emulator/run.sh

test-rust: setup
	cargo test --workspace

test-scripts: setup
	tests/bootstrap/run.sh

test-template:
	tests/template/setup.sh
	tests/template/run.sh

bench: setup
	scripts/bench.sh

clean:
	-scripts/local.sh down
	cargo clean
