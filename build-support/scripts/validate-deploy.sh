#!/usr/bin/env bash
# Checks the deployment files offline, with no Docker engine:
#   docker-compose.yml          `docker-compose config -q` (Compose v2: the compose-spec
#                               schema, interpolation, anchors), plus: every build target is
#                               a stage of the Dockerfile, every bind-mounted file and every
#                               secret's file exists, every secret a service takes is defined;
#                               every image ships the binary of its name (built, installed,
#                               copied, its ports exposed) and its service publishes the ports
#                               its environment sets and runs `<binary> healthcheck`; the file
#                               DELIVERY_SECRET_KEY_FILE names is a secret holding base64 of 32 bytes
#   Dockerfile                  hadolint, failing on warnings and errors
#   deploy/otel-collector.yaml, deploy/jaeger.yaml (Jaeger v2 is a collector distribution)
#                               parse, and every pipeline names only defined components
#   deploy/prometheus.yml, deploy/prometheus-rules.yml
#                               promtool check config, check rules and test rules (the
#                               alerts' unit tests, deploy/prometheus-rules.test.yml; promtool from
#                               ensure-tools.sh; outside CI skipped with a note when missing),
#                               plus: the service loads the mounted config, the rule files are
#                               mounted beside it, every scrape target is a compose service
#                               whose environment or mounted config names the target's port,
#                               every service's metrics port (`*_METRICS_ADDR`) is scraped,
#                               there and by the collector (deploy/otel-collector.yaml)
#   deploy/grafana/             every dashboard parses and uses only provisioned datasource
#                               uids, its queries (Grafana variables replaced) pass promtool;
#                               the dashboards provider reads a mounted directory holding them,
#                               datasource URLs name compose services
#   deploy/kubernetes/          every manifest the kustomization lists, against the Kubernetes
#                               JSON schemas (kubernetes-validate --strict, schemas bundled: no
#                               cluster, no network) of the oldest version we support and the newest
#                               bundled one; plus what schemas cannot see: selectors that match,
#                               references to Secrets/ConfigMaps/ports that exist, probes and
#                               security settings as docs/operations.md "Kubernetes" describes them,
#                               every file an environment value names is a key of a mounted
#                               Secret (DELIVERY_SECRET_KEY_FILE's: base64 of 32 bytes), the gRPC and metrics addresses are the named container
#                               ports, every image is one of the kustomization's images
#   variables                   every variable compose, the Kubernetes manifests and run-local.sh
#                               set is one the code reads: a service's own (`PAYMENTS_...`) in its
#                               crate under services/, any other in some crate there (`X_FILE`:
#                               the file of secret X); OTEL_* and RUST_LOG are the libraries'.
#                               A service whose crate is not in the checkout yet is skipped, with
#                               a note
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

pulse_log "docker-compose.yml against Dockerfile, deploy/otel-collector.yaml, deploy/jaeger.yaml"
compose_json="$(mktemp)"
trap 'rm -f "$compose_json"' EXIT
docker-compose -f docker-compose.yml config --format json >"$compose_json"
"$PULSE_TOOLS/venv/bin/python" - "$compose_json" Dockerfile deploy/otel-collector.yaml deploy/jaeger.yaml <<'PY'
import base64
import json
import os
import re
import sys

import yaml

errors = []
compose_path, dockerfile, *otel_paths = sys.argv[1:]
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
    for secret in service.get("secrets", []):
        if secret["source"] not in compose.get("secrets", {}):
            errors.append(f"service {name}: secret {secret['source']} is not defined")
for name, secret in compose.get("secrets", {}).items():
    if "file" in secret and not os.path.isfile(secret["file"]):
        errors.append(f"secret {name}: file {secret['file']} does not exist")


