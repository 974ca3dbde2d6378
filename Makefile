# pyrycode-relay — the commands a developer and CI use.
CARGO ?= cargo

.PHONY: build run test lint fmt bench

build:
	$(CARGO) build --release --workspace

run:
	$(CARGO) run --release -- --insecure-listen 127.0.0.1:8080

test:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	$(CARGO) run --release -p relay-bench
