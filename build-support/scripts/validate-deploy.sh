#!/usr/bin/env bash
# Checks the deployment files offline, with no Docker engine:
#   docker-compose.yml          `docker-compose config -q` (Compose v2: the compose-spec
#                               schema, interpolation, anchors), plus: every build target is
#                               a stage of the Dockerfile and every bind-mounted file exists
#   Dockerfile                  hadolint, failing on warnings and errors
#   deploy/otel-collector.yaml  parses, and every pipeline names only defined components
#   deploy/kubernetes/          every manifest the kustomization lists, against the Kubernetes
#                               JSON schemas (kubernetes-validate --strict, schemas bundled: no
#                               cluster, no network) of the oldest version we support and the newest
#                               bundled one; plus what schemas cannot see: selectors that match,
#                               references to Secrets/ConfigMaps/ports that exist, probes and
#                               security settings as README.md "Kubernetes" describes them
# Fails on the first invalid file. Tools come from ensure-tools.sh.
set -euo pipefail

# shellcheck source=build-support/scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PULSE_LOG_NAME=validate-deploy

cd "$PULSE_ROOT"
pulse_load_tools
: "${PULSE_TOOLS:?set by ensure-tools.sh}"

pulse_log "docker-compose.yml: compose config"
docker-compose -f docker-compose.yml config -q

pulse_log "Dockerfile: hadolint"
hadolint --no-color --failure-threshold warning Dockerfile

pulse_log "docker-compose.yml against Dockerfile, deploy/otel-collector.yaml"
compose_json="$(mktemp)"
trap 'rm -f "$compose_json"' EXIT
docker-compose -f docker-compose.yml config --format json >"$compose_json"
"$PULSE_TOOLS/venv/bin/python" - "$compose_json" Dockerfile deploy/otel-collector.yaml <<'PY'
import json
import os
import re
import sys

import yaml

errors = []
compose_path, dockerfile, otel_path = sys.argv[1:4]
with open(compose_path) as f:
    compose = json.load(f)

# Build targets must be stages of the Dockerfile.
with open(dockerfile) as f:
    stages = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", f.read()))
for name, service in compose["services"].items():
    target = (service.get("build") or {}).get("target")
    if target and target not in stages:
        errors.append(f"service {name}: build target {target!r} is not a stage of {dockerfile} ({sorted(stages)})")
    for volume in service.get("volumes", []):
        if volume.get("type") == "bind" and not os.path.exists(volume["source"]):
            errors.append(f"service {name}: bind mount source {volume['source']} does not exist")

# Collector pipelines may only use components defined in their sections.
otel = None
if os.path.exists(otel_path):
    with open(otel_path) as f:
        otel = yaml.safe_load(f)
if not isinstance(otel, dict) or "service" not in otel:
    errors.append(f"{otel_path}: missing, or has no service section")
else:
    for name in otel["service"].get("extensions", []):
        if name not in (otel.get("extensions") or {}):
            errors.append(f"{otel_path}: extension {name!r} is not defined")
    pipelines = otel["service"].get("pipelines") or {}
    if not pipelines:
        errors.append(f"{otel_path}: no pipelines")
    for pipeline, spec in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for name in spec.get(kind, []):
                if name not in (otel.get(kind) or {}):
                    errors.append(f"{otel_path}: pipeline {pipeline} uses undefined {kind[:-1]} {name!r}")
        if not spec.get("receivers") or not spec.get("exporters"):
            errors.append(f"{otel_path}: pipeline {pipeline} needs receivers and exporters")