def aes_key_error(text):
    """Why `text` is not what DELIVERY_SECRET_KEY takes (base64 of 32 bytes), or None."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        return "is not base64"
    return None if len(key) == 32 else f"decodes to {len(key)} bytes, not 32"


# The file DELIVERY_SECRET_KEY_FILE names is a secret holding an AES-256 key.
for name, service in compose["services"].items():
    key_file = (service.get("environment") or {}).get("DELIVERY_SECRET_KEY_FILE")
    if key_file is None:
        continue
    mounted = {s.get("target") or s["source"]: s["source"] for s in service.get("secrets", [])}
    secret = mounted.get(key_file.removeprefix("/run/secrets/"), mounted.get(key_file))
    source = (compose.get("secrets", {}).get(secret) or {}).get("file")
    if source is None or not os.path.isfile(source):
        errors.append(f"service {name}: DELIVERY_SECRET_KEY_FILE names {key_file}, which is none of its secrets' files")
    else:
        with open(source) as f:
            why = aes_key_error(f.read())
        if why:
            errors.append(f"secret {secret} ({source}), the key DELIVERY_SECRET_KEY_FILE names, {why}")

# Every image a service builds carries the OCI annotations docs/operations.md "Docker" lists.
with open(dockerfile) as f:
    stage_texts = dict(
        (m.group(1), m.group(2)) for m in re.finditer(r"(?ims)^FROM\s+\S+\s+AS\s+(\S+)\s*$(.*?)(?=^FROM\s|\Z)", f.read())
    )
oci = ("title", "description", "version", "revision", "created", "licenses")
for name, service in compose["services"].items():
    target = (service.get("build") or {}).get("target")
    for key in oci if target in stage_texts else ():
        if f"org.opencontainers.image.{key}=" not in stage_texts[target]:
            errors.append(f"{dockerfile}: stage {target} has no org.opencontainers.image.{key} label")

# Every image a service builds ships the workspace binary of the same name: the
# builder compiles and installs it, its stage copies it in and exposes the ports
# its ENV sets, and the service publishes the ports its environment sets and
# checks its health with the binary's `healthcheck` subcommand.
builder = stage_texts.get("builder", "")
built = set(re.findall(r"-p\s+([\w-]+)", " ".join(re.findall(r"cargo build\b[^\n]*", builder))))
for name, service in compose["services"].items():
    target = (service.get("build") or {}).get("target")
    if target not in stage_texts:
        continue
    stage, binary = stage_texts[target], f"/usr/local/bin/{target}"
    if target not in built or f"target/release/{target}" not in builder:
        errors.append(f"{dockerfile}: the builder does not build (-p {target}) and install target/release/{target}")
    if not re.search(rf"(?m)^COPY --from=builder /out/{re.escape(target)} {re.escape(binary)}\s*$", stage):
        errors.append(f"{dockerfile}: stage {target} does not copy /out/{target} to {binary}")
    exposed = set(re.findall(r"\d+", " ".join(re.findall(r"(?m)^EXPOSE\s+(.*)$", stage))))
    for port in re.findall(r"_ADDR=\S*:(\d+)", stage):
        if port not in exposed:
            errors.append(f"{dockerfile}: stage {target} listens on :{port} (ENV) but does not EXPOSE it")
    test = (service.get("healthcheck") or {}).get("test")
    if test != ["CMD", binary, "healthcheck"]:
        errors.append(f"service {name}: healthcheck test is {test}, not [CMD, {binary}, healthcheck]")
    published = {str(port.get("target")) for port in service.get("ports", [])}
    for var, value in (service.get("environment") or {}).items():
        port = str(value).rpartition(":")[2]
        if var.endswith(("_GRPC_ADDR", "_METRICS_ADDR")) and port not in published:
            errors.append(f"service {name}: {var} listens on :{port}, which is not among its ports")

# Collector pipelines may only use components defined in their sections.
for otel_path in otel_paths:
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
pulse_log "deploy/prometheus.yml, deploy/grafana/ against docker-compose.yml"
dashboard_rules="$(mktemp)"
trap 'rm -f "$compose_json" "$dashboard_rules" "$dashboard_rules.where"' EXIT
"$PULSE_TOOLS/venv/bin/python" - "$compose_json" deploy/prometheus.yml deploy/grafana "$dashboard_rules" \
    deploy/otel-collector.yaml <<'PY'
import glob
import json
import os
import re
import sys
from urllib.parse import urlsplit

import yaml

errors = []
compose_path, prometheus_path, grafana_dir, rules_out, collector_path = sys.argv[1:6]
with open(compose_path) as f:
    services = json.load(f)["services"]


def binds(service):
    return [v for v in services[service].get("volumes", []) if v.get("type") == "bind"]


def host_path(service, container_path):
    """The host path behind `container_path` in `service`, through its bind mounts (None: not mounted)."""
    for volume in sorted(binds(service), key=lambda v: -len(v["target"])):
        target = volume["target"].rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            return volume["source"] + container_path[len(target):]
    return None


def mounts_of(local_path):
    """(service, container path) of every bind mount of `local_path`."""
    local = os.path.abspath(local_path)
    return [(name, v["target"]) for name in services for v in binds(name) if os.path.abspath(v["source"]) == local]


def load_yaml(path):
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        errors.append(f"{path}: {err}")
        return {}


# Prometheus: its service loads the mounted config, the rule files are mounted
# where the config looks for them, every target is a service listening there.
prometheus = load_yaml(prometheus_path)
if not mounts_of(prometheus_path):
    errors.append(f"{prometheus_path} is not mounted by any compose service")
for service, config_target in mounts_of(prometheus_path):
    command = services[service].get("command") or []
    loads = next((c.split("=", 1)[1] for c in command if c.startswith("--config.file=")), "/etc/prometheus/prometheus.yml")
    if loads != config_target:
        errors.append(f"service {service} loads {loads}, but {prometheus_path} is mounted at {config_target}")
    for rule_file in prometheus.get("rule_files") or []:
        in_container = os.path.normpath(os.path.join(os.path.dirname(config_target), rule_file))
        source = host_path(service, in_container)
        if source is None or not os.path.isfile(source):
            errors.append(f"service {service}: rule file {in_container} is not mounted from an existing file")
for job in prometheus.get("scrape_configs") or []:
    for static in job.get("static_configs") or []:
        for target in static.get("targets") or []:
            host, _, port = target.rpartition(":")
            where = f"{prometheus_path}: job {job.get('job_name')}, target {target}"
            if host not in services:
                errors.append(f"{where}: {host} is not a compose service")
                continue
            # The port must be one the service is told to listen on, in its
            # environment (ORDERS_METRICS_ADDR: 0.0.0.0:9464) or a file it mounts.
            told = [str(v) for v in (services[host].get("environment") or {}).values()]
            for volume in binds(host):
                if os.path.isfile(volume["source"]):
                    with open(volume["source"]) as f:
                        told.append(f.read())
            if not any(re.search(rf":{re.escape(port)}\b", text) for text in told):
                errors.append(f"{where}: nothing in service {host}'s environment or mounted files listens on :{port}")
# And the other way round: every service that serves metrics is scraped, by
# Prometheus and by the collector (its prometheus receiver).
collector_scrapes = ((load_yaml(collector_path).get("receivers") or {}).get("prometheus") or {}).get("config") or {}
for path, config in ((prometheus_path, prometheus), (collector_path, collector_scrapes)):
    scraped = {
        target
        for job in config.get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    }
    for name, service in services.items():
        for var, value in (service.get("environment") or {}).items():
            port = str(value).rpartition(":")[2]
            if var.endswith("_METRICS_ADDR") and f"{name}:{port}" not in scraped:
                errors.append(f"service {name} serves metrics on :{port} ({var}), which {path} does not scrape")

# Grafana: datasources by uid, dashboards where the provider looks.
datasource_uids = set()
for path in sorted(glob.glob(os.path.join(grafana_dir, "provisioning/datasources/*.y*ml"))):
    for datasource in load_yaml(path).get("datasources") or []:
        datasource_uids.add(datasource.get("uid"))
        host = urlsplit(datasource.get("url", "")).hostname
        if host not in services:
            errors.append(f"{path}: datasource {datasource.get('name')} points at {host}, not a compose service")
if not datasource_uids:
    errors.append(f"{grafana_dir}/provisioning/datasources: no datasource")
for directory in sorted(glob.glob(os.path.join(grafana_dir, "provisioning/*/"))):
    directory = directory.rstrip("/")
    if not mounts_of(directory) and not mounts_of(os.path.dirname(directory)):
        errors.append(f"{directory} is not mounted by any compose service")
for path in sorted(glob.glob(os.path.join(grafana_dir, "provisioning/dashboards/*.y*ml"))):
    for provider in load_yaml(path).get("providers") or []:
        reads = (provider.get("options") or {}).get("path", "")
        sources = [(name, host_path(name, reads)) for name in services if host_path(name, reads)]
        if not sources:
            errors.append(f"{path}: provider {provider.get('name')} reads {reads}, which no service mounts")
        for name, source in sources:
            if not glob.glob(os.path.join(source, "*.json")):
                errors.append(f"{path}: service {name} mounts {source} at {reads}, which holds no dashboard")

# Dashboards: parse, datasources resolve, every query collected for promtool.
queries = []


def walk(node, at, path):
    if isinstance(node, dict):
        datasource = node.get("datasource")
        builtin = isinstance(datasource, dict) and datasource.get("type") == "grafana"
        if datasource is not None and not builtin and (
            not isinstance(datasource, dict) or datasource.get("uid") not in datasource_uids
        ):
            errors.append(f"{path}: {at} uses datasource {datasource!r}, not one of the provisioned uids {sorted(datasource_uids)}")
        if isinstance(node.get("expr"), str):
            queries.append((path, at, node["expr"]))
        for key, value in node.items():
            walk(value, f"{at}.{key}", path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk(value, f"{at}[{i}]", path)


dashboards = sorted(glob.glob(os.path.join(grafana_dir, "dashboards/*.json")))
if not dashboards:
    errors.append(f"{grafana_dir}/dashboards: no dashboard")
uids = {}
for path in dashboards:
    try:
        with open(path) as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as err:
        errors.append(f"{path}: {err}")
        continue
    for key in ("uid", "title", "schemaVersion", "panels"):
        if key not in dashboard:
            errors.append(f"{path}: no {key}")
    if dashboard.get("uid") in uids:
        errors.append(f"{path}: uid {dashboard.get('uid')} is also the uid of {uids[dashboard.get('uid')]}")
    uids[dashboard.get("uid")] = path
    walk(dashboard, "$", path)
    for variable in (dashboard.get("templating") or {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query or "")
        if label_values:
            queries.append((path, f"variable {variable.get('name')}", label_values.group(1)))


def promql(expr):
    """`expr` with Grafana's variables replaced, so that promtool can parse it."""
    expr = re.sub(r"\$(__rate_interval|__interval)\b|\$\{(__rate_interval|__interval)\}", "1m", expr)
    expr = re.sub(r"\$__range\b|\$\{__range\}", "1h", expr)
    return re.sub(r"\$\w+|\$\{[^}]*\}", ".+", expr)


