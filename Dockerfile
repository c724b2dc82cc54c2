# syntax=docker/dockerfile:1
# The one image of orderflow: the `orderflow` binary, which runs every process
# (`order-service`, `inventory-service`, `payment-service`, `gateway-sim`, and the operator tools).
#
#   docker build -t orderflow:latest .
#   docker run --rm orderflow:latest order-service --help
#
# Checked by `make test` (scripts/check-deploy.sh runs hadolint on it); see docs/deploy.md.

############################################################
# Builder: the workspace's toolchain (rust-version 1.95)
############################################################
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Dependency layer: the manifests and the lock file alone, with empty stand-ins for every crate's
# sources, so that the dependencies' build is cached until a Cargo.toml or Cargo.lock changes.
# Every workspace member (crates/*) is listed: cargo loads them all, even for `-p orderflow`
# (scripts/check-deploy.sh fails when a crate is added here without its line).
COPY Cargo.toml Cargo.lock ./
COPY crates/bench/Cargo.toml crates/bench/
COPY crates/contracts/Cargo.toml crates/contracts/
COPY crates/gateway-sim/Cargo.toml crates/gateway-sim/
COPY crates/inventory-service/Cargo.toml crates/inventory-service/
COPY crates/order-service/Cargo.toml crates/order-service/
COPY crates/orderflow/Cargo.toml crates/orderflow/
COPY crates/payment-service/Cargo.toml crates/payment-service/
COPY crates/platform/Cargo.toml crates/platform/
COPY crates/testkit/Cargo.toml crates/testkit/
# A stand-in lib.rs and main.rs in each crate gives every manifest a target (orderflow and bench have
# binaries, the others libraries); they are removed once the dependencies are built.
RUN set -eu; \
    for dir in crates/*/; do \
        mkdir -p "${dir}src"; \
        : > "${dir}src/lib.rs"; \
        echo 'fn main() {}' > "${dir}src/main.rs"; \
    done; \
    cargo build --release --locked -p orderflow; \
    rm -rf crates/*/src

# The real sources. Everything the build reads lives under crates/ (the SQL migrations are
# include_str!'d from crates/*/migrations). COPY keeps the files' own (older) times, so they are
# touched: cargo would otherwise take the stand-ins' build as up to date.
COPY crates crates
RUN find crates -type f -exec touch {} + \
    && cargo build --release --locked -p orderflow \
    && install -D -m 0755 target/release/orderflow /out/usr/local/bin/orderflow \
    && install -d -m 0750 /out/data

############################################################
# Runtime: glibc and libgcc only, no shell, no package manager
############################################################
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=builder /out/usr/local/bin/orderflow /usr/local/bin/orderflow
# SQLite data, where a deployment uses it (DATABASE_URL=sqlite:///data/<service>.db?mode=rwc), goes to
# a volume mounted here; production uses PostgreSQL. Owned by the image's user so that a new named
# volume starts out writable.
COPY --from=builder --chown=65532:65532 /out/data /data
WORKDIR /data

# Every service listens on 8080 in a container (each runs in its own); logs are JSON lines.
ENV ORDERFLOW_LISTEN=0.0.0.0:8080 \
    ORDERFLOW_LOG_FORMAT=json
EXPOSE 8080

# The distroless image's `nonroot` user (65532), given by number so that Kubernetes'
# runAsNonRoot can check it.
USER 65532:65532

# `orderflow probe` GETs http://127.0.0.1:<port of ORDERFLOW_LISTEN>/health/live: exit 0 on a 2xx.
# There is no shell in this image, hence the exec form.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/orderflow", "probe"]

ENTRYPOINT ["/usr/local/bin/orderflow"]
CMD ["--help"]
