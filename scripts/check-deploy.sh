#!/usr/bin/env bash
# Static checks of what operators deploy, part of `make test`: the Dockerfile (hadolint, and that it
# copies every crate's manifest), deploy/docker-compose.yml (`docker-compose config`), the NATS
# configuration it mounts (`nats-server -t`), the Kubernetes manifests (kubernetes-validate, strict, against
# the schemas of Kubernetes K8S_VERSION below), the NATS Helm values and how the files agree with each other
# and with the binary (scripts/check-deploy-consistency.py), and the compose stack's Prometheus
# configuration (`promtool check config`). Nothing is built or started: no container engine is needed.
#
# The checkers come from `make tools` (scripts/install-tools.sh). One that is missing is skipped with a
# message, or fails the run when ORDERFLOW_REQUIRE_DEPLOY_CHECKS=1 (CI). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="1.30.0"
HADOLINT=".tools/hadolint/bin/hadolint"
KUBERNETES_VALIDATE=".tools/kubernetes-validate/bin/kubernetes-validate"
# kubernetes-validate's venv has PyYAML, which the consistency checks need.
PYTHON=".tools/kubernetes-validate/bin/python"
DOCKER_COMPOSE=".tools/docker-compose/bin/docker-compose"
NATS_SERVER=".tools/nats-server/bin/nats-server"
PROMTOOL=".tools/prometheus/usr/bin/promtool"

failed=()
skipped=()

# check DESCRIPTION COMMAND...: runs one check, reporting it on one line.
check() {
  local what="$1"
  shift
  echo "check-deploy: $what"
  if ! "$@"; then
    echo "check-deploy: FAILED: $what" >&2
    failed+=("$what")
  fi
}

# have TOOL PATH: whether the checker at PATH is installed; if not, skips or fails as required.
have() {
  if [ -x "$2" ]; then
    return 0
  fi
  if [ "${ORDERFLOW_REQUIRE_DEPLOY_CHECKS:-0}" = 1 ]; then
    echo "check-deploy: FAILED: $1 not installed ($2); run make tools (ORDERFLOW_REQUIRE_DEPLOY_CHECKS=1 requires it)" >&2
    failed+=("$1 not installed")
  else
    echo "check-deploy: skipped: $1 not installed (run make tools)"
    skipped+=("$1")
  fi
  return 1
}

# The dependency layer of the Dockerfile names each workspace member; a crate it misses, or one it
# names that is gone, breaks the image's build (cargo loads every member's manifest).
dockerfile_copies_every_crate() {
  local manifest ok=0
  for manifest in crates/*/Cargo.toml; do
    if ! grep -qxF "COPY $manifest ${manifest%Cargo.toml}" Dockerfile; then
      echo "check-deploy: the Dockerfile does not copy $manifest (add: COPY $manifest ${manifest%Cargo.toml})" >&2
      ok=1
    fi
  done
  # …and names none that is gone.
  while read -r manifest; do
    if [ ! -f "$manifest" ]; then
      echo "check-deploy: the Dockerfile copies $manifest, which does not exist" >&2
      ok=1
    fi
  done < <(sed -n 's|^COPY \(crates/[^ ]*/Cargo\.toml\) .*|\1|p' Dockerfile)
  return "$ok"
}

start=$(date +%s)

check "Dockerfile copies every crate's Cargo.toml" dockerfile_copies_every_crate

if have hadolint "$HADOLINT"; then
  # style is hadolint's lowest severity: any finding fails.
  check "hadolint Dockerfile" "$HADOLINT" --failure-threshold style Dockerfile
fi

if have docker-compose "$DOCKER_COMPOSE"; then
  check "docker-compose -f deploy/docker-compose.yml config (with deploy/.env.example)" \
    "$DOCKER_COMPOSE" --env-file deploy/.env.example -f deploy/docker-compose.yml config -q
fi

if have nats-server "$NATS_SERVER"; then
  check "nats-server -t deploy/nats/cluster.conf" \
    env SERVER_NAME=nats-1 "$NATS_SERVER" -c deploy/nats/cluster.conf -t
fi

if have kubernetes-validate "$KUBERNETES_VALIDATE"; then
  manifests=()
  for manifest in deploy/k8s/*.yaml; do
    case "$(basename "$manifest")" in
      kustomization.yaml | nats-values.yaml) ;; # not Kubernetes objects: checked below
      *) manifests+=("$manifest") ;;
    esac
  done
  check "kubernetes-validate -k $K8S_VERSION --strict on ${#manifests[@]} manifests in deploy/k8s" \
    "$KUBERNETES_VALIDATE" -k "$K8S_VERSION" --strict --quiet "${manifests[@]}"
  check "deploy/k8s/nats-values.yaml, kustomization.yaml and the settings agree (check-deploy-consistency.py)" \
    "$PYTHON" scripts/check-deploy-consistency.py
fi

if have promtool "$PROMTOOL"; then
  check "promtool check config deploy/prometheus/prometheus.compose.yml" \
    "$PROMTOOL" check config deploy/prometheus/prometheus.compose.yml
fi

took=$(($(date +%s) - start))
if [ "${#failed[@]}" -gt 0 ]; then
  list="$(printf '%s; ' "${failed[@]}")"
  echo "check-deploy: ${#failed[@]} failed (${list%; }) in ${took}s" >&2
  exit 1
fi
if [ "${#skipped[@]}" -gt 0 ]; then
  echo "check-deploy: passed, but skipped ${skipped[*]} (not installed) in ${took}s"
else
  echo "check-deploy: all passed in ${took}s"
fi