rules = [{"record": f"dashboard_query_{i}", "expr": promql(expr)} for i, (_, _, expr) in enumerate(queries)]
with open(rules_out, "w") as f:
    yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)
with open(rules_out + ".where", "w") as f:
    for i, (path, at, expr) in enumerate(queries):
        f.write(f"dashboard_query_{i}: {path} {at}: {expr}\n")

for error in errors:
    print(f"[validate-deploy] error: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
if command -v promtool >/dev/null 2>&1; then
    pulse_log "deploy/prometheus.yml, deploy/prometheus-rules.yml: promtool"
    promtool check config deploy/prometheus.yml
    promtool check rules deploy/prometheus-rules.yml
    pulse_log "deploy/prometheus-rules.test.yml: promtool test rules"
    promtool test rules deploy/prometheus-rules.test.yml
    pulse_log "deploy/grafana/dashboards: every query through promtool"
    if ! promtool check rules "$dashboard_rules" >/dev/null 2>&1; then
        promtool check rules "$dashboard_rules" >&2 || true
        cat "$dashboard_rules.where" >&2
        pulse_die "a dashboard query does not parse (the numbered queries are above)"
    fi
elif pulse_is_ci; then
    pulse_die "promtool is missing (ensure-tools.sh installs it from Debian's prometheus package)"
else
    pulse_log "skipped promtool: it is missing (ensure-tools.sh installs it where apt-get exists)"
fi

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
import base64
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
# Each Secret's values in plain text (`data` is base64).
secret_values = {
    d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()} | (d.get("stringData") or {})
    for _, d in by_kind.get("Secret", [])
}
config_maps = {d["metadata"]["name"] for _, d in by_kind.get("ConfigMap", [])}
images = {image["name"] for image in kustomization.get("images", [])}

