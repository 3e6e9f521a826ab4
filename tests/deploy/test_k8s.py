"""deploy/k8s checked offline: the manifests hang together, the settings they pass are valid
settings, and the in-cluster Prometheus configuration passes promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.settings import Settings
from mkpi.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PROMTOOL = ROOT / ".tools" / "promtool"


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def one(kind: str) -> dict[str, Any]:
    found = [
        doc for path in sorted(K8S.glob("*.yaml")) for doc in documents(path.name) if doc["kind"] == kind
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def worker_container() -> dict[str, Any]:
    containers = one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")  # type: ignore[no-any-return]


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    listed = set(documents("kustomization.yaml")[0]["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk


def test_the_workers_settings_are_valid_settings() -> None:
    environment = dict(documents("configmap.yaml")[0]["data"])
    environment |= documents("secret.example.yaml")[0]["stringData"]
    container = worker_container()
    environment |= {item["name"]: "mkpi-worker-0" for item in container["env"]}
    settings = Settings.from_env(environment)  # unknown or bad MKPI_* variables raise
    assert (
        settings.worker.worker_name == "mkpi-worker-0"
        and settings.topics.partitions >= one("StatefulSet")["spec"]["replicas"]
    )
    refs = {name for source in container["envFrom"] for name in [next(iter(source.values()))["name"]]}
    assert refs == {
        documents("configmap.yaml")[0]["metadata"]["name"],
        documents("secret.example.yaml")[0]["metadata"]["name"],
    }
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # stable names
    build_parser().parse_args(container["args"])  # a real subcommand


def test_ports_probes_service_and_labels_agree() -> None:
    settings = Settings.from_env(
        dict(documents("configmap.yaml")[0]["data"]) | {"MKPI_INSECURE_DEV_MODE": "true"}
    )
    container = worker_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.web.web_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    workers, service = one("StatefulSet"), one("Service")
    pod_labels = workers["spec"]["template"]["metadata"]["labels"]
    assert workers["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        service["spec"]["clusterIP"] == "None"
        and workers["spec"]["serviceName"] == service["metadata"]["name"]
    )
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    # A graceful stop (ingest flushes and commits) needs time before Kubernetes' SIGKILL.
    assert workers["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_the_in_cluster_prometheus_configuration_is_valid_and_finds_the_workers(tmp_path: Path) -> None:
    config_text = documents("prometheus-scrape.yaml")[0]["data"]["prometheus.yml"]
    config = yaml.safe_load(config_text)
    discovery = config["scrape_configs"][0]["dns_sd_configs"][0]
    service, namespace = one("Service"), documents("kustomization.yaml")[0]["namespace"]
    assert discovery["names"] == [f"{service['metadata']['name']}.{namespace}.svc.cluster.local"]
    assert discovery["port"] == service["spec"]["ports"][0]["port"]
    if not PROMTOOL.exists():
        pytest.fail("promtool is missing: run scripts/bootstrap.sh (it extracts it into .tools/)")
    (tmp_path / "prometheus.yml").write_text(config_text)
    checked = subprocess.run(
        [str(PROMTOOL), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_state_stores_live_on_the_pods_volume_in_a_memory_limit_from_the_budget() -> None:
    settings = Settings.from_env(
        dict(documents("configmap.yaml")[0]["data"]) | {"MKPI_INSECURE_DEV_MODE": "true"}
    )
    workers = one("StatefulSet")
    container = worker_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in workers["spec"]["volumeClaimTemplates"]}
    assert mounts["data"] == settings.worker.data_dir and "data" in claims
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert workers["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 1000
    worker = settings.worker
    # A pod may own every delta partition (the others down): the process, the ingest stores'
    # shared budget, and each partition's table store.
    budget_mb = (
        300
        + worker.store_block_cache_mb
        + settings.topics.partitions * (worker.table_block_cache_mb + 2 * worker.table_write_buffer_mb)
    )
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) >= budget_mb, (limit, budget_mb)
