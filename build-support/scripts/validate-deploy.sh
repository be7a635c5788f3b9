#!/usr/bin/env bash
# Checks the deployment files offline, with no Docker engine:
#   docker-compose.yml          `docker-compose config -q` (Compose v2: the compose-spec
#                               schema, interpolation, anchors), plus: every build target is
#                               a stage of the Dockerfile and every bind-mounted file exists
#   Dockerfile                  hadolint, failing on warnings and errors
#   deploy/otel-collector.yaml  parses, and every pipeline names only defined components
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
pulse_log "deployment files are valid"