def image_name(reference):
    """An image reference without its tag or digest: kustomize's `images` name."""
    reference = reference.split("@")[0]
    head, _, tag = reference.rpartition(":")
    return head if head and "/" not in tag else reference

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
        image = image_name(container["image"])
        if image not in images:
            errors.append(f"{cwhere}: image {image} is not among kustomization.yaml's images")
        # A file an environment value names (URL_FILE, TOKEN_FILE) is a key of a mounted Secret.
        secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for env in container.get("env", []):
            value = env.get("value") or ""
            if not value.startswith("/"):
                continue
            for mount in container.get("volumeMounts", []):
                if value.startswith(mount["mountPath"].rstrip("/") + "/") and mount["name"] in secret_volumes:
                    secret, key = secret_volumes[mount["name"]], value[len(mount["mountPath"].rstrip("/")) + 1 :]
                    if key not in secrets.get(secret, set()):
                        errors.append(f"{cwhere}: {env['name']} names {value}, but Secret {secret} has no key {key}")
                    elif env["name"] == "DELIVERY_SECRET_KEY_FILE":
                        # An AES-256 key: base64 of 32 bytes.
                        text = str(secret_values.get(secret, {}).get(key, ""))
                        try:
                            length = len(base64.b64decode(text.strip(), validate=True))
                        except ValueError:
                            length = None
                        if length != 32:
                            errors.append(f"{cwhere}: Secret {secret} key {key} is not base64 of 32 bytes")
                    break
            else:
                if env["name"].endswith("_FILE"):
                    errors.append(f"{cwhere}: {env['name']} names {value}, which no mounted Secret provides")
        # The addresses the service is told to listen on are its named container ports.
        named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        for env in container.get("env", []):
            for suffix, port_name in (("_GRPC_ADDR", "grpc"), ("_METRICS_ADDR", "metrics")):
                port = (env.get("value") or "").rpartition(":")[2]
                if env["name"].endswith(suffix) and port != str(named.get(port_name)):
                    errors.append(f"{cwhere}: {env['name']} listens on :{port}, but its {port_name} port is {named.get(port_name)}")

