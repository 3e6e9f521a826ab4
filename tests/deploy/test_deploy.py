"""docker-compose.yml cannot run here (no Docker engine): check it structurally instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from agents.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def container_ports(service: dict[str, Any]) -> dict[int, int]:
    """{container port: host port} of a service's port mappings."""
    mapped = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        mapped[int(container)] = int(host.rpartition(":")[2] or container)
    return mapped


def interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` substitution, for the forms this file uses."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: shell.get(m.group(1)) or (m.group(2) or ""), value)


def service_settings(service: dict[str, Any], shell: dict[str, str] | None = None) -> Settings:
    environment = service.get("environment", {})
    return Settings.from_env({k: interpolate(str(v), shell or {}) for k, v in environment.items()})


def test_every_mounted_file_and_build_input_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        if "build" in service:
            dockerfile = ROOT / service["build"] / "Dockerfile"
            assert dockerfile.exists()
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY "):
                    for source in line.split()[1:-1]:
                        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_worker_settings_are_valid_and_ports_match_them() -> None:
    services = compose()["services"]
    for name in ("worker", "generator"):
        service_settings(services[name])  # raises ConfigError when a variable is wrong
    worker = service_settings(services["worker"])
    assert worker.web.web_host == "0.0.0.0", "inside a container the worker must listen beyond loopback"
    assert worker.web.web_port in container_ports(services["worker"])
    kafka_host, kafka_port = worker.kafka.kafka_bootstrap.rsplit(":", 1)
    assert kafka_host == "kafka"
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//kafka:{kafka_port}" in listeners
    external = re.search(r"EXTERNAL://localhost:(\d+)", listeners)
    assert external is not None
    default = Settings.from_env({"MKPI_INSECURE_DEV_MODE": "true"})
    assert container_ports(services["kafka"])[int(external.group(1))] == default.kafka.port
    redis_port = int(worker.redis.redis_url.rsplit(":", 1)[1].split("/")[0])
    assert container_ports(services["redis"])[redis_port] == int(
        default.redis.redis_url.rsplit(":", 1)[1].split("/")[0]
    )


def test_compose_runs_in_dev_mode_unless_given_a_key() -> None:
    worker = compose()["services"]["worker"]
    assert service_settings(worker).ingest.insecure_dev_mode is True
    keyed = service_settings(
        worker, {"MKPI_PSEUDONYMIZATION_KEY": "k" * 32, "MKPI_INSECURE_DEV_MODE": "false"}
    )
    assert keyed.ingest.insecure_dev_mode is False and keyed.ingest.pseudonymization_key == "k" * 32


def test_prometheus_scrapes_the_worker_port_and_grafana_reads_prometheus() -> None:
    services = compose()["services"]
    worker = service_settings(services["worker"])
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    [discovery] = job["dns_sd_configs"]  # every replica of the worker service
    assert (discovery["names"], discovery["type"], discovery["port"]) == (
        ["worker"],
        "A",
        worker.web.web_port,
    )
    [alerting] = scrape["alerting"]["alertmanagers"]
    [target] = alerting["static_configs"][0]["targets"]
    assert target.split(":")[0] in services and int(target.split(":")[1]) in container_ports(
        services[target.split(":")[0]]
    )
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    url = datasources["datasources"][0]["url"]
    assert url.startswith("http://prometheus:")
    assert int(url.rsplit(":", 1)[1]) in container_ports(services["prometheus"])
