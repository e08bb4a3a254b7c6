"""docker-compose.yml, parsed: the services it names use real modules and real settings."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from shared.config.settings import ApiSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_process_and_migrations_run_first():
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    assert services["migrate"]["command"][-3:] == ["alembic", "upgrade", "head"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_compose_settings_are_settings_vlmq_knows():
    known = {f"VLMQ_{name.upper()}" for name in {*ApiSettings.model_fields, *WorkerSettings.model_fields}}
    for service in ("migrate", "api", "worker"):
        env = compose()["services"][service]["environment"]
        unknown = {key for key in env if key.startswith("VLMQ_")} - known
        assert not unknown, f"{service} sets unknown settings {unknown}"
        assert env["VLMQ_ENV"] == "production"


def test_compose_commands_name_modules_that_exist():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "workers.inference.celery_app" in dockerfile and "services.api" in dockerfile
    assert (ROOT / "workers/inference/celery_app.py").exists() and (ROOT / "services/api/__main__.py").exists()
    targets = {service["build"]["target"] for service in compose()["services"].values() if "build" in service}
    assert targets == {"api", "worker"}
    assert all(f"AS {target}" in dockerfile for target in targets)


def test_compose_registers_its_models_in_a_registry_both_api_and_worker_read():
    # given the compose file's shared environment
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    # then API and worker see the same registry, valid JSON of id → path under the mounted /models
    registries = {name: json.loads(services[name]["environment"]["VLMQ_MODELS"]) for name in ("api", "worker")}
    assert registries["api"] == registries["worker"]
    assert all(path.startswith("/models/") for path in registries["worker"].values())