deployment_specs = {d["metadata"]["name"]: d["spec"] for _, d in by_kind.get("Deployment", [])}
for name, hpa in by_kind.get("HorizontalPodAutoscaler", []):
    target = hpa["spec"]["scaleTargetRef"]
    where = f"{name}: HorizontalPodAutoscaler {hpa['metadata']['name']}"
    if target.get("kind") != "Deployment" or target.get("name") not in deployment_specs:
        errors.append(f"{where} scales {target.get('kind')} {target.get('name')}, which is not listed")
    elif "replicas" in deployment_specs[target["name"]]:
        errors.append(f"{where}: Deployment {target['name']} sets replicas, which every apply would reset")
for name, deployment in by_kind.get("Deployment", []):
    template = deployment["spec"]["template"]
    annotations = template["metadata"].get("annotations") or {}
    ports = {str(p["containerPort"]) for c in template["spec"]["containers"] for p in c.get("ports", [])}
    if annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") not in ports:
        errors.append(f"{name}: Deployment {deployment['metadata']['name']} is scraped on a port it does not expose")

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

pulse_log "variables the deployment files set, against the services' code"
"$PULSE_TOOLS/venv/bin/python" - "$compose_json" "$k8s_dir" build-support/scripts/run-local.sh <<'PY'
import glob
import os
import re
import sys