for error in errors:
    print(f"[validate-deploy] error: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
# Oldest Kubernetes the manifests target (native gRPC probes: 1.24+; preStop
# sleep: 1.30+), and the newest the pinned kubernetes-validate bundles.
K8S_MIN_VERSION=1.30.0
K8S_MAX_VERSION="$(kubernetes-validate --version)"
k8s_dir=deploy/kubernetes
mapfile -t k8s_files < <("$PULSE_TOOLS/venv/bin/python" - "$k8s_dir" <<'PY'
import os
import sys

import yaml

directory = sys.argv[1]
with open(os.path.join(directory, "kustomization.yaml")) as f:
    kustomization = yaml.safe_load(f)
for resource in kustomization.get("resources", []):
    print(os.path.join(directory, resource))
PY
)
((${#k8s_files[@]} > 0)) || pulse_die "$k8s_dir/kustomization.yaml lists no resources"
for version in "$K8S_MIN_VERSION" "$K8S_MAX_VERSION"; do
    pulse_log "$k8s_dir: kubernetes-validate --strict, Kubernetes $version"
    kubernetes-validate --strict --quiet --kubernetes-version "$version" "${k8s_files[@]}"
done

pulse_log "$k8s_dir: selectors, references, probes, security"
"$PULSE_TOOLS/venv/bin/python" - "$k8s_dir" <<'PY'
import glob
import os
import sys

import yaml

directory = sys.argv[1]
errors = []
with open(os.path.join(directory, "kustomization.yaml")) as f:
    kustomization = yaml.safe_load(f)
listed = set(kustomization.get("resources", []))
present = {os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.yaml"))} - {"kustomization.yaml"}
for name in sorted(present - listed):
    errors.append(f"{directory}/{name} is not listed in kustomization.yaml")
for name in sorted(listed - present):
    errors.append(f"kustomization.yaml lists {name}, which does not exist")

docs = []
for name in sorted(listed & present):
    with open(os.path.join(directory, name)) as f:
        docs += [(name, d) for d in yaml.safe_load_all(f) if d]
by_kind = {}
for name, doc in docs:
    by_kind.setdefault(doc["kind"], []).append((name, doc))
secrets = {d["metadata"]["name"]: set((d.get("stringData") or {}) | (d.get("data") or {})) for _, d in by_kind.get("Secret", [])}
config_maps = {d["metadata"]["name"] for _, d in by_kind.get("ConfigMap", [])}

def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

templates = []
for name, deployment in by_kind.get("Deployment", []):
    where = f"{name}: Deployment {deployment['metadata']['name']}"
    spec = deployment["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    templates.append((deployment["metadata"]["name"], labels))
    if not matches(spec["selector"]["matchLabels"], labels):
        errors.append(f"{where}: the selector does not match the pod template's labels")
    pod = spec["template"]["spec"]
    if pod.get("terminationGracePeriodSeconds", 30) < 30:
        errors.append(f"{where}: terminationGracePeriodSeconds below the services' 30 s shutdown")
    if not (pod.get("securityContext") or {}).get("runAsNonRoot"):
        errors.append(f"{where}: the pod must set runAsNonRoot")
    for container in pod["containers"]:
        cwhere = f"{where}, container {container['name']}"
        security = container.get("securityContext") or {}
        if not security.get("readOnlyRootFilesystem") or security.get("allowPrivilegeEscalation", True):
            errors.append(f"{cwhere}: needs readOnlyRootFilesystem and allowPrivilegeEscalation: false")
        resources = container.get("resources") or {}
        if not resources.get("requests") or not resources.get("limits"):
            errors.append(f"{cwhere}: needs resource requests and limits")
        ports = {p["containerPort"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = (container.get(probe) or {}).get("grpc")
            if grpc is None:
                errors.append(f"{cwhere}: no gRPC {probe}")
            elif grpc["port"] not in ports:
                errors.append(f"{cwhere}: {probe} port {grpc['port']} is not a container port")
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref.get("key") not in secrets.get(ref["name"], set()):
                errors.append(f"{cwhere}: {env['name']} refers to a missing Secret key {ref['name']}/{ref.get('key')}")
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref and ref["name"] not in config_maps:
                errors.append(f"{cwhere}: envFrom refers to a missing ConfigMap {ref['name']}")

for kind in ("Service", "PodDisruptionBudget"):
    for name, doc in by_kind.get(kind, []):
        selector = doc["spec"]["selector"] if kind == "Service" else doc["spec"]["selector"]["matchLabels"]
        chosen = [d for d, labels in templates if matches(selector, labels)]
        if len(chosen) != 1:
            errors.append(f"{name}: {kind} {doc['metadata']['name']} selects {chosen or 'no Deployment'}, not exactly one")
deployments = {d for d, _ in templates}
budgeted = {d for _, doc in by_kind.get("PodDisruptionBudget", []) for d, labels in templates if matches(doc["spec"]["selector"]["matchLabels"], labels)}
for missing in sorted(deployments - budgeted):
    errors.append(f"Deployment {missing} has no PodDisruptionBudget")

for error in errors:
    print(f"[validate-deploy] error: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY

pulse_log "deployment files are valid"
