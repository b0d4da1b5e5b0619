#!/usr/bin/env python3
"""Validates everything under deploy/ as files (Docker and a cluster are not needed).

    python3 deploy/validate.py [--root DIR] [--sync]

--root DIR  the deploy directory to check (default: the one holding this script); the system
            test points it at a broken copy to prove that a broken manifest fails.
--sync      first rewrite the ConfigMaps that embed other files (pgbouncer.ini, alerts.yml,
            pgbackrest-repo.conf) from those files, then check.

Rendering. kubectl is not on every machine, so every kustomization is rendered here with a
small subset of kustomize, the only features the manifests may use:

  resources    files (YAML documents) and directories holding a kustomization, recursively
  components   directories holding a `kind: Component` kustomization: its resources are
               added, then its own transformers run over everything accumulated so far
  patches      JSON 6902 operations (a YAML list) from `path:` or inline `patch:`, applied to
               the objects matching `target: {kind, name}`; a target matching nothing is an
               error (kustomize would ignore it silently)
  namespace    set on every namespaced object
  labels       `pairs` added to metadata.labels only (`includeSelectors`/`includeTemplates`
               must be false or absent: selectors are never touched)
  images       `name` matched against every container's and initContainer's image (without
               tag or digest), replaced by `newName` / `newTag` / `digest`

in kustomize's order (resources, components, then patches, namespace, labels, images). Any
other key of a kustomization is refused with an error. When `kubectl` is on PATH each
rendering is also compared with `kubectl kustomize` (same objects, equal after YAML load);
otherwise the script says that only the built-in renderer checked it.

Checks (one summary line each; exit status 1 if any fails):
  render, kubectl        the renderings, and their agreement with kubectl kustomize
  schema                 every rendered object and every other Kubernetes YAML under deploy/
                         against the Kubernetes OpenAPI schema (kubernetes-validate, strict)
  probes                 hub: liveness GET /health, readiness GET /ready on port http; every
                         other workload has liveness and readiness probes
  quic-service           mes-hub-quic: LoadBalancer, 4433/UDP to the UDP container port,
                         externalTrafficPolicy Local, sessionAffinity ClientIP
  hpa                    the deployment guide's autoscaler (overlays change only min/max)
  networkpolicy          hub in: 8090/TCP, 8443/TCP, 4433/UDP only; out: PgBouncer 6432,
                         PostgreSQL 5432, Redis 6379, OTLP 4318, DNS 53; PgBouncer in: hub only
  hub-env                every hub setting reaches the serve pods (env or envFrom), the owner
                         URL only the migrate Job, the retention CronJob and the admin pod;
                         ports, state directory and archive directory agree with the mounts
  pod-security           non-root, no privilege escalation, read-only root, resources
  no-placeholders        rendered overlays hold no Secret, no CHANGE_ME, no *.invalid host
  pgbouncer              the guide's settings, transaction pooling, the session alias, the
                         ConfigMap equal to deploy/pgbouncer/pgbouncer.ini, connection budget
  postgres               the guide's primary settings; the replica's settings a hot standby
                         accepts (max_connections etc. not below the primary's)
  pgbackrest             the primary archives with `pgbackrest archive-push` (archive_mode on,
                         archive_timeout 60s, async through a spool, zst, TLS to the repository
                         host); the repository host's file: aes-256-cbc with no passphrase in
                         any file, retention 2 full / 7 diff, start-fast, process-max 2; the
                         repository Deployment and the weekly full, daily diff and check
                         CronJobs mount the repository PVC at repo1-path, read the ConfigMap
                         (equal to the file) and the passphrase from the Secret
  alerts                 rules parse, each has alert/expr/labels.severity/annotations.summary,
                         only known metrics, the ConfigMap equal to the file (promtool too
                         when on PATH)
  grafana                the dashboard parses, every panel has targets with expr, only known
                         metrics
  dockerfiles            at least two stages, a non-root USER in the last, EXPOSE, a locked
                         release build of the package
  systemd                the edge unit's sections and hardening directives (tests/tests/ops/deploy.rs
                         compares it byte for byte with what `edge-agent install` writes)
"""

from __future__ import annotations

import argparse
import configparser
import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import jsonpatch
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - exercised on a fresh machine
    print(
        f"FAIL missing Python module {e.name!r}: pip install -r deploy/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(2)

K8S_VERSION = "1.33"

# The hub's settings (central-hub serve and its global options) that must reach the serve pods.
HUB_SERVE_ENV = [
    "DATABASE_URL",
    "READ_DATABASE_URL",
    "LISTEN_DATABASE_URL",
    "HUB_PGBOUNCER",
    "HUB_DB_POOL_SIZE",
    "HUB_QUIC_LISTEN",
    "HUB_HTTP_LISTEN",
    "HUB_ENROLL_LISTEN",
    "HUB_STATE_DIR",
    "HUB_SERVER_NAMES",
    "REDIS_URL",
    "HUB_REPORT_CACHE_TTL",
    "HUB_RATE_LIMIT",
    "HUB_SITE_CERT_VALIDITY",
    "HUB_LOG_FORMAT",
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
]
# Settings only the retention CronJob uses (besides its DATABASE_URL = the owner URL).
HUB_RETENTION_ENV = ["HUB_RETENTION_MONTHS", "HUB_ARCHIVE_DIR"]
SECRET_KEYS = ["DATABASE_URL", "READ_DATABASE_URL", "LISTEN_DATABASE_URL", "OWNER_DATABASE_URL"]

# Metrics a hub exports (GET /metrics); alerts and the dashboard may use these, kube_* (from
# kube-state-metrics) and up.
HUB_METRICS = {
    "mes_http_requests_total",
    "mes_http_request_duration_seconds",
    "mes_db_connections_active",
    "mes_db_connections_idle",
    "mes_db_connections_waiting",
    "mes_db_connections_limit",
    "mes_db_query_duration_seconds",
    "mes_cache_hit_rate",
    "mes_cache_miss_rate",
    "mes_report_cache_hits_total",
    "mes_report_cache_misses_total",
    "mes_work_orders_active",
    "mes_quality_alerts_active",
    "mes_active_users_by_site",
    "mes_sync_edges_connected",
    "mes_sync_site_connected",
    "mes_sync_site_last_seen_seconds",
    "mes_sync_backlog_events",
    "mes_sync_lag_seconds",
    "mes_sync_events_ingested_total",
    "mes_sync_frames_rejected_total",
    "mes_db_replication_lag_seconds",
    "mes_rate_limited_total",
    "mes_site_certificate_expiry_seconds",
    "mes_site_heal_unrecoverable_events",
}
HISTOGRAMS = {"mes_http_request_duration_seconds", "mes_db_query_duration_seconds"}

# The deployment guide's autoscaler.
GUIDE_HPA = {
    "minReplicas": 10,
    "maxReplicas": 25,
    "metrics": [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        },
        {
            "type": "Resource",
            "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}},
        },
    ],
    "behavior": {
        "scaleDown": {
            "stabilizationWindowSeconds": 300,
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        },
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 15},
                {"type": "Pods", "value": 5, "periodSeconds": 15},
            ],
            "selectPolicy": "Max",
        },
    },
}

# The deployment guide's PgBouncer settings.
GUIDE_PGBOUNCER = {
    "listen_addr": "*",
    "listen_port": "6432",
    "auth_type": "scram-sha-256",
    "auth_file": "/etc/pgbouncer/userlist.txt",
    "pool_mode": "transaction",
    "max_client_conn": "10000",
    "default_pool_size": "25",
    "reserve_pool_size": "5",
    "reserve_pool_timeout": "5",
    "server_idle_timeout": "600",
    "server_lifetime": "3600",
    "server_connect_timeout": "15",
    "query_timeout": "120",
    "log_connections": "1",
    "log_disconnections": "1",
    "log_pooler_errors": "1",
}