import yaml

compose_path, k8s_dir, run_local = sys.argv[1:]
errors = []
skipped = set()

with open(compose_path) as f:
    compose = yaml.safe_load(f)
with open(os.path.join(k8s_dir, "kustomization.yaml")) as f:
    kustomization = yaml.safe_load(f)
k8s_docs = []
for resource in kustomization.get("resources", []):
    path = os.path.join(k8s_dir, resource)
    if os.path.isfile(path):
        with open(path) as f:
            k8s_docs += [(path, d) for d in yaml.safe_load_all(f) if d]
with open(run_local) as f:
    run_local_text = f.read()

# What sets variables, by the binary that reads them: (binary, where, names).
settings = []
for name, service in compose["services"].items():
    target = (service.get("build") or {}).get("target")
    if target:
        settings.append((target, f"docker-compose.yml: service {name}", list(service.get("environment") or {})))
for path, doc in k8s_docs:
    if doc["kind"] != "Deployment":
        continue
    for container in doc["spec"]["template"]["spec"]["containers"]:
        # pulse-<binary>, as the kustomization names the images (a registry and tag may precede and follow).
        binary = re.sub(r":[^/]*$", "", container["image"].split("@")[0]).rpartition("/")[2].removeprefix("pulse-")
        where = f"{path}: Deployment {doc['metadata']['name']}, container {container['name']}"
        settings.append((binary, where, [env["name"] for env in container.get("env", [])]))
binaries = {binary for binary, _, _ in settings}
run_local_services = re.search(r"(?m)^services=\(([^)]*)\)", run_local_text)
binaries |= set(run_local_services.group(1).split()) if run_local_services else set()
for name in re.findall(r'(?m)^: "\$\{([A-Z][A-Z0-9_]*):=', run_local_text):
    owner = next((b for b in binaries if name.startswith(b.upper() + "_")), None)
    settings.append((owner, run_local, [name]))
for path, doc in k8s_docs:
    if doc["kind"] == "ConfigMap":
        settings.append((None, f"{path}: ConfigMap {doc['metadata']['name']}", list(doc.get("data") or {})))

crates = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob("services/*/Cargo.toml"))
literals = {}
for crate in crates:
    found = set()
    for path in glob.glob(f"services/{crate}/src/**/*.rs", recursive=True):
        with open(path) as f:
            found |= set(re.findall(r'"([A-Z][A-Z0-9_]*)"', f.read()))
    literals[crate] = found
everywhere = set().union(*literals.values())


def read_by(name, known):
    """Whether code that knows the string literals `known` reads `name` (`X_FILE`: the file of secret X)."""
    return name in known or (name.endswith("_FILE") and name.removesuffix("_FILE") in known)


for binary, where, names in settings:
    if binary is not None and binary not in literals:
        # Deployment files may land before the crate they deploy: checked once it is here.
        skipped.add(binary)
        continue
    for name in names:
        # Read by libraries on their own (the OpenTelemetry SDK, the log filter).
        if name.startswith("OTEL_") or name == "RUST_LOG":
            continue
        other = next((b for b in binaries if b != binary and name.startswith(b.upper() + "_")), None)
        if binary is None and other is not None and other not in literals:
            skipped.add(other)
        elif binary is not None and other is not None:
            errors.append(f"{where}: {name} is a variable of {other}, not of {binary}")
        elif binary is not None and name.startswith(binary.upper() + "_"):
            if not read_by(name, literals[binary]):
                errors.append(f"{where}: {name} is not a variable services/{binary} reads (a typo, or one it dropped)")
        elif not read_by(name, literals.get(other, everywhere)):
            errors.append(f"{where}: {name} is read by no crate under services/")

for binary in sorted(skipped):
    print(f"[validate-deploy] note: services/{binary} is not in this checkout: the variables set for it are not checked", file=sys.stderr)
for error in errors:
    print(f"[validate-deploy] error: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY

pulse_log "deployment files are valid"
