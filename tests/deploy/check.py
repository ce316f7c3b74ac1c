#!/usr/bin/env python3
"""Checks what deploy/ ships: the Kubernetes manifests, the alert rules and
the Grafana dashboard.

- Renders each kustomize overlay (deploy/kubernetes/overlays/*) with the small
  part of kustomize the manifests use, and compares the result with
  `kubectl kustomize` or `kustomize build` where one is installed.
- Validates every rendered object with `kubernetes-validate --strict` against
  Kubernetes 1.30; the PodMonitor (a CRD it has no schema for) against a
  schema of the fields the manifests use, embedded below.
- Checks how the objects fit together (names, ports, selectors) and the
  privileges of each variant.
- `promtool check rules` and `promtool test rules` on the alert rules, and
  `promtool check rules` on the dashboard's queries.
- Every metric the rules and the dashboard query is one sonde exports
  (docs/metrics.md).
- sonde accepts the ConfigMap's config: `$SONDE_BIN check --config FILE`,
  when SONDE_BIN names a sonde binary; otherwise that check is skipped.

Prints one line per check and ends with `N passed, M failed` (and
`, K skipped`); exits 1 if any check failed.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["privileged", "least-privilege"]
RULES = ROOT / "deploy" / "prometheus" / "sonde-rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "sonde-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sonde.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
KUBERNETES_VERSION = "1.30.0"
# Prometheus's own series that the rules use beside sonde's.
PROMETHEUS_METRICS = {"up", "scrape_duration_seconds"}
ALERTS = {
    "SondeDown",
    "SondeProbeDown",
    "SondeEventsLost",
    "SondeSeriesLimitReached",
    "SondeReloadFailed",
    "SondeScrapeSlow",
}
# Probe metrics: filtered by the dashboard's cgroup variable.
PROBE_METRIC = re.compile(r"^sonde_(exec|exit|file_open|syscall|syscalls|vfs)_")


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def record(self, name, problems):
        """A check passes when it found no problem."""
        if problems:
            self.failed += 1
            print(f"FAIL  {name}")
            for problem in problems:
                for line in str(problem).splitlines():
                    print(f"        {line}")
        else:
            self.passed += 1
            print(f"PASS  {name}")

    def skip(self, name, reason):
        self.skipped += 1
        print(f"SKIP  {name}: {reason}")

    def summary(self):
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        return line


# ---------------------------------------------------------------------------
# The part of kustomize the manifests use: `resources` (files and
# directories), `patches` given as JSON 6902 operations with a kind/name
# target, `replacements` (field paths with [key=value] list selectors, and
# the delimiter/index options), and dropping resources annotated
# config.kubernetes.io/local-config. Anything else is refused, so that the
# manifests cannot grow a feature this renderer would silently ignore.


class KustomizeError(Exception):
    pass


class ManifestError(Exception):
    """The rendered objects are not what the checks expect to find."""


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "replacements"}


def build(directory):
    path = directory / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{path}: keys this renderer does not implement: {sorted(unknown)}")
    resources = []
    for entry in kustomization.get("resources", []):
        source = directory / entry
        if source.is_dir():
            resources.extend(build(source))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(source.read_text()) if doc is not None)
    for patch in kustomization.get("patches", []):
        apply_patch(resources, directory, patch)
    for replacement in kustomization.get("replacements", []):
        apply_replacement(resources, replacement)
    return [r for r in resources if not is_local_config(r)]


def is_local_config(resource):
    annotations = resource.get("metadata", {}).get("annotations") or {}
    return annotations.get("config.kubernetes.io/local-config") == "true"


def selected(resource, selector):
    unknown = set(selector) - {"kind", "name", "namespace"}
    if unknown:
        raise KustomizeError(f"selector keys this renderer does not implement: {sorted(unknown)}")
    meta = resource.get("metadata", {})
    return all(
        {"kind": resource.get("kind"), "name": meta.get("name"), "namespace": meta.get("namespace")}[key] == value
        for key, value in selector.items()
    )


def select_all(resources, selector, what):
    matches = [r for r in resources if selected(r, selector)]
    if not matches:
        raise KustomizeError(f"{what}: nothing matches {selector}")
    return matches


def apply_patch(resources, directory, patch):
    if set(patch) != {"path", "target"}:
        raise KustomizeError(f"patch {patch}: only `path` with `target` is implemented")
    operations = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(operations, list):
        raise KustomizeError(f"{patch['path']}: only JSON 6902 patches (a list of operations) are implemented")
    for resource in select_all(resources, patch["target"], f"patch {patch['path']}"):
        for operation in operations:
            json_patch(resource, operation)


def pointer(path):
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} does not start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def walk_pointer(document, parts, path):
    node = document
    for part in parts:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KustomizeError(f"{path}: no element {part!r}")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                raise KustomizeError(f"{path}: no member {part!r}")
            node = node[part]
        else:
            raise KustomizeError(f"{path}: {part!r} is inside a scalar")
    return node


def json_patch(document, operation):
    op, path = operation.get("op"), operation.get("path", "")
    parts = pointer(path)
    parent = walk_pointer(document, parts[:-1], path)
    last = parts[-1]
    if op == "add":
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            parent.insert(index, copy.deepcopy(operation["value"]))
        else:
            parent[last] = copy.deepcopy(operation["value"])
    elif op == "replace":
        walk_pointer(document, parts, path)
        key = int(last) if isinstance(parent, list) else last
        parent[key] = copy.deepcopy(operation["value"])
    elif op == "remove":
        walk_pointer(document, parts, path)
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise KustomizeError(f"JSON patch operation {op!r} is not implemented")


def field_path(text):
    """Splits a kustomize field path on dots not escaped with a backslash."""
    return [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", text)]


def field_parent_and_key(resource, text):
    """The container holding the field and the key or index of the field."""
    parts = field_path(text)
    node = resource
    for i, part in enumerate(parts):
        selector = re.fullmatch(r"\[([^=\]]+)=([^\]]*)\]", part)
        if selector:
            if not isinstance(node, list):
                raise KustomizeError(f"{text}: {part} applies to a list")
            key, value = selector.groups()
            found = [j for j, item in enumerate(node) if isinstance(item, dict) and str(item.get(key)) == value]
            if len(found) != 1:
                raise KustomizeError(f"{text}: {part} matches {len(found)} elements")
            index = found[0]
        elif isinstance(node, dict) and part in node:
            index = part
        else:
            raise KustomizeError(f"{text}: no field {part!r}")
        if i == len(parts) - 1:
            return node, index
        node = node[index]
    raise KustomizeError(f"{text}: empty field path")


def delimited(options):
    unknown = set(options) - {"delimiter", "index"}
    if unknown:
        raise KustomizeError(f"replacement options this renderer does not implement: {sorted(unknown)}")
    return options.get("delimiter"), options.get("index", 0)


def apply_replacement(resources, replacement):
    source = dict(replacement["source"])
    path = source.pop("fieldPath")
    delimiter, index = delimited(source.pop("options", {}))
    sources = select_all(resources, source, "replacement source")
    if len(sources) != 1:
        raise KustomizeError(f"replacement source {source} matches {len(sources)} resources")
    parent, key = field_parent_and_key(sources[0], path)
    value = parent[key]
    if delimiter is not None:
        value = str(value).split(delimiter)[index]
    for target in replacement["targets"]:
        target_delimiter, target_index = delimited(target.get("options", {}))
        for resource in select_all(resources, target["select"], "replacement target"):
            for target_path in target["fieldPaths"]:
                parent, key = field_parent_and_key(resource, target_path)
                if target_delimiter is not None:
                    parts = str(parent[key]).split(target_delimiter)
                    if target_index >= len(parts):
                        raise KustomizeError(f"{target_path}: no part {target_index} split by {target_delimiter!r}")
                    parts[target_index] = str(value)
                    parent[key] = target_delimiter.join(parts)
                elif isinstance(parent[key], int) and isinstance(value, str) and value.isdigit():
                    # kustomize writes the copied text untagged, so a number
                    # stays a number (a containerPort).
                    parent[key] = int(value)
                else:
                    parent[key] = value


def identity(resource):
    meta = resource.get("metadata", {})
    return (resource.get("apiVersion"), resource.get("kind"), meta.get("namespace") or "", meta.get("name"))


def by_kind(resources, kind):
    return [r for r in resources if r.get("kind") == kind]


def one(resources, kind):
    found = by_kind(resources, kind)
    if len(found) != 1:
        raise ManifestError(f"{len(found)} {kind} objects, expected 1")
    return found[0]


# ---------------------------------------------------------------------------
# Checks of the rendered manifests.


def check_against_kustomize(results, rendered):
    name = "the renderer agrees with kustomize on every overlay"
    if shutil.which("kustomize"):
        command = ["kustomize", "build"]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize"]
    else:
        results.skip(name, "neither kustomize nor kubectl is installed")
        return
    problems = []
    for overlay, resources in rendered.items():
        directory = KUSTOMIZE_ROOT / "overlays" / overlay
        run = subprocess.run(command + [str(directory)], capture_output=True, text=True)
        if run.returncode != 0:
            problems.append(f"{overlay}: {' '.join(command)} failed: {run.stderr.strip()}")
            continue
        theirs = {identity(r): r for r in yaml.safe_load_all(run.stdout) if r is not None}
        ours = {identity(r): r for r in resources}
        if set(theirs) != set(ours):
            problems.append(f"{overlay}: objects differ: kustomize {sorted(theirs)}, ours {sorted(ours)}")
            continue
        for key, resource in ours.items():
            if resource != theirs[key]:
                problems.append(
                    f"{overlay}: {key[1]}/{key[3]} differs:\n"
                    f"kustomize: {json.dumps(theirs[key], sort_keys=True)}\n"
                    f"ours:      {json.dumps(resource, sort_keys=True)}"
                )
    results.record(f"{name} ({' '.join(command)})", problems)


# The fields of monitoring.coreos.com/v1 PodMonitor that the manifests use,
# with the types and patterns of the Prometheus Operator's CRD; any other
# field is refused, as --strict does for built-in kinds.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": STRING_MAP},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {"type": "array", "items": LABEL_NAME},
                                        "separator": {"type": "string"},
                                        "targetLabel": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "action": {
                                            "enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_manifests(results, overlay, resources, workdir):
    for resource in resources:
        kind, name = resource["kind"], resource["metadata"]["name"]
        label = f"{overlay}: {kind}/{name} is valid"
        path = workdir / f"{overlay}-{kind}-{name}.yaml".lower()
        path.write_text(yaml.safe_dump(resource, sort_keys=False))
        run = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "-k", KUBERNETES_VERSION, "--strict", str(path)],
            capture_output=True,
            text=True,
        )
        output = (run.stdout + run.stderr).strip()
        if "Couldn't find schema" in output and kind == "PodMonitor":
            errors = sorted(jsonschema.Draft7Validator(PODMONITOR_SCHEMA).iter_errors(resource), key=str)
            results.record(
                f"{label} (kubernetes-validate has no schema for this CRD: checked against the embedded one)",
                [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors],
            )
        elif run.returncode != 0 or "passed for resource" not in output:
            results.record(f"{label} (kubernetes-validate {KUBERNETES_VERSION} --strict)", [output or "no output"])
        else:
            results.record(f"{label} (kubernetes-validate {KUBERNETES_VERSION} --strict)", [])


def listen_address():
    listen = yaml.safe_load((KUSTOMIZE_ROOT / "base" / "listen.yaml").read_text())
    return listen["data"]["listen"]


def label_subset(wanted, labels):
    return all(labels.get(k) == v for k, v in (wanted or {}).items())


def wiring_problems(resources):
    """How the objects refer to each other: namespace, account, config,
    ports, selectors, mounts."""
    problems = []
    namespace = one(resources, "Namespace")["metadata"]["name"]
    for r in resources:
        if r["kind"] != "Namespace" and r["metadata"].get("namespace") != namespace:
            problems.append(f"{r['kind']}/{r['metadata']['name']} is not in namespace {namespace}")
    ds = one(resources, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    account = one(resources, "ServiceAccount")
    config_map = next(r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "sonde-config")
    service = one(resources, "Service")
    monitor = one(resources, "PodMonitor")
    [container] = pod["containers"]

    if pod.get("serviceAccountName") != account["metadata"]["name"]:
        problems.append("the pod does not run as the ServiceAccount")
    if account.get("automountServiceAccountToken") is not False or pod.get("automountServiceAccountToken") is not False:
        problems.append("a service account token is mounted")
    if pod.get("hostPID") is not True:
        problems.append("hostPID is not true: sonde would not recognise its own process")
    if {"operator": "Exists"} not in pod.get("tolerations", []):
        problems.append("no toleration for every taint (operator: Exists)")
    if "priorityClassName" in pod:
        problems.append("priorityClassName is set")
    if ds["spec"]["updateStrategy"].get("type") != "RollingUpdate" or "maxUnavailable" not in ds["spec"][
        "updateStrategy"
    ].get("rollingUpdate", {}):
        problems.append("no rolling update with maxUnavailable")
    if not label_subset(ds["spec"]["selector"]["matchLabels"], pod_labels):
        problems.append("the DaemonSet's selector does not match its pods")
    if container["image"] != "sonde:latest" or container.get("imagePullPolicy") != "IfNotPresent":
        problems.append("image is not sonde:latest with imagePullPolicy IfNotPresent")
    if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
        problems.append("the root filesystem is writable")
    compute = container.get("resources", {})
    if not compute.get("requests", {}).get("cpu") or not compute.get("limits", {}).get("memory"):
        problems.append("no CPU request or memory limit")

    # The config file the container is told to read is the ConfigMap's.
    args = container["args"]
    if args[:2] != ["run", "--config"]:
        problems.append(f"args {args} are not `run --config FILE`")
    else:
        config_file = Path(args[2])
        volumes = {v["name"]: v for v in pod["volumes"]}
        mount = next((m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_file.parent), None)
        if mount is None or volumes.get(mount["name"], {}).get("configMap", {}).get("name") != "sonde-config":
            problems.append(f"{config_file.parent} is not the sonde-config ConfigMap")
        elif config_file.name not in config_map["data"]:
            problems.append(f"the ConfigMap has no {config_file.name}")

    # One listen address, the same port everywhere; everything else names it.
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    if config.get("listen") != listen_address():
        problems.append(f"config listen {config.get('listen')!r} is not listen.yaml's {listen_address()!r}")
    port = int(listen_address().rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("metrics") != port:
        problems.append(f"containerPort `metrics` is {ports.get('metrics')}, sonde listens on {port}")
    for probe in ("livenessProbe", "readinessProbe"):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != "/healthz" or get.get("port") != "metrics":
            problems.append(f"{probe} is not GET /healthz on port `metrics`")
    [service_port] = service["spec"]["ports"]
    if service["spec"].get("clusterIP") != "None":
        problems.append("the Service is not headless")
    if service_port.get("name") != "metrics" or service_port["port"] != port or service_port["targetPort"] != "metrics":
        problems.append(f"the Service's port is not `metrics` {port} -> metrics")
    if not label_subset(service["spec"]["selector"], pod_labels):
        problems.append("the Service's selector does not match the pods")
    if not label_subset(monitor["spec"]["selector"]["matchLabels"], pod_labels):
        problems.append("the PodMonitor's selector does not match the pods")
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        if endpoint.get("port") not in ports or endpoint.get("path") != "/metrics":
            problems.append(f"PodMonitor endpoint {endpoint} is not /metrics on a container port")

    # Host paths: tracefs, the cgroup tree and the CRI socket, all read only, nothing else.
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    expected = ["/run/containerd/containerd.sock", "/sys/fs/cgroup", "/sys/kernel/tracing"]
    if sorted(host_paths.values()) != expected:
        problems.append(f"host paths {sorted(host_paths.values())} are not {expected}")
    for mount in container["volumeMounts"]:
        if mount["name"] in host_paths and mount.get("readOnly") is not True:
            problems.append(f"host path {host_paths[mount['name']]} is mounted writable")
    return problems


WIRING = "objects refer to each other rightly"
PRIVILEGES = "container privileges"


def check_wiring(results, overlay, resources):
    results.record(f"{overlay}: {WIRING}", wiring_problems(resources))


def check_privileges(results, overlay, resources):
    results.record(f"{overlay}: {PRIVILEGES}", privilege_problems(overlay, resources))


def check_listen_in_one_place(results, rendered, workdir):
    """Changing listen.yaml alone moves sonde, its container port and the
    Service port to the new port, and changes nothing else."""
    moved_address, moved_port = "127.0.0.1:29477", 29477
    copy_root = workdir / "kubernetes"
    shutil.copytree(KUSTOMIZE_ROOT, copy_root)
    listen_file = copy_root / "base" / "listen.yaml"
    listen = yaml.safe_load(listen_file.read_text())
    listen["data"]["listen"] = moved_address
    listen_file.write_text(yaml.safe_dump(listen))
    problems = []
    for overlay, resources in rendered.items():
        try:
            moved = build(copy_root / "overlays" / overlay)
        except KustomizeError as err:
            problems.append(f"{overlay}: {err}")
            continue
        expected = copy.deepcopy(resources)
        for resource in expected:
            kind = resource["kind"]
            if kind == "ConfigMap" and resource["metadata"]["name"] == "sonde-config":
                config = resource["data"]["config.yaml"]
                resource["data"]["config.yaml"] = config.replace(f'"{listen_address()}"', f'"{moved_address}"', 1)
            elif kind == "DaemonSet":
                for port in resource["spec"]["template"]["spec"]["containers"][0]["ports"]:
                    port["containerPort"] = moved_port
            elif kind == "Service":
                resource["spec"]["ports"][0]["port"] = moved_port
        if yaml.safe_load(one(moved, "ConfigMap")["data"]["config.yaml"]).get("listen") != moved_address:
            problems.append(f"{overlay}: sonde's config does not take listen.yaml's address")
        for before, after in zip(expected, moved):
            if before != after:
                problems.append(f"{overlay}: {before['kind']}/{before['metadata']['name']} is not as expected:\n"
                                f"expected {json.dumps(before, sort_keys=True)}\n"
                                f"got      {json.dumps(after, sort_keys=True)}")
    results.record("the listen address is set in one place (base/listen.yaml)", problems)


def privilege_problems(overlay, resources):
    context = one(resources, "DaemonSet")["spec"]["template"]["spec"]["containers"][0].get("securityContext", {})
    config_map = next(r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "sonde-config")
    problems = []
    # Both variants give up every capability once the probes are attached.
    if yaml.safe_load(config_map["data"]["config.yaml"]).get("drop_capabilities") is not True:
        problems.append("sonde's config does not set drop_capabilities: true")
    if overlay == "privileged":
        return problems + ([] if context.get("privileged") is True else ["the container is not privileged"])
    # A non-root uid would hold none of the added capabilities: Kubernetes
    # sets no ambient capabilities (docs/deployment.md#capabilities).
    if context.get("runAsUser") != 0 or context.get("runAsNonRoot") is not False:
        problems.append("the least-privilege container does not run as uid 0 (runAsUser 0, runAsNonRoot false)")
    if context.get("privileged") is not False:
        problems.append("privileged is not false")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    capabilities = context.get("capabilities", {})
    if capabilities.get("drop") != ["ALL"]:
        problems.append(f"capabilities.drop is {capabilities.get('drop')}, not [ALL]")
    if sorted(capabilities.get("add", [])) != ["BPF", "PERFMON"]:
        problems.append(f"capabilities.add is {capabilities.get('add')}, not BPF and PERFMON")
    if context.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Unconfined"):
        problems.append("no seccompProfile")
    return problems


def check_sonde_accepts_config(results, rendered, workdir):
    name = "sonde accepts the ConfigMap's config (sonde check --config)"
    binary = os.environ.get("SONDE_BIN")
    if not binary:
        results.skip(name, "not run: set SONDE_BIN to a sonde binary to run it")
        return
    configs = {}
    for overlay, resources in rendered.items():
        config_map = next(r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "sonde-config")
        configs.setdefault(config_map["data"]["config.yaml"], []).append(overlay)
    problems = []
    for i, (text, overlays) in enumerate(configs.items()):
        path = workdir / f"config-{i}.yaml"
        path.write_text(text)
        try:
            run = subprocess.run([binary, "check", "--config", str(path)], capture_output=True, text=True)
        except OSError as err:
            problems.append(f"cannot run {binary}: {err}")
            break
        print(f"        {', '.join(overlays)}: {(run.stdout + run.stderr).strip()}")
        if run.returncode != 0:
            problems.append(f"{', '.join(overlays)}: exit status {run.returncode}")
    results.record(name, problems)


# ---------------------------------------------------------------------------
# Rules and dashboard.


def promtool():
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


def run_promtool(results, name, arguments):
    tool = promtool()
    if tool is None:
        results.record(name, ["promtool is not installed (tests/deploy/run.sh installs it)"])
        return
    run = subprocess.run([tool] + arguments, capture_output=True, text=True)
    output = (run.stdout + run.stderr).strip()
    results.record(name, [] if run.returncode == 0 else [output])


def rule_exprs():
    rules = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def check_rule_set(results):
    problems = []
    rules = yaml.safe_load(RULES.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = {rule.get("alert") for rule in alerts}
    if names != ALERTS:
        problems.append(f"alerts {sorted(names)} are not {sorted(ALERTS)}")
    for rule in alerts:
        if not rule.get("labels", {}).get("severity"):
            problems.append(f"{rule['alert']} has no severity label")
        annotations = rule.get("annotations", {})
        if not annotations.get("summary") or not annotations.get("description"):
            problems.append(f"{rule['alert']} lacks a summary or description")
    results.record("the rules are the six alerts, each with severity, summary and description", problems)


def documented_scrape_config():
    """The annotation-based scrape config shown in docs/deployment.md."""
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOYMENT_DOC.read_text(), re.S)
    configs = [yaml.safe_load(b) for b in blocks if "scrape_configs:" in b]
    return configs[0] if len(configs) == 1 else None


def check_documented_scrape_config(results, workdir):
    """promtool checks the scrape config of docs/deployment.md. Debian's
    promtool is built without Kubernetes discovery, so the discovery is
    replaced by a static target; the relabelling is checked as written."""
    name = "promtool checks the documented scrape config (its pod discovery replaced by a static target)"
    config = copy.deepcopy(documented_scrape_config())
    if config is None:
        results.record(name, [f"{DEPLOYMENT_DOC} does not show exactly one scrape config"])
        return
    for scrape in config["scrape_configs"]:
        if scrape.pop("kubernetes_sd_configs", None) is None:
            results.record("the documented scrape config", [f"job {scrape.get('job_name')} discovers no pods"])
            return
        scrape["static_configs"] = [{"targets": ["sonde.invalid:19477"]}]
    path = workdir / "documented-scrape-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_promtool(results, name, ["check", "config", str(path)])


def check_job_regex(results, rendered):
    """The rules find sonde's scrape job by a regex on `job`: it must match the
    job the PodMonitor gives (namespace/name) and the job of the
    annotation-based scrape config in docs/deployment.md."""
    monitor = one(next(iter(rendered.values())), "PodMonitor")
    jobs = [f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"]
    jobs += [scrape["job_name"] for scrape in (documented_scrape_config() or {}).get("scrape_configs", [])]
    problems = []
    for alert, expr in rule_exprs().items():
        for regex in re.findall(r'job\s*=~\s*"([^"]*)"', expr):
            for job in jobs:
                if not re.fullmatch(regex, job):
                    problems.append(f"{alert}: job=~{regex!r} does not match job {job!r}")
    results.record(f"the rules' job regex matches the scrape jobs {jobs}", problems)


def dashboard_queries(dashboard):
    """(where, expr) of every panel target and of every template variable."""
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['id']} {panel['title']!r}", target["expr"]))
    return queries


def variable_queries(dashboard):
    return [(f"variable {v['name']}", v["definition"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]


def as_promql(expr):
    """The dashboard's Grafana variables replaced by values Prometheus parses."""
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$cgroup", ".*")