# The deployment guide's PostgreSQL primary settings.
GUIDE_PRIMARY = {
    "max_connections": "300",
    "shared_buffers": "8GB",
    "effective_cache_size": "24GB",
    "maintenance_work_mem": "2GB",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "16MB",
    "default_statistics_target": "100",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
    "work_mem": "41943kB",
    "min_wal_size": "2GB",
    "max_wal_size": "8GB",
    "max_worker_processes": "8",
    "max_parallel_workers_per_gather": "4",
    "max_parallel_workers": "8",
    "max_parallel_maintenance_workers": "4",
}
# pgBackRest's stanza of the region's cluster (deploy/postgres/pgbackrest*.conf, primary.conf).
PGBACKREST_STANZA = "mes"
# A hot standby refuses to run (or pauses recovery) when these are below the primary's.
STANDBY_NOT_BELOW_PRIMARY = [
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
]

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
    "IngressClass",
}
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "namespace", "labels", "images", "patches"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}


class RenderError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The kustomize subset


def ident(obj: dict) -> str:
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


def key(obj: dict) -> tuple:
    md = obj.get("metadata") or {}
    return (obj.get("apiVersion"), obj.get("kind"), md.get("namespace"), md.get("name"))


def load_docs(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def load_kustomization(directory: Path, want_kind: str) -> dict:
    f = kustomization_file(directory)
    if f is None:
        raise RenderError(f"{directory}: no kustomization.yaml")
    docs = load_docs(f)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{f}: expected one YAML mapping")
    k = docs[0]
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(
            f"{f}: kustomization key(s) {sorted(unknown)} are outside the subset deploy/validate.py "
            f"renders ({sorted(KUSTOMIZATION_KEYS)}); use those, or extend the renderer and its docs"
        )
    kind = k.get("kind", "Kustomization")
    if kind != want_kind:
        raise RenderError(f"{f}: kind {kind}, expected {want_kind}")
    return k


def add_resources(directory: Path, k: dict, objs: list) -> None:
    for entry in k.get("resources") or []:
        if not isinstance(entry, str) or "://" in entry or entry.startswith("github.com/"):
            raise RenderError(f"{directory}: resource {entry!r}: only local files and directories")
        p = (directory / entry).resolve()
        if p.is_dir():
            new = render(p)
        elif p.is_file():
            new = load_docs(p)
            for d in new:
                if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                    raise RenderError(f"{p}: a resource file must hold Kubernetes objects")
        else:
            raise RenderError(f"{directory}: resource {entry!r} does not exist")
        seen = {key(o) for o in objs}
        for o in new:
            if key(o) in seen:
                raise RenderError(f"{p}: {ident(o)} is already defined")
            seen.add(key(o))
            objs.append(o)


def apply_patches(directory: Path, k: dict, objs: list) -> None:
    for i, entry in enumerate(k.get("patches") or []):
        where = f"{directory}: patches[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"path", "patch", "target"}:
            raise RenderError(f"{where}: only path/patch and target are supported")
        target = entry.get("target")
        if not isinstance(target, dict) or set(target) != {"kind", "name"}:
            raise RenderError(f"{where}: target must be exactly {{kind, name}}")
        if ("path" in entry) == ("patch" in entry):
            raise RenderError(f"{where}: give either path or patch")
        if "path" in entry:
            ops = load_docs(directory / entry["path"])
            ops = ops[0] if len(ops) == 1 else ops
        else:
            ops = yaml.safe_load(entry["patch"])
        if not isinstance(ops, list) or not all(isinstance(o, dict) and "op" in o for o in ops):
            raise RenderError(
                f"{where}: not a JSON 6902 operation list (strategic merge patches are outside the subset)"
            )
        matched = 0
        for n, o in enumerate(objs):
            if o.get("kind") == target["kind"] and (o.get("metadata") or {}).get("name") == target["name"]:
                try:
                    objs[n] = jsonpatch.apply_patch(o, ops)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                    raise RenderError(f"{where}: {ident(o)}: {e}") from e
                matched += 1
        if matched == 0:
            raise RenderError(f"{where}: target {target['kind']}/{target['name']} matches no object")


def apply_namespace(k: dict, objs: list) -> None:
    ns = k.get("namespace")
    if ns is None:
        return
    for o in objs:
        if o.get("kind") not in CLUSTER_SCOPED:
            o.setdefault("metadata", {})["namespace"] = ns


def apply_labels(directory: Path, k: dict, objs: list) -> None:
    for i, entry in enumerate(k.get("labels") or []):
        where = f"{directory}: labels[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"pairs", "includeSelectors", "includeTemplates"}:
            raise RenderError(f"{where}: only pairs (with includeSelectors/includeTemplates false)")
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise RenderError(f"{where}: includeSelectors/includeTemplates are outside the subset")
        pairs = entry.get("pairs") or {}
        for o in objs:
            labels = o.setdefault("metadata", {}).get("labels") or {}
            labels.update({str(a): str(b) for a, b in pairs.items()})
            o["metadata"]["labels"] = labels


def split_image(image: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    return image, tag, digest


def apply_images(directory: Path, k: dict, objs: list) -> None:
    entries = k.get("images") or []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or set(entry) - {"name", "newName", "newTag", "digest"}:
            raise RenderError(f"{directory}: images[{i}]: only name, newName, newTag, digest")

    def visit(node):
        if isinstance(node, dict):
            for field in ("containers", "initContainers"):
                for c in node.get(field) or [] if isinstance(node.get(field), list) else []:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        name, tag, digest = split_image(c["image"])
                        for e in entries:
                            if e["name"] == name:
                                name = e.get("newName", name)
                                if "digest" in e:
                                    tag, digest = None, e["digest"]
                                elif "newTag" in e:
                                    tag, digest = str(e["newTag"]), None
                                c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                                break
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    if entries:
        visit(objs)


def transform(directory: Path, k: dict, objs: list) -> None:
    apply_patches(directory, k, objs)
    apply_namespace(k, objs)
    apply_labels(directory, k, objs)
    apply_images(directory, k, objs)


def render(directory: Path, _kind: str = "Kustomization") -> list:
    k = load_kustomization(directory, _kind)
    objs: list = []
    add_resources(directory, k, objs)
    for entry in k.get("components") or []:
        cdir = (directory / entry).resolve()
        if not cdir.is_dir():
            raise RenderError(f"{directory}: component {entry!r} is not a directory")
        ck = load_kustomization(cdir, "Component")
        add_resources(cdir, ck, objs)
        if ck.get("components"):
            raise RenderError(f"{cdir}: nested components are outside the subset")
        transform(cdir, ck, objs)
    transform(directory, k, objs)
    return copy.deepcopy(objs)


# ---------------------------------------------------------------------------------------------
# Reporting


class Report:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def check(self, name: str, problems: list[str], ok_detail: str) -> None:
        if problems:
            self.failed.append(name)
            print(f"FAIL {name}: {len(problems)} problem(s)")
            for p in problems:
                for n, line in enumerate(str(p).splitlines()):
                    print(("     - " if n == 0 else "       ") + line)
        else:
            self.passed += 1
            print(f"ok   {name}: {ok_detail}")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Helpers over rendered objects


def find(objs: list, kind: str, name: str) -> dict | None:
    for o in objs:
        if o.get("kind") == kind and (o.get("metadata") or {}).get("name") == name:
            return o
    return None


def pod_spec(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec")
    if kind == "CronJob":
        return ((((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    if kind in WORKLOADS:
        return ((obj.get("spec") or {}).get("template") or {}).get("spec")
    return None


def env_names(container: dict, objs: list, secrets: dict) -> tuple[set, list]:
    """Names a container's environment defines, and problems with their sources."""
    names, problems = set(), []
    for e in container.get("env") or []:
        names.add(e["name"])
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref.get("key") not in secrets.get(ref.get("name"), {}):
            problems.append(f"{e['name']}: secret {ref.get('name')} has no key {ref.get('key')} (see deploy/k8s/secrets)")
        ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            cm = find(objs, "ConfigMap", ref.get("name"))
            if cm is None or ref.get("key") not in (cm.get("data") or {}):
                problems.append(f"{e['name']}: ConfigMap {ref.get('name')} has no key {ref.get('key')}")
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            cm = find(objs, "ConfigMap", src["configMapRef"]["name"])
            if cm is None:
                problems.append(f"envFrom ConfigMap {src['configMapRef']['name']} is not rendered")
            else:
                names |= set((cm.get("data") or {}).keys())
        if "secretRef" in src:
            s = secrets.get(src["secretRef"]["name"])
            if s is None:
                problems.append(f"envFrom Secret {src['secretRef']['name']} has no example in deploy/k8s/secrets")
            else:
                names |= set(s)
    return names, problems


def env_value(container: dict, objs: list, name: str) -> str | None:
    for e in container.get("env") or []:
        if e["name"] == name:
            return e.get("value")
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            cm = find(objs, "ConfigMap", src["configMapRef"]["name"]) or {}
            if name in (cm.get("data") or {}):
                return cm["data"][name]
    return None


def env_secret_ref(container: dict, name: str) -> tuple | None:
    for e in container.get("env") or []:
        if e["name"] == name:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            return (ref.get("name"), ref.get("key")) if ref else None
    return None


def port_of(listen: str | None) -> int | None:
    if not listen or ":" not in listen:
        return None
    try:
        return int(listen.rsplit(":", 1)[1])
    except ValueError:
        return None


def metric_names(text: str) -> set:
    out = set()
    for m in re.findall(r"\bmes_[a-z0-9_]+", text):
        for suffix in ("_bucket", "_sum", "_count"):
            if m.endswith(suffix) and m[: -len(suffix)] in HISTOGRAMS:
                m = m[: -len(suffix)]
        out.add(m)
    return out


def read_conf(path: Path) -> dict:
    """postgresql.conf: `name = value  # comment` lines."""
    out = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([a-z_.]+)\s*=\s*(.+)", line)
        if not m:
            raise ValueError(f"{path}:{n}: not `name = value`: {raw!r}")
        out[m.group(1)] = m.group(2).strip().strip("'")
    return out


def conf_number(v: str) -> float:
    m = re.fullmatch(r"([0-9.]+)\s*(kB|MB|GB|TB)?", v)
    if not m:
        raise ValueError(v)
    scale = {None: 1, "kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}[m.group(2)]
    return float(m.group(1)) * scale


def read_pgbouncer_ini(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(delimiters=("=",), comment_prefixes=(";", "#"), interpolation=None)
    cp.optionxform = str  # keep case
    cp.read_string(text)
    return cp


def embedded_configmap(path: Path, name: str, key_: str, source: Path, header: str, labels: dict) -> str:
    text = source.read_text(encoding="utf-8")
    lines = [header.rstrip("\n"), "apiVersion: v1", "kind: ConfigMap", "metadata:", f"  name: {name}", "  labels:"]
    lines += [f"    {a}: {json.dumps(str(b))}" for a, b in labels.items()]
    lines += ["data:", f"  {key_}: |"]
    for line in text.splitlines():
        if line.rstrip() != line or "\t" in line:
            raise ValueError(f"{source}: trailing whitespace or a tab cannot be embedded as a YAML block")
        lines.append(("    " + line) if line else "")
    out = "\n".join(lines) + "\n"
    assert yaml.safe_load(out)["data"][key_] == text, f"{source}: embedding changed the text"
    return out


EMBEDDED = [
    # (ConfigMap file, ConfigMap name, data key, source file, labels)
    (
        "k8s/base/pgbouncer/configmap.yaml",
        "pgbouncer-config",
        "pgbouncer.ini",
        "pgbouncer/pgbouncer.ini",
        {"app.kubernetes.io/name": "pgbouncer", "app.kubernetes.io/part-of": "mes-sync"},
    ),
    (
        "k8s/base/monitoring/alerts-configmap.yaml",
        "mes-hub-alerts",
        "alerts.yml",
        "prometheus/alerts.yml",
        {"app.kubernetes.io/name": "mes-hub", "app.kubernetes.io/part-of": "mes-sync", "prometheus_rule": "1"},
    ),
    (
        "k8s/base/backup/configmap.yaml",
        "pgbackrest-config",
        "pgbackrest.conf",
        "postgres/pgbackrest-repo.conf",
        {"app.kubernetes.io/name": "pgbackrest", "app.kubernetes.io/part-of": "mes-sync"},
    ),
]


def sync_embedded(root: Path) -> None:
    for cm_path, name, key_, source, labels in EMBEDDED:
        header = (
            f"# GENERATED from deploy/{source} by `python3 deploy/validate.py --sync`: edit that file,\n"
            f"# not this one (deploy/validate.py fails when the two differ).\n"
        )
        text = embedded_configmap(root / cm_path, name, key_, root / source, header, labels)
        (root / cm_path).parent.mkdir(parents=True, exist_ok=True)
        (root / cm_path).write_text(text, encoding="utf-8")
        print(f"synced deploy/{cm_path} from deploy/{source}")


# ---------------------------------------------------------------------------------------------
# The checks


def check_render(root: Path, report: Report) -> dict:
    k8s = root / "k8s"
    dirs = [k8s / "base"] + sorted(p for p in (k8s / "overlays").iterdir() if p.is_dir())
    rendered, problems = {}, []
    for d in dirs:
        try:
            rendered[d] = render(d)
        except (RenderError, OSError, yaml.YAMLError) as e:
            problems.append(f"{d.relative_to(root)}: {e}")
    overlays = [d for d in rendered if d.parent.name == "overlays"]
    if not overlays and not problems:
        problems.append("no overlay under k8s/overlays")
    report.check(
        "render",
        problems,
        ", ".join(f"{d.relative_to(k8s)} {len(o)} objects" for d, o in rendered.items()),
    )
    return rendered


def check_kubectl(root: Path, rendered: dict, report: Report) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("note kubectl not found: checked with the built-in renderer only")
        report.check("kubectl", [], "kubectl not found: checked with the built-in renderer only")
        return
    problems = []
    for d, objs in rendered.items():
        run = subprocess.run([kubectl, "kustomize", str(d)], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            problems.append(f"{d.relative_to(root)}: kubectl kustomize failed: {run.stderr.strip()}")
            continue
        theirs = {key(o): o for o in yaml.safe_load_all(run.stdout) if o}
        ours = {key(o): o for o in objs}
        for k_ in sorted(set(ours) | set(theirs), key=str):
            if k_ not in theirs:
                problems.append(f"{d.relative_to(root)}: only the built-in renderer has {k_}")
            elif k_ not in ours:
                problems.append(f"{d.relative_to(root)}: only kubectl has {k_}")
            elif ours[k_] != theirs[k_]:
                a = json.dumps(ours[k_], indent=1, sort_keys=True).splitlines()
                b = json.dumps(theirs[k_], indent=1, sort_keys=True).splitlines()
                diff = "\n".join(list(difflib.unified_diff(a, b, "built-in", "kubectl", lineterm=""))[:40])
                problems.append(f"{d.relative_to(root)}: {k_} differs:\n{diff}")
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True).stdout.split("\n")
    report.check(
        "kubectl",
        problems,
        f"`kubectl kustomize` renders the same objects as the built-in renderer for all {len(rendered)} "
        f"kustomizations ({'; '.join(v.strip() for v in version if v.strip())})",
    )


def k8s_yaml_files(root: Path) -> list:
    files = []
    for p in sorted(root.rglob("*")):
        if p.suffix in (".yaml", ".yml") and p.name not in KUSTOMIZATION_FILES and p.is_file():
            files.append(p)
    return files


def check_schema(root: Path, rendered: dict, report: Report) -> dict:
    problems, count = [], 0
    secrets: dict = {}

    def validate(obj, where):
        nonlocal count
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            count += 1
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path) if hasattr(e, "path") else ""
            problems.append(f"{where}: {ident(obj)}: {getattr(e, 'message', e)} (at {path or '?'})")
        except Exception as e:  # SchemaNotFoundError and the like
            problems.append(f"{where}: {ident(obj)}: {type(e).__name__}: {e}")

    for d, objs in rendered.items():
        for o in objs:
            validate(o, d.relative_to(root))
    others = 0
    for f in k8s_yaml_files(root):
        try:
            docs = load_docs(f)
        except yaml.YAMLError as e:
            problems.append(f"{f.relative_to(root)}: {e}")
            continue
        for doc in docs:
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                if str(doc["apiVersion"]).startswith("kustomize.config.k8s.io"):
                    continue
                validate(doc, f.relative_to(root))
                others += 1
                if doc["kind"] == "Secret":
                    data = dict(doc.get("stringData") or {})
                    data.update(doc.get("data") or {})
                    secrets[doc["metadata"]["name"]] = data
    report.check(
        "schema",
        problems,
        f"{count} objects valid against Kubernetes {K8S_VERSION} (strict), "
        f"{others} of them from the YAML files themselves",
    )
    return secrets


def overlays_of(rendered: dict) -> list:
    return [(d, o) for d, o in rendered.items() if d.parent.name == "overlays"]


def hub_parts(objs: list) -> tuple:
    dep = find(objs, "Deployment", "mes-hub")
    spec = pod_spec(dep) if dep else None
    c = (spec or {}).get("containers", [None])[0] if spec else None
    return dep, spec, c


def check_probes(rendered: dict, report: Report) -> None:
    problems = []
    for d, objs in rendered.items():
        dep, spec, c = hub_parts(objs)
        if c is None:
            problems.append(f"{d.name}: no Deployment mes-hub")
            continue
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != path or get.get("port") not in ("http", 8090):
                problems.append(f"{d.name}: mes-hub {probe} must be httpGet {path} on port http, is {c.get(probe)}")
        for o in objs:
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
                for cc in pod_spec(o).get("containers", []):
                    for probe in ("livenessProbe", "readinessProbe"):
                        if probe not in cc:
                            problems.append(f"{d.name}: {ident(o)} container {cc['name']} has no {probe}")
    report.check("probes", problems, "mes-hub: liveness GET /health, readiness GET /ready; every workload probed")


def container_port(c: dict, ref) -> dict | None:
    for p in c.get("ports") or []:
        if p.get("name") == ref or p.get("containerPort") == ref:
            return p
    return None


def check_quic_service(rendered: dict, report: Report) -> None:
    problems = []
    for d, objs in rendered.items():
        svc = find(objs, "Service", "mes-hub-quic")
        _, _, c = hub_parts(objs)
        if svc is None or c is None:
            problems.append(f"{d.name}: Service mes-hub-quic or Deployment mes-hub missing")
            continue
        s = svc["spec"]
        if s.get("type") != "LoadBalancer":
            problems.append(f"{d.name}: mes-hub-quic type {s.get('type')}, expected LoadBalancer")
        if s.get("externalTrafficPolicy") != "Local":
            problems.append(f"{d.name}: mes-hub-quic externalTrafficPolicy must be Local")
        if s.get("sessionAffinity") != "ClientIP":
            problems.append(f"{d.name}: mes-hub-quic sessionAffinity must be ClientIP")
        ports = s.get("ports") or []
        if not ports:
            problems.append(f"{d.name}: mes-hub-quic has no ports")
        for p in ports:
            if p.get("protocol") != "UDP":
                problems.append(f"{d.name}: mes-hub-quic port {p.get('port')} has protocol {p.get('protocol', 'TCP (default)')}, QUIC needs UDP")
            if p.get("port") != 4433:
                problems.append(f"{d.name}: mes-hub-quic port {p.get('port')}: the hub advertises its own port 4433")
            cp = container_port(c, p.get("targetPort", p.get("port")))
            if cp is None or cp.get("protocol") != "UDP" or cp.get("containerPort") != 4433:
                problems.append(f"{d.name}: mes-hub-quic targetPort {p.get('targetPort')} is not the container's 4433/UDP port")
        # The TCP Services must not carry the QUIC port.
        for o in objs:
            if o["kind"] == "Service" and o["metadata"]["name"] != "mes-hub-quic":
                for p in o["spec"].get("ports") or []:
                    if p.get("protocol", "TCP") == "UDP":
                        problems.append(f"{d.name}: {ident(o)} has a UDP port; QUIC has its own Service")
    report.check("quic-service", problems, "mes-hub-quic: LoadBalancer 4433/UDP -> quic, Local, ClientIP affinity")


def check_hpa(rendered: dict, report: Report) -> None:
    problems = []
    for d, objs in rendered.items():
        hpa = find(objs, "HorizontalPodAutoscaler", "mes-hub")
        if hpa is None:
            problems.append(f"{d.name}: no HorizontalPodAutoscaler mes-hub")
            continue
        s = hpa["spec"]
        if hpa["apiVersion"] != "autoscaling/v2":
            problems.append(f"{d.name}: HPA apiVersion {hpa['apiVersion']}")
        ref = s.get("scaleTargetRef") or {}
        if (ref.get("kind"), ref.get("name")) != ("Deployment", "mes-hub"):
            problems.append(f"{d.name}: HPA scales {ref}, not Deployment mes-hub")
        for field in ("metrics", "behavior"):
            if s.get(field) != GUIDE_HPA[field]:
                problems.append(f"{d.name}: HPA {field} differs from the guide's: {json.dumps(s.get(field))}")
        if d.name == "base":
            for field in ("minReplicas", "maxReplicas"):
                if s.get(field) != GUIDE_HPA[field]:
                    problems.append(f"base: HPA {field} {s.get(field)}, the guide's is {GUIDE_HPA[field]}")
        elif not (2 <= s.get("minReplicas", 1) <= s.get("maxReplicas", 0)):
            problems.append(f"{d.name}: HPA bounds {s.get('minReplicas')}..{s.get('maxReplicas')} (need 2 <= min <= max)")
        dep = find(objs, "Deployment", "mes-hub")
        if dep is not None and "replicas" in dep["spec"]:
            problems.append(f"{d.name}: Deployment mes-hub sets replicas; the HPA owns the count (apply would reset it)")
    bounds = ", ".join(
        f"{d.name} {find(o, 'HorizontalPodAutoscaler', 'mes-hub')['spec'].get('minReplicas')}-"
        f"{find(o, 'HorizontalPodAutoscaler', 'mes-hub')['spec'].get('maxReplicas')}"
        for d, o in rendered.items()
        if find(o, "HorizontalPodAutoscaler", "mes-hub")
    )
    report.check("hpa", problems, f"the guide's metrics and behavior everywhere; min-max {bounds}")


def policy_ports(rules: list) -> set:
    out = set()
    for r in rules or []:
        for p in r.get("ports") or [{"port": "*"}]:
            out.add((p.get("port"), p.get("protocol", "TCP")))
    return out


def selects(selector: dict, labels: dict) -> bool:
    for k_, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k_) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and val not in e["values"]) or (op == "NotIn" and val in e.get("values", [])):
            return False
        if (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def check_networkpolicy(rendered: dict, report: Report) -> None:
    problems = []
    want_in = {(8090, "TCP"), (8443, "TCP"), (4433, "UDP")}
    want_out = {(6432, "TCP"), (5432, "TCP"), (6379, "TCP"), (4318, "TCP"), (53, "UDP"), (53, "TCP")}
    for d, objs in rendered.items():
        dep, spec, _ = hub_parts(objs)
        if dep is None:
            continue
        hub_labels = dep["spec"]["template"]["metadata"]["labels"]
        pols = [o for o in objs if o["kind"] == "NetworkPolicy" and selects(o["spec"]["podSelector"], hub_labels)]
        if not pols:
            problems.append(f"{d.name}: no NetworkPolicy selects the hub's pods")
            continue
        for pol in pols:
            s = pol["spec"]
            if set(s.get("policyTypes") or []) != {"Ingress", "Egress"}:
                problems.append(f"{d.name}: {ident(pol)} must restrict both Ingress and Egress")
            got_in, got_out = policy_ports(s.get("ingress")), policy_ports(s.get("egress"))
            if got_in != want_in:
                problems.append(f"{d.name}: {ident(pol)} ingress ports {sorted(got_in, key=str)}, expected {sorted(want_in)}")
            if got_out != want_out:
                problems.append(f"{d.name}: {ident(pol)} egress ports {sorted(got_out, key=str)}, expected {sorted(want_out)}")
        pgb = find(objs, "Deployment", "pgbouncer")
        if pgb is not None:
            pgb_labels = pgb["spec"]["template"]["metadata"]["labels"]
            ppols = [o for o in objs if o["kind"] == "NetworkPolicy" and selects(o["spec"]["podSelector"], pgb_labels)]
            if not ppols:
                problems.append(f"{d.name}: no NetworkPolicy selects PgBouncer's pods")
            for pol in ppols:
                for rule in pol["spec"].get("ingress") or []:
                    froms = rule.get("from") or []
                    if not froms or not all(
                        "podSelector" in f and "namespaceSelector" not in f and "ipBlock" not in f
                        and selects(f["podSelector"], hub_labels)
                        and f["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") == "server"
                        for f in froms
                    ):
                        problems.append(f"{d.name}: {ident(pol)} admits clients other than the hub's serving pods")
                    if policy_ports([rule]) != {(6432, "TCP")}:
                        problems.append(f"{d.name}: {ident(pol)} ingress ports {policy_ports([rule])}, expected 6432/TCP")
    report.check(
        "networkpolicy",
        problems,
        "hub in 8090/TCP 8443/TCP 4433/UDP; out 6432 5432 6379 4318 53/UDP 53/TCP; PgBouncer in from the hub only",
    )


def check_hub_env(rendered: dict, secrets: dict, report: Report) -> None:
    problems = []
    s = secrets.get("mes-hub-secrets")
    if s is None:
        problems.append("deploy/k8s/secrets has no example of Secret mes-hub-secrets")
        s = {}
    for k_ in SECRET_KEYS:
        if k_ not in s:
            problems.append(f"Secret mes-hub-secrets (example) lacks {k_}")
    expect_url = {
        "DATABASE_URL": (r"^postgres(ql)?://mes_hub:[^@]*@pgbouncer:6432/mes$", "mes_hub through PgBouncer, database mes"),
        "READ_DATABASE_URL": (r"^postgres(ql)?://mes_reporting:[^@]*@pgbouncer:6432/mes_read$", "mes_reporting through PgBouncer to the replica"),
        "LISTEN_DATABASE_URL": (r"^postgres(ql)?://mes_hub:[^@]*@(pgbouncer:6432/mes_session|postgres-primary:5432/mes)$", "a session connection"),
        "OWNER_DATABASE_URL": (r"^postgres(ql)?://[^:@]+:[^@]*@postgres-primary:5432/mes$", "the owner straight to the primary"),
    }
    for k_, (rx, what) in expect_url.items():
        if k_ in s and not re.match(rx, str(s[k_])):
            problems.append(f"Secret mes-hub-secrets {k_} = {s[k_]!r} is not {what}")
    for d, objs in rendered.items():
        dep, spec, c = hub_parts(objs)
        if c is None:
            continue
        names, p = env_names(c, objs, secrets)
        problems += [f"{d.name}: mes-hub: {x}" for x in p]
        missing = [n for n in HUB_SERVE_ENV if n not in names]
        if missing:
            problems.append(f"{d.name}: mes-hub lacks {missing}")
        for n in ("DATABASE_URL", "READ_DATABASE_URL", "LISTEN_DATABASE_URL"):
            if env_secret_ref(c, n) != ("mes-hub-secrets", n):
                problems.append(f"{d.name}: mes-hub {n} must come from Secret mes-hub-secrets key {n}")
        if "OWNER_DATABASE_URL" in names or any(
            ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("key") == "OWNER_DATABASE_URL" for e in c.get("env") or []
        ) or any("secretRef" in x for x in c.get("envFrom") or []):
            problems.append(f"{d.name}: the serving pods must not receive the owner URL (no envFrom of the Secret)")
        if c.get("args") != ["serve"]:
            problems.append(f"{d.name}: mes-hub args {c.get('args')}, expected ['serve']")
        if env_value(c, objs, "HUB_PGBOUNCER") != "true":
            problems.append(f"{d.name}: HUB_PGBOUNCER must be \"true\" (DATABASE_URL goes through transaction pooling)")
        for var, port_name, proto in (("HUB_HTTP_LISTEN", "http", "TCP"), ("HUB_QUIC_LISTEN", "quic", "UDP"), ("HUB_ENROLL_LISTEN", "enroll", "TCP")):
            cp = container_port(c, port_name)
            if cp is None or port_of(env_value(c, objs, var)) != cp.get("containerPort") or cp.get("protocol", "TCP") != proto:
                problems.append(f"{d.name}: {var}={env_value(c, objs, var)} does not match container port {port_name}/{proto} {cp}")
        ann = dep["spec"]["template"]["metadata"].get("annotations") or {}
        if ann.get("prometheus.io/scrape") != "true" or str(ann.get("prometheus.io/port")) != str(port_of(env_value(c, objs, "HUB_HTTP_LISTEN"))):
            problems.append(f"{d.name}: scrape annotations {ann} must point at the HTTP port")
        state = env_value(c, objs, "HUB_STATE_DIR")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        m = mounts.get(state)
        if m is None or not m.get("readOnly"):
            problems.append(f"{d.name}: HUB_STATE_DIR {state} must be a read-only mount")
        else:
            sec = (vols.get(m["name"]) or {}).get("secret") or {}
            items = sorted(i["path"] for i in sec.get("items") or [])
            if sec.get("secretName") != "mes-hub-ca" or items != ["ca.crt.pem", "ca.key.pem"] or sec.get("optional"):
                problems.append(f"{d.name}: HUB_STATE_DIR must be the Secret mes-hub-ca with ca.crt.pem and ca.key.pem (central-hub/src/pki.rs), not optional")
        try:
            pool = int(env_value(c, objs, "HUB_DB_POOL_SIZE") or "0")
            if not 1 <= pool <= 1000:
                raise ValueError
        except ValueError:
            problems.append(f"{d.name}: HUB_DB_POOL_SIZE must be 1..1000")
        # The owner's workloads.
        job = find(objs, "Job", "mes-hub-migrate")
        if job is None:
            problems.append(f"{d.name}: no Job mes-hub-migrate")
        else:
            jc = pod_spec(job)["containers"][0]
            if jc.get("args") != ["migrate"] or env_secret_ref(jc, "DATABASE_URL") != ("mes-hub-secrets", "OWNER_DATABASE_URL"):
                problems.append(f"{d.name}: the migrate Job must run `migrate` with DATABASE_URL = OWNER_DATABASE_URL")
        cron = find(objs, "CronJob", "mes-hub-retention")
        if cron is None:
            problems.append(f"{d.name}: no CronJob mes-hub-retention")
        else:
            cs = pod_spec(cron)
            cc = cs["containers"][0]
            want = ["partitions", "retire", "--older-than-months", "$(HUB_RETENTION_MONTHS)", "--archive-dir", "$(HUB_ARCHIVE_DIR)"]
            if cc.get("args") != want:
                problems.append(f"{d.name}: retention args {cc.get('args')}, expected {want}")
            cnames, p = env_names(cc, objs, secrets)
            problems += [f"{d.name}: retention: {x}" for x in p]
            for n in HUB_RETENTION_ENV:
                if n not in cnames:
                    problems.append(f"{d.name}: the retention CronJob lacks {n}")
            if env_secret_ref(cc, "DATABASE_URL") != ("mes-hub-secrets", "OWNER_DATABASE_URL"):
                problems.append(f"{d.name}: the retention CronJob's DATABASE_URL must be OWNER_DATABASE_URL")
            archive = env_value(cc, objs, "HUB_ARCHIVE_DIR")
            am = {m["mountPath"]: m for m in cc.get("volumeMounts") or []}.get(archive)
            avol = {v["name"]: v for v in cs.get("volumes") or []}.get((am or {}).get("name")) or {}
            claim = (avol.get("persistentVolumeClaim") or {}).get("claimName")
            if am is None or am.get("readOnly") or claim is None or find(objs, "PersistentVolumeClaim", claim) is None:
                problems.append(f"{d.name}: HUB_ARCHIVE_DIR {archive} must be a writable mount of a rendered PVC")
            try:
                if int(env_value(cc, objs, "HUB_RETENTION_MONTHS") or "0") < 3:
                    problems.append(f"{d.name}: HUB_RETENTION_MONTHS below the hub's minimum of 3")
            except ValueError:
                problems.append(f"{d.name}: HUB_RETENTION_MONTHS is not a number")
    report.check(
        "hub-env",
        problems,
        f"all {len(HUB_SERVE_ENV)} serve settings reach mes-hub (3 URLs from the Secret key by key); "
        "migrate and retention run as the owner; ports, CA mount and archive mount agree",
    )


def check_pod_security(rendered: dict, report: Report) -> None:
    problems, n = [], 0
    for d, objs in rendered.items():
        for o in objs:
            spec = pod_spec(o)
            if spec is None:
                continue
            psc = spec.get("securityContext") or {}
            for c in (spec.get("initContainers") or []) + spec.get("containers", []):
                n += 1
                csc = c.get("securityContext") or {}
                where = f"{d.name}: {ident(o)} container {c['name']}"
                if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                    problems.append(f"{where}: runAsNonRoot not set")
                if (csc.get("runAsUser", psc.get("runAsUser")) or 0) == 0:
                    problems.append(f"{where}: runs as uid 0 or an unset uid")
                if csc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{where}: allowPrivilegeEscalation must be false")
                if csc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{where}: readOnlyRootFilesystem must be true")
                if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                    problems.append(f"{where}: capabilities must drop ALL")
                res = c.get("resources") or {}
                for part in ("requests", "limits"):
                    if not {"cpu", "memory"} <= set(res.get(part) or {}):
                        problems.append(f"{where}: resources.{part} needs cpu and memory")
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{d.name}: {ident(o)} mounts a service account token it does not need")
    report.check("pod-security", problems, f"{n} containers non-root, read-only root, no escalation, caps dropped, resources set")


def check_no_placeholders(rendered: dict, report: Report) -> None:
    problems = []
    for d, objs in overlays_of(rendered):
        for o in objs:
            if o["kind"] == "Secret":
                problems.append(f"{d.name}: renders {ident(o)}: `kubectl apply -k` would overwrite the real one")
            text = json.dumps(o)
            if "CHANGE_ME" in text or ".invalid" in text:
                problems.append(f"{d.name}: {ident(o)} still holds a placeholder (CHANGE_ME or *.invalid)")
        for svc in ("postgres-primary", "postgres-replica"):
            if find(objs, "Service", svc) is None:
                problems.append(f"{d.name}: no Service {svc}")
    report.check("no-placeholders", problems, "overlays render no Secret and no placeholder host or password")


def check_pgbouncer(root: Path, rendered: dict, report: Report) -> None:
    problems = []
    ini_path = root / "pgbouncer" / "pgbouncer.ini"
    text = ini_path.read_text(encoding="utf-8")
    try:
        ini = read_pgbouncer_ini(text)
    except configparser.Error as e:
        report.check("pgbouncer", [f"{ini_path}: {e}"], "")
        return
    pg = dict(ini["pgbouncer"]) if ini.has_section("pgbouncer") else {}
    for k_, v in GUIDE_PGBOUNCER.items():
        if pg.get(k_) != v:
            problems.append(f"pgbouncer.ini: {k_} = {pg.get(k_)!r}, expected {v!r}")
    if "extra_float_digits" not in pg.get("ignore_startup_parameters", ""):
        problems.append("pgbouncer.ini: ignore_startup_parameters must include extra_float_digits (sqlx sends it)")
    dbs = dict(ini["databases"]) if ini.has_section("databases") else {}

    def db_opts(name):
        return dict(kv.split("=", 1) for kv in dbs.get(name, "").split())

    for name, host in (("mes", "postgres-primary"), ("mes_read", "postgres-replica"), ("mes_session", "postgres-primary")):
        opts = db_opts(name)
        if opts.get("host") != host or opts.get("port") != "5432" or opts.get("dbname") != "mes":
            problems.append(f"pgbouncer.ini: database {name} must be host={host} port=5432 dbname=mes, is {dbs.get(name)!r}")
    session = db_opts("mes_session")
    if session.get("pool_mode") != "session":
        problems.append("pgbouncer.ini: mes_session must have pool_mode=session (LISTEN needs a session)")
    for name in ("mes", "mes_read"):
        if "pool_mode" in db_opts(name):
            problems.append(f"pgbouncer.ini: {name} must use the global transaction pooling")
    # The ConfigMap's copy.
    for d, objs in rendered.items():
        cm = find(objs, "ConfigMap", "pgbouncer-config")
        if cm is None or (cm.get("data") or {}).get("pgbouncer.ini") != text:
            problems.append(f"{d.name}: ConfigMap pgbouncer-config differs from deploy/pgbouncer/pgbouncer.ini (run validate.py --sync)")
    # Budget: client connections at the HPA's maximum, server connections against max_connections.
    try:
        primary = read_conf(root / "postgres" / "primary.conf")
        replica = read_conf(root / "postgres" / "replica.conf")
        per_pool = int(pg["default_pool_size"]) + int(pg["reserve_pool_size"])
        session_pool = int(session.get("pool_size", pg["default_pool_size"]))
        for d, objs in rendered.items():
            hpa = find(objs, "HorizontalPodAutoscaler", "mes-hub")
            _, _, c = hub_parts(objs)
            pgb = find(objs, "Deployment", "pgbouncer")
            if not (hpa and c and pgb):
                continue
            pods = hpa["spec"]["maxReplicas"]
            pool = int(env_value(c, objs, "HUB_DB_POOL_SIZE"))
            clients = pods * (2 * pool + 2)
            if clients > int(pg["max_client_conn"]):
                problems.append(f"{d.name}: {pods} pods x (2 x {pool} + 2) = {clients} clients > max_client_conn")
            if session_pool < 2 * pods:
                problems.append(f"{d.name}: mes_session pool_size {session_pool} < 2 LISTEN connections x {pods} pods")
            bouncers = pgb["spec"].get("replicas", 1)
            to_primary = bouncers * (per_pool + session_pool + int(pg["reserve_pool_size"]))
            budget = int(primary["max_connections"]) - int(primary.get("superuser_reserved_connections", 3)) - 20
            if to_primary > budget:
                problems.append(f"{d.name}: {bouncers} PgBouncers may open {to_primary} connections to the primary, over {budget} (max_connections less reserve and 20 for migrations, replication, admin)")
            to_replica = bouncers * per_pool
            if to_replica > int(replica["max_connections"]) - 20:
                problems.append(f"{d.name}: {to_replica} connections to the replica exceed its max_connections less 20")
    except (KeyError, ValueError, OSError) as e:
        problems.append(f"connection budget: {type(e).__name__}: {e}")
    report.check(
        "pgbouncer",
        problems,
        "the guide's settings, transaction pooling, mes_session alias in session mode, ConfigMap identical, connection budget fits",
    )


def check_postgres(root: Path, report: Report) -> None:
    problems = []
    try:
        primary = read_conf(root / "postgres" / "primary.conf")
        replica = read_conf(root / "postgres" / "replica.conf")
    except (ValueError, OSError) as e:
        report.check("postgres", [str(e)], "")
        return
    for k_, v in GUIDE_PRIMARY.items():
        if primary.get(k_) != v:
            problems.append(f"primary.conf: {k_} = {primary.get(k_)!r}, the guide's is {v!r}")
    if primary.get("wal_level") not in ("replica", "logical"):
        problems.append("primary.conf: wal_level must be replica (or logical) for read replicas")
    if int(primary.get("max_wal_senders", "0")) < 3:
        problems.append("primary.conf: max_wal_senders must allow the 2-3 replicas")
    for k_, v in (("hot_standby", "on"), ("hot_standby_feedback", "on")):
        if replica.get(k_) != v:
            problems.append(f"replica.conf: {k_} must be {v}")
    for k_ in STANDBY_NOT_BELOW_PRIMARY:
        a, b = primary.get(k_), replica.get(k_)
        if a is not None and (b is None or conf_number(b) < conf_number(a)):
            problems.append(f"replica.conf: {k_} = {b}, below the primary's {a}: a hot standby refuses that")
    report.check("postgres", problems, "primary: the guide's settings, wal_level replica; replica: hot standby, limits not below the primary's")


def read_pgbackrest_conf(path: Path) -> configparser.ConfigParser:
    """pgbackrest.conf: INI sections [global] and [<stanza>], `option=value` lines."""
    cp = configparser.ConfigParser(delimiters=("=",), comment_prefixes=("#",), interpolation=None)
    cp.optionxform = str
    cp.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return cp


def cron_fields(schedule: str) -> list:
    fields = str(schedule).split()
    return fields if len(fields) == 5 else []


def check_pgbackrest(root: Path, rendered: dict, secrets: dict, report: Report) -> None:
    problems = []
    try:
        primary_side = read_pgbackrest_conf(root / "postgres" / "pgbackrest.conf")
        repo_side = read_pgbackrest_conf(root / "postgres" / "pgbackrest-repo.conf")
        primary = read_conf(root / "postgres" / "primary.conf")
    except (configparser.Error, ValueError, OSError) as e:
        report.check("pgbackrest", [str(e)], "")
        return
    for name, cp in (("pgbackrest.conf", primary_side), ("pgbackrest-repo.conf", repo_side)):
        for section in cp.sections():
            if "repo1-cipher-pass" in cp[section]:
                problems.append(f"{name}: repo1-cipher-pass is in the file; it comes from PGBACKREST_REPO1_CIPHER_PASS (a Secret)")
        if not cp.has_section(PGBACKREST_STANZA):
            problems.append(f"{name}: no [{PGBACKREST_STANZA}] stanza section")
    g = dict(primary_side["global"]) if primary_side.has_section("global") else {}
    for k_, v in {"repo1-host-type": "tls", "archive-async": "y", "process-max": "2", "compress-type": "zst"}.items():
        if g.get(k_) != v:
            problems.append(f"pgbackrest.conf: {k_}={g.get(k_)!r}, expected {v!r}")
    for k_ in ("repo1-host", "spool-path"):
        if not g.get(k_):
            problems.append(f"pgbackrest.conf: {k_} missing")
    r = dict(repo_side["global"]) if repo_side.has_section("global") else {}
    want = {
        "repo1-cipher-type": "aes-256-cbc",
        "repo1-retention-full": "2",
        "repo1-retention-diff": "7",
        "compress-type": "zst",
        "process-max": "2",
        "start-fast": "y",
        "archive-async": "y",
    }
    for k_, v in want.items():
        if r.get(k_) != v:
            problems.append(f"pgbackrest-repo.conf: {k_}={r.get(k_)!r}, expected {v!r}")
    if "repo1-host" in r:
        problems.append("pgbackrest-repo.conf: repo1-host set: the repository host's repository must be local")
    stanza = dict(repo_side[PGBACKREST_STANZA]) if repo_side.has_section(PGBACKREST_STANZA) else {}
    if stanza.get("pg1-host") != "postgres-primary" or stanza.get("pg1-host-type") != "tls":
        problems.append("pgbackrest-repo.conf: [mes] must reach the primary with pg1-host=postgres-primary, pg1-host-type=tls")
    repo_path = r.get("repo1-path")
    if not repo_path or not repo_path.startswith("/"):
        problems.append(f"pgbackrest-repo.conf: repo1-path {repo_path!r} must be the volume's absolute path")
    # The primary archives every segment through pgBackRest, at least once a minute.
    if primary.get("archive_mode") != "on":
        problems.append(f"primary.conf: archive_mode = {primary.get('archive_mode')!r}, expected on")
    cmd = primary.get("archive_command", "")
    if not re.fullmatch(rf"pgbackrest .*--stanza={PGBACKREST_STANZA} archive-push %p|pgbackrest --stanza={PGBACKREST_STANZA} archive-push %p", cmd):
        problems.append(f"primary.conf: archive_command {cmd!r} is not `pgbackrest --stanza={PGBACKREST_STANZA} archive-push %p`")
    if primary.get("archive_timeout") != "60s":
        problems.append(f"primary.conf: archive_timeout = {primary.get('archive_timeout')!r}, expected 60s")
    # Kubernetes: the repository pod and the CronJobs.
    s = secrets.get("pgbackrest-secrets", {})
    if "PGBACKREST_REPO1_CIPHER_PASS" not in s:
        problems.append("deploy/k8s/secrets has no Secret pgbackrest-secrets with PGBACKREST_REPO1_CIPHER_PASS")
    workloads = {
        ("Deployment", "pgbackrest-repo"): (["server"], None),
        ("CronJob", "pgbackrest-full"): ([f"--stanza={PGBACKREST_STANZA}", "backup", "--type=full"], "weekly"),
        ("CronJob", "pgbackrest-diff"): ([f"--stanza={PGBACKREST_STANZA}", "backup", "--type=diff"], "daily"),
        ("CronJob", "pgbackrest-check"): ([f"--stanza={PGBACKREST_STANZA}", "check"], None),
    }
    for d, objs in rendered.items():
        for (kind, name), (args, cadence) in workloads.items():
            o = find(objs, kind, name)
            if o is None:
                problems.append(f"{d.name}: no {kind} {name}")
                continue
            spec = pod_spec(o)
            c = spec["containers"][0]
            if c.get("args") != args:
                problems.append(f"{d.name}: {name} args {c.get('args')}, expected {args}")
            fields = cron_fields(o["spec"].get("schedule", "")) if kind == "CronJob" else []
            if kind == "CronJob":
                if not fields:
                    problems.append(f"{d.name}: {name} schedule {o['spec'].get('schedule')!r} is not five cron fields")
                elif cadence == "weekly" and not re.fullmatch(r"[0-6]", fields[4]):
                    problems.append(f"{d.name}: {name} must run once a week (one day of the week), is {o['spec']['schedule']!r}")
                elif cadence == "daily" and (fields[2] != "*" or fields[3] != "*" or not re.fullmatch(r"\d+", fields[1])):
                    problems.append(f"{d.name}: {name} must run daily, is {o['spec']['schedule']!r}")
                if o["spec"].get("concurrencyPolicy") != "Forbid":
                    problems.append(f"{d.name}: {name} concurrencyPolicy must be Forbid")
            if env_secret_ref(c, "PGBACKREST_REPO1_CIPHER_PASS") != ("pgbackrest-secrets", "PGBACKREST_REPO1_CIPHER_PASS"):
                problems.append(f"{d.name}: {name} must take PGBACKREST_REPO1_CIPHER_PASS from Secret pgbackrest-secrets")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
            vols = {v["name"]: v for v in spec.get("volumes") or []}
            m = mounts.get(repo_path)
            claim = ((vols.get((m or {}).get("name")) or {}).get("persistentVolumeClaim") or {}).get("claimName")
            if m is None or m.get("readOnly") or claim is None or find(objs, "PersistentVolumeClaim", claim) is None:
                problems.append(f"{d.name}: {name} must mount a rendered PVC writable at repo1-path {repo_path}")
            conf = env_value(c, objs, "PGBACKREST_CONFIG") or "/etc/pgbackrest/pgbackrest.conf"
            cm_mount = mounts.get(str(Path(conf).parent))
            cm = ((vols.get((cm_mount or {}).get("name")) or {}).get("configMap") or {}).get("name")
            if cm != "pgbackrest-config" or Path(conf).name != "pgbackrest.conf":
                problems.append(f"{d.name}: {name} must read {conf} from the ConfigMap pgbackrest-config")
        cmo = find(objs, "ConfigMap", "pgbackrest-config")
        text = (root / "postgres" / "pgbackrest-repo.conf").read_text(encoding="utf-8")
        if cmo is None or (cmo.get("data") or {}).get("pgbackrest.conf") != text:
            problems.append(f"{d.name}: ConfigMap pgbackrest-config differs from deploy/postgres/pgbackrest-repo.conf (run validate.py --sync)")
    report.check(
        "pgbackrest",
        problems,
        "primary archives through pgbackrest (async, every 60s at least); repository encrypted aes-256-cbc with "
        "the passphrase from a Secret, retention 2 full / 7 diff, zst; weekly full, daily diff and check "
        "CronJobs on the repository volume",
    )


def check_alerts(root: Path, rendered: dict, report: Report) -> None:
    problems, n = [], 0
    path = root / "prometheus" / "alerts.yml"
    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        report.check("alerts", [f"{path}: {e}"], "")
        return
    groups = (doc or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        problems.append("alerts.yml: no groups")
        groups = []
    names = set()
    for g in groups:
        if set(g) - {"name", "rules", "interval", "limit"} or not g.get("name"):
            problems.append(f"alerts.yml: group {g.get('name')!r}: unexpected keys or no name")
        for r in g.get("rules") or []:
            n += 1
            where = f"alerts.yml: {r.get('alert', '?')}"
            if set(r) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}:
                problems.append(f"{where}: unexpected keys {sorted(set(r) - {'alert', 'expr', 'for', 'labels', 'annotations'})}")
            if not r.get("alert") or not isinstance(r.get("expr"), str) or not r["expr"].strip():
                problems.append(f"{where}: needs alert and expr")
                continue
            if r["alert"] in names:
                problems.append(f"{where}: duplicate alert name")
            names.add(r["alert"])
            if "for" in r and not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(r["for"])):
                problems.append(f"{where}: for {r['for']!r} is not a duration")
            if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{where}: labels.severity must be critical, warning or info")
            if not (r.get("annotations") or {}).get("summary"):
                problems.append(f"{where}: annotations.summary missing")
            e = r["expr"]
            for a, b in ("()", "[]", "{}"):
                if e.count(a) != e.count(b):
                    problems.append(f"{where}: unbalanced {a}{b} in expr")
            unknown = metric_names(e) - HUB_METRICS
            if unknown:
                problems.append(f"{where}: metrics the hub does not export: {sorted(unknown)}")
            if re.search(r"histogram_quantile\([^,]+,\s*mes_\w+\)", e):
                problems.append(f"{where}: histogram_quantile needs rate() over _bucket series")
    for d, objs in rendered.items():
        cm = find(objs, "ConfigMap", "mes-hub-alerts")
        if cm is None or (cm.get("data") or {}).get("alerts.yml") != text:
            problems.append(f"{d.name}: ConfigMap mes-hub-alerts differs from deploy/prometheus/alerts.yml (run validate.py --sync)")
    promtool = shutil.which("promtool")
    if promtool:
        run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        if run.returncode != 0:
            problems.append(f"promtool check rules: {run.stdout}{run.stderr}")
        how = "by promtool check rules as well"
    else:
        print("note promtool not found: alerts.yml checked structurally only")
        how = "structurally (promtool not found)"
    report.check("alerts", problems, f"{n} rules in {len(groups)} group(s) well-formed, known metrics only, ConfigMap identical; checked {how}")


def check_grafana(root: Path, report: Report) -> None:
    problems, n = [], 0
    path = root / "grafana" / "mes-hub.json"
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        report.check("grafana", [f"{path}: {e}"], "")
        return
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dash.get('schemaVersion')}: expected a current one (~39)")
    for k_ in ("title", "uid", "panels"):
        if not dash.get(k_):
            problems.append(f"dashboard has no {k_}")
    ids = set()

    def walk(panels):
        nonlocal n
        for p in panels or []:
            if p.get("id") in ids:
                problems.append(f"panel id {p.get('id')} used twice")
            ids.add(p.get("id"))
            if p.get("type") == "row":
                walk(p.get("panels"))
                continue
            n += 1
            targets = p.get("targets") or []
            if not targets:
                problems.append(f"panel {p.get('title')!r}: no targets")
            for t in targets:
                e = t.get("expr")
                if not isinstance(e, str) or not e.strip():
                    problems.append(f"panel {p.get('title')!r}: target {t.get('refId')} has no expr")
                    continue
                unknown = metric_names(e) - HUB_METRICS
                if unknown:
                    problems.append(f"panel {p.get('title')!r}: metrics the hub does not export: {sorted(unknown)}")
                for a, b in ("()", "[]", "{}"):
                    if e.count(a) != e.count(b):
                        problems.append(f"panel {p.get('title')!r}: unbalanced {a}{b}")

    walk(dash.get("panels"))
    report.check("grafana", problems, f"{n} panels, each with PromQL targets over known metrics (schemaVersion {dash.get('schemaVersion')})")


def check_dockerfiles(root: Path, report: Report) -> None:
    problems, seen = [], []
    for name, package, port in (("central-hub.Dockerfile", "central-hub", "8090"), ("edge-agent.Dockerfile", "edge-agent", "8080")):
        path = root / "docker" / name
        if not path.is_file():
            problems.append(f"docker/{name} missing")
            continue
        seen.append(name)
        lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines()]
        lines = [l for l in lines if l and not l.startswith("#")]
        froms = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
        if len(froms) < 2:
            problems.append(f"docker/{name}: {len(froms)} FROM stage(s), expected a build and a runtime stage")
            continue
        last = lines[froms[-1]:]
        users = [l.split(None, 1)[1].strip() for l in last if l.upper().startswith("USER ")]
        if not users:
            problems.append(f"docker/{name}: the runtime stage sets no USER")
        elif users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"docker/{name}: the runtime stage runs as {users[-1]}")
        if not any(l.upper().startswith("EXPOSE ") and port in l for l in last):
            problems.append(f"docker/{name}: no EXPOSE {port} in the runtime stage")
        text = "\n".join(lines)
        if not re.search(rf"cargo build --release --locked (.* )?-p {re.escape(package)}\b", text):
            problems.append(f"docker/{name}: no `cargo build --release --locked -p {package}`")
        if not any(l.upper().startswith("COPY --FROM=") for l in last):
            problems.append(f"docker/{name}: the runtime stage copies nothing from the build stage")
        if not (root / "docker" / f"{name}.dockerignore").is_file():
            problems.append(f"docker/{name}.dockerignore missing (BuildKit reads it beside the Dockerfile)")
    report.check("dockerfiles", problems, f"{', '.join(seen)}: multi-stage, locked release build, non-root USER, EXPOSE")


def check_systemd(root: Path, report: Report) -> None:
    problems = []
    path = root / "systemd" / "mes-edge.service"
    if not path.is_file():
        report.check("systemd", ["systemd/mes-edge.service missing"], "")
        return
    sections, current = {}, None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("[") and s.endswith("]"):
            current = s[1:-1]
            sections[current] = {}
        elif "=" in s and current:
            k_, v = s.split("=", 1)
            sections[current][k_.strip()] = v.strip()
        else:
            problems.append(f"mes-edge.service:{n}: not a directive: {line!r}")
    if set(sections) != {"Unit", "Service", "Install"}:
        problems.append(f"sections {sorted(sections)}, expected Unit, Service, Install")
    svc = sections.get("Service", {})
    want = {
        "User": "mes-edge",
        "ExecStart": "/usr/local/bin/edge-agent run --config /etc/mes-edge/edge.toml",
        "Restart": "on-failure",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/mes-edge /etc/mes-edge/tls",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
    }
    for k_, v in want.items():
        if svc.get(k_) != v:
            problems.append(f"[Service] {k_}={svc.get(k_)!r}, expected {v!r}")
    if sections.get("Install", {}).get("WantedBy") != "multi-user.target":
        problems.append("[Install] WantedBy must be multi-user.target")
    report.check("systemd", problems, "mes-edge.service: hardened unit for /usr/local/bin/edge-agent (byte equality: tests/tests/ops/deploy.rs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent, help="the deploy directory")
    ap.add_argument("--sync", action="store_true", help="rewrite the ConfigMaps that embed other files first")
    args = ap.parse_args()
    root = args.root.resolve()
    if not (root / "k8s").is_dir():
        print(f"FAIL {root} has no k8s/ directory: not a deploy directory", file=sys.stderr)
        return 2
    if args.sync:
        sync_embedded(root)
    print(f"validating {root} (Kubernetes schema {K8S_VERSION}, kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else '?'})")
    report = Report()
    rendered = check_render(root, report)
    if rendered:
        check_kubectl(root, rendered, report)
    secrets = check_schema(root, rendered, report)
    check_probes(rendered, report)
    check_quic_service(rendered, report)
    check_hpa(rendered, report)
    check_networkpolicy(rendered, report)
    check_hub_env(rendered, secrets, report)
    check_pod_security(rendered, report)
    check_no_placeholders(rendered, report)
    check_pgbouncer(root, rendered, report)
    check_postgres(root, report)
    check_pgbackrest(root, rendered, secrets, report)
    check_alerts(root, rendered, report)
    check_grafana(root, report)
    check_dockerfiles(root, report)
    check_systemd(root, report)
    total = report.passed + len(report.failed)
    if report.failed:
        print(f"deploy/ INVALID: {len(report.failed)} of {total} checks failed: {', '.join(report.failed)}")
        return 1
    print(f"deploy/ valid: {total} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
