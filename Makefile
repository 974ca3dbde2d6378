# pyrycode-relay — the commands a developer and CI use.
CARGO ?= cargo

.PHONY: build run test test-scale sim lint fmt bench bench-tls fuzz-build fuzz

build:
	$(CARGO) build --release --workspace

run:
	$(CARGO) run --release -- --insecure-listen 127.0.0.1:8080

test:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

# Three relays behind two peered HAProxy balancers (deploy/haproxy.cfg) on
# loopback: routing, a relay killed and started again, a rolling restart;
# recovery times on stdout (docs/SCALING.md). Needs haproxy (apt-get install
# -y haproxy). PROXY v2 towards the relays when the relay serves
# --proxy-protocol (SCALE_PROXY=on to require it, off to leave it out).
# It uses the debug build `make test` already made (a few hundred peers
# need no optimizer), so CI does not compile the workspace twice.
SCALE_PROXY ?= on
test-scale:
	$(CARGO) build --workspace
	target/debug/relay-bench scale-test --relay target/debug/pyrycode-relay --proxy $(SCALE_PROXY)

# The seeded whole-relay simulation alone (docs/TESTING.md): `make test`
# runs 50 seeds; SIM_SEEDS=10000 make sim runs more, SIM_FIRST=N starts
# elsewhere, SIM_SEED=N replays one.
SIM_SEEDS ?= 1000
sim:
	SIM_SEEDS=$(SIM_SEEDS) $(CARGO) test --test sim -- --nocapture

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The default load suite (under 3 minutes on 2 cores): the relay, and HAProxy
# beside it when installed (apt-get install -y haproxy). Table on stdout;
# every figure in target/bench/results.json, the chart in target/bench/latency.svg.
bench:
	$(CARGO) build --release --workspace
	$(CARGO) run --release -p relay-bench -- suite --json target/bench/results.json --svg target/bench/latency.svg

# The TLS targets of issue #8 (about 75 s on 2 cores): every phase over
# TLS with one ECDSA P-256 certificate made for the run, the relay and HAProxy
# (bind … ssl crt, nbthread 1) alternating: idle memory per TLS connection at
# 10,000 phones (HAProxy at 9,900: its open-file limit), CPU per message at 1
# and 8 in flight, CPU per connect–handshake–echo–close cycle (churn, full TLS
# 1.3 handshakes). Needs HAProxy; see docs/BENCHMARKS.md, "TLS".
bench-tls:
	$(CARGO) build --release --workspace
	$(CARGO) run --release -p relay-bench -- suite --tls --baseline haproxy \
		--idle-phones 1000,10000 --in-flight 1,8 --rates 5000 --large-size 0 --no-fanout \
		--json target/bench/results-tls.json --svg target/bench/latency-tls.svg

# Fuzzing (nightly + `cargo install cargo-fuzz`); see docs/SECURITY.md.
FUZZ_TIME ?= 60
FUZZ_TARGETS = http_head ws_frames envelope connection proxy_header

fuzz-build:
	cd fuzz && $(CARGO) +nightly fuzz build

fuzz: fuzz-build
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p runs/$$t && \
		$(CARGO) +nightly fuzz run $$t runs/$$t corpus/$$t -- -max_total_time=$(FUZZ_TIME) -max_len=16384 || exit 1; \
	done