def check_dashboard_promql(results, dashboard, workdir):
    """promtool parses every panel query, given as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_queries(dashboard))
    ]
    path = workdir / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    run_promtool(results, f"promtool parses the dashboard's {len(rules)} queries", ["check", "rules", str(path)])


def check_dashboard_structure(results, dashboard):
    problems = []
    if not 37 <= dashboard.get("schemaVersion", 0) <= 39:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')} is not one of Grafana 10's (37-39)")
    if [i.get("name") for i in dashboard.get("__inputs", [])] != ["DS_PROMETHEUS"]:
        problems.append("the only input is not DS_PROMETHEUS")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    if not {"instance", "cgroup"} <= variables:
        problems.append(f"template variables {sorted(variables)} lack instance or cgroup")
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("panel ids repeat")
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    if len(rows) < 6:
        problems.append(f"only {len(rows)} rows")
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
        if any(s != {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for s in sources):
            problems.append(f"panel {panel['id']} does not use ${{DS_PROMETHEUS}}")
        if not panel.get("targets"):
            problems.append(f"panel {panel['id']} has no query")
    for where, expr in dashboard_queries(dashboard):
        for metric, matchers in re.findall(r"\b(sonde_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?", expr):
            if 'instance=~"$instance"' not in matchers:
                problems.append(f"{where}: {metric} is not filtered by $instance")
            if PROBE_METRIC.match(metric) and 'cgroup=~"$cgroup"' not in matchers:
                problems.append(f"{where}: {metric} is not filtered by $cgroup")
    results.record("the dashboard: Grafana 10 schema, DS_PROMETHEUS, rows, instance and cgroup filters", problems)


def documented_metrics():
    """Metric name -> type, from the tables of docs/metrics.md."""
    metrics = {}
    for line in METRICS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"`sonde_[a-z0-9_]+`", cells[0]):
            metrics[cells[0].strip("`")] = cells[1]
    return metrics


def check_metric_names(results, dashboard):
    known = documented_metrics()
    problems = [] if known else [f"no metric found in {METRICS_DOC}"]
    sources = [(f"rule {alert}", expr) for alert, expr in rule_exprs().items()]
    sources += dashboard_queries(dashboard) + variable_queries(dashboard)
    used = set()
    for where, expr in sources:
        for name in re.findall(r"\bsonde_[a-zA-Z0-9_]+", expr):
            used.add(name)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in known or (base != name and known.get(base) == "histogram"):
                continue
            problems.append(f"{where}: {name} is not a metric sonde exports (docs/metrics.md)")
    for where, expr in sources:
        if where.startswith("rule") and not re.search(r"\bsonde_", expr):
            names = set(re.findall(r"\b([a-z_]+)\s*\{", expr))
            if not names <= PROMETHEUS_METRICS:
                problems.append(f"{where}: {sorted(names - PROMETHEUS_METRICS)} are not Prometheus's own series")
    results.record(f"the {len(used)} sonde metrics queried are in docs/metrics.md ({len(known)} documented)", problems)


# What a check raises when the objects it inspects lack what it looks for.
CHECK_ERRORS = (KustomizeError, ManifestError, OSError, KeyError, IndexError, StopIteration, ValueError, TypeError)


def guarded(results, name, check, *args):
    """Runs a check; an object missing what it looks for fails it, rather than
    stopping the other checks."""
    try:
        check(results, *args)
    except CHECK_ERRORS as err:
        results.record(name, [f"{type(err).__name__}: {err}"])


def main():
    results = Results()
    rendered = {}
    with tempfile.TemporaryDirectory(prefix="sonde-deploy-") as tmp:
        workdir = Path(tmp)
        for overlay in OVERLAYS:
            try:
                rendered[overlay] = build(KUSTOMIZE_ROOT / "overlays" / overlay)
                kinds = ", ".join(f"{r['kind']}/{r['metadata']['name']}" for r in rendered[overlay])
                results.record(f"{overlay}: renders ({kinds})", [])
            except (yaml.YAMLError,) + CHECK_ERRORS as err:
                results.record(f"{overlay}: renders", [err])
        if len(rendered) == len(OVERLAYS):
            guarded(results, "the renderer agrees with kustomize", check_against_kustomize, rendered)
            for overlay, resources in rendered.items():
                guarded(results, f"{overlay}: objects are valid", validate_manifests, overlay, resources, workdir)
                guarded(results, f"{overlay}: {WIRING}", check_wiring, overlay, resources)
                guarded(results, f"{overlay}: {PRIVILEGES}", check_privileges, overlay, resources)
            guarded(results, "the listen address is set in one place", check_listen_in_one_place, rendered, workdir)
            guarded(results, "the rules' job regex matches the scrape jobs", check_job_regex, rendered)
            guarded(results, "sonde accepts the ConfigMap's config", check_sonde_accepts_config, rendered, workdir)

        run_promtool(results, "promtool check rules", ["check", "rules", str(RULES)])
        run_promtool(results, "promtool test rules", ["test", "rules", str(RULES_TEST)])
        check_rule_set(results)
        check_documented_scrape_config(results, workdir)

        dashboard = json.loads(DASHBOARD.read_text())
        check_dashboard_structure(results, dashboard)
        check_dashboard_promql(results, dashboard, workdir)
        check_metric_names(results, dashboard)

    print(results.summary())
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
