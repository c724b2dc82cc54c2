"""What no single checker sees in the deploy files: they parse, they agree with each other and with
the binary. Run by scripts/check-deploy.sh (with a Python that has PyYAML) from the repository root;
prints each problem and exits 1 if there is one.

- deploy/k8s/nats-values.yaml parses and asks for a 3-node JetStream cluster on a PVC with
  `sync_interval: always`, on the nats-server version the project pins (scripts/install-tools.sh);
  docker-compose's NATS image and deploy/nats/cluster.conf say the same.
- deploy/k8s/kustomization.yaml lists files that exist, and every manifest but the secret.
- Every environment variable the deploy files set is one the binary reads (`env = "..."` in crates/).
- The stop fits: ORDERFLOW_SHUTDOWN_GRACE is below terminationGracePeriodSeconds and compose's
  stop_grace_period; ORDERFLOW_SHUTDOWN_DELAY is below the grace.
- Each orderflow Deployment probes /health/live and /health/ready and sets resources.
- The Grafana provisioning files parse and the dashboard they load exists.
"""

import glob
import os
import re
import sys

import yaml

problems = []


def problem(message):
    problems.append(message)


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def seconds(duration, where):
    """`30s`, `2m`, `500ms`, `1h` (as orderflow and compose write them) in seconds; 0 and a problem
    if it is none of those."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", str(duration).strip())
    if not match:
        problem(f"{where}: {duration!r} is not a duration this check understands (like 500ms, 30s, 2m, 1h)")
        return 0
    value, unit = int(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def get(tree, *keys):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


# The nats-server version the project pins.
with open("scripts/install-tools.sh", encoding="utf-8") as f:
    pinned = re.search(r'^NATS_VERSION="([^"]+)"', f.read(), re.M)
nats_version = pinned.group(1) if pinned else None
if not nats_version:
    problem("scripts/install-tools.sh: NATS_VERSION not found")

# NATS on Kubernetes: the Helm values.
values = load("deploy/k8s/nats-values.yaml")
expected = {
    ("config", "cluster", "enabled"): True,
    ("config", "cluster", "replicas"): 3,
    ("config", "jetstream", "enabled"): True,
    ("config", "jetstream", "fileStore", "enabled"): True,
    ("config", "jetstream", "fileStore", "pvc", "enabled"): True,
    ("config", "merge", "jetstream", "sync_interval"): "always",
}
for keys, want in expected.items():
    if get(values, *keys) != want:
        problem(f"deploy/k8s/nats-values.yaml: {'.'.join(keys)} is {get(values, *keys)!r}, want {want!r}")
tag = str(get(values, "container", "image", "tag") or "")
if nats_version and tag.split("-")[0] != nats_version:
    problem(f"deploy/k8s/nats-values.yaml: container.image.tag {tag!r} is not the pinned nats-server {nats_version}")

# NATS under compose: the image and the configuration file.
compose = load("deploy/docker-compose.yml")
services = compose.get("services", {})
nats_nodes = [name for name, s in services.items() if str(s.get("image", "")).startswith("nats:")]
if len(nats_nodes) != 3:
    problem(f"deploy/docker-compose.yml: {len(nats_nodes)} NATS servers, want 3")
for name in nats_nodes:
    image = services[name]["image"]
    if nats_version and image.split(":", 1)[1].split("-")[0] != nats_version:
        problem(f"deploy/docker-compose.yml: {name} runs {image}, not the pinned nats-server {nats_version}")
with open("deploy/nats/cluster.conf", encoding="utf-8") as f:
    cluster_conf = f.read()
if not re.search(r"^\s*sync_interval:\s*always\s*$", cluster_conf, re.M):
    problem("deploy/nats/cluster.conf: no `sync_interval: always`")

# The kustomization lists what exists, and every manifest but the secret.
kustomization = load("deploy/k8s/kustomization.yaml")
resources = kustomization.get("resources") or []
for resource in resources:
    if not os.path.isfile(os.path.join("deploy/k8s", resource)):
        problem(f"deploy/k8s/kustomization.yaml: {resource} does not exist")
not_listed = {"kustomization.yaml", "nats-values.yaml", "secret.yaml"}
for path in sorted(glob.glob("deploy/k8s/*.yaml")):
    name = os.path.basename(path)
    if name not in not_listed and name not in resources:
        problem(f"deploy/k8s/kustomization.yaml: {name} is not in resources")
    if name == "secret.yaml" and name in resources:
        problem("deploy/k8s/kustomization.yaml: secret.yaml must not be in resources (its placeholders would overwrite the real secret)")

# The environment variables the binary reads.
known = {"RUST_LOG"}
for path in glob.glob("crates/*/src/**/*.rs", recursive=True):
    with open(path, encoding="utf-8") as f:
        known.update(re.findall(r'env = "([A-Z0-9_]+)"', f.read()))


def check_names(where, names):
    for name in names:
        if name not in known:
            problem(f"{where}: {name} is not an environment variable orderflow reads")


# Kubernetes: the ConfigMap, the Secret, the Deployments.
manifests = {}
for path in sorted(glob.glob("deploy/k8s/*.yaml")):
    if os.path.basename(path) in {"kustomization.yaml", "nats-values.yaml"}:
        continue
    for doc in load_all(path):
        manifests.setdefault(doc.get("kind"), []).append((path, doc))
config = {}
for path, doc in manifests.get("ConfigMap", []):
    config.update(doc.get("data") or {})
    check_names(path, (doc.get("data") or {}).keys())
for path, doc in manifests.get("Secret", []):
    check_names(path, (doc.get("stringData") or {}).keys())
    check_names(path, (doc.get("data") or {}).keys())
grace = seconds(config.get("ORDERFLOW_SHUTDOWN_GRACE", "20s"), "ORDERFLOW_SHUTDOWN_GRACE in deploy/k8s")
delay = seconds(config.get("ORDERFLOW_SHUTDOWN_DELAY", "0s"), "ORDERFLOW_SHUTDOWN_DELAY in deploy/k8s")
if delay >= grace:
    problem("deploy/k8s/configmap.yaml: ORDERFLOW_SHUTDOWN_DELAY must be below ORDERFLOW_SHUTDOWN_GRACE")
for path, doc in manifests.get("Deployment", []):
    name = doc["metadata"]["name"]
    pod = doc["spec"]["template"]["spec"]
    termination = pod.get("terminationGracePeriodSeconds", 30)
    if termination <= grace:
        problem(f"{path}: terminationGracePeriodSeconds {termination} is not above ORDERFLOW_SHUTDOWN_GRACE ({grace:g}s)")
    for container in pod["containers"]:
        for probe, route in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
            if get(container, probe, "httpGet", "path") != route:
                problem(f"{path}: {name}'s {probe} does not GET {route}")
        for kind in ("requests", "limits"):
            if not get(container, "resources", kind, "memory"):
                problem(f"{path}: {name} has no memory {kind}")
        check_names(path, [env["name"] for env in container.get("env") or []])

# Compose: the services' environment and stop.
for name, service in services.items():
    if service.get("image") != "orderflow:latest":
        continue
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    check_names(f"deploy/docker-compose.yml ({name})", environment.keys())
    where = f"deploy/docker-compose.yml ({name})"
    stop = seconds(service.get("stop_grace_period", "10s"), f"{where}: stop_grace_period")
    service_grace = seconds(environment.get("ORDERFLOW_SHUTDOWN_GRACE", "20s"), f"{where}: ORDERFLOW_SHUTDOWN_GRACE")
    if stop <= service_grace:
        problem(f"{where}: stop_grace_period is not above ORDERFLOW_SHUTDOWN_GRACE")

# Grafana provisioning.
for path in sorted(glob.glob("deploy/grafana/provisioning/**/*.yml", recursive=True)):
    load(path)
if not os.path.isfile("deploy/grafana/orderflow.json"):
    problem("deploy/grafana/orderflow.json (the provisioned dashboard) is missing")

for message in problems:
    print(f"check-deploy: {message}", file=sys.stderr)
sys.exit(1 if problems else 0)
