#!/usr/bin/env bash
# Property-based tests of the HTTP APIs against their OpenAPI documents: starts a whole system
# (`orderflow up` on free ports, in a temporary directory), then lets schemathesis (PyPI, installed
# into .tools/schemathesis) generate requests for every operation of each service's /openapi.json
# and check the real answers: never a 5xx, and status codes, content types, headers and bodies as the
# document says. Exits non-zero on any failure. Part of `make test`.
#
# Usage: scripts/api-properties.sh [path to the orderflow binary]   (default: ./target/debug/orderflow)
set -euo pipefail
cd "$(dirname "$0")/.."

ORDERFLOW="${1:-./target/debug/orderflow}"
SCHEMATHESIS_VERSION="4.32.5"
VENV=".tools/schemathesis"
# Enough examples per operation to cross every documented limit, few enough for a minute in all.
MAX_EXAMPLES="${API_PROPERTIES_MAX_EXAMPLES:-40}"

[ -x "$ORDERFLOW" ] || { echo "api-properties: $ORDERFLOW is missing; build it first (cargo build -p orderflow)" >&2; exit 2; }

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION"; then
  echo "api-properties: installing schemathesis $SCHEMATHESIS_VERSION into $VENV (PyPI)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || { echo "api-properties: cannot create a venv (is python3-venv installed?)" >&2; exit 2; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
    || { echo "api-properties: pip install failed (is PyPI reachable?)" >&2; exit 2; }
fi

# Free ports: the HTTP base and the three above it, and one for nats-server.
read -r HTTP_BASE NATS_PORT < <(python3 - <<'PY'
import socket
def free(count):
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        try:
            held = []
            for port in range(base, base + count):
                t = socket.socket(); t.bind(("127.0.0.1", port)); held.append(t)
            for t in held: t.close()
            return base
        except OSError:
            for t in held: t.close()
base = free(4)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); nats = s.getsockname()[1]
print(base, nats)
PY
)

DATA="$(mktemp -d)"
"$ORDERFLOW" up --data-dir "$DATA" --http-port-base "$HTTP_BASE" --nats-port "$NATS_PORT" > "$DATA/up.log" 2>&1 &
UP=$!
cleanup() {
  kill -TERM "$UP" 2>/dev/null || true
  wait "$UP" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

failed=0
for offset_service in 0:order-service 1:inventory-service 2:payment-service 3:gateway-sim; do
  port=$((HTTP_BASE + ${offset_service%%:*}))
  service="${offset_service#*:}"
  url="http://127.0.0.1:$port"
  for _ in $(seq 1 120); do
    curl -sf "$url/health/ready" >/dev/null 2>&1 && break
    kill -0 "$UP" 2>/dev/null || { echo "api-properties: orderflow up exited:" >&2; cat "$DATA/up.log" >&2; exit 1; }
    sleep 0.25
  done
  echo "api-properties: $service ($url/openapi.json)"
  # With the admin token `up` saved: admin operations are exercised too (their 401 and 403 are
  # checked by the system tests).
  if ! "$VENV/bin/schemathesis" run "$url/openapi.json" \
      --header "Authorization: Bearer $(cat "$DATA/admin-token")" \
      --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
      --max-examples "$MAX_EXAMPLES" --seed 1 --no-color > "$DATA/$service.txt" 2>&1; then
    cat "$DATA/$service.txt"
    failed=1
  else
    grep -E "^ *[0-9]+ generated" "$DATA/$service.txt" | sed "s/^ */api-properties:   /"
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "api-properties: a service answered outside its OpenAPI document (above)" >&2
  exit 1
fi
echo "api-properties: every answer matched the documents, and none was a 5xx"
