"""The Dockerfile and docker-compose.yml agree with the code: commands, settings, paths.

Reads both files as text (compose with PyYAML); builds and starts nothing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from flowers.cli.main import cli
from flowers.worker.settings import Settings
from tests.compose_file import (
    COMPOSE,
    ROOT,
    SERVICES,
    WORKER,
    as_argv,
    dockerfile_command,
    dockerfile_env,
    dockerfile_instructions,
    expand,
    worker_environment,
)


def settings_variables() -> set[str]:
    """The FLOWERS_* names `Settings.from_env` asks for."""

    class RecordingEnv(dict[str, str]):
        def __init__(self) -> None:
            super().__init__()
            self.asked: set[str] = set()

        def get(self, key: str, default: Any = None) -> Any:
            self.asked.add(key)
            return super().get(key, default)

    recorder = RecordingEnv()
    Settings.from_env(recorder)
    return recorder.asked


def test_services_exist_and_worker_is_scalable() -> None:
    assert {"redis", "worker", "flower"} <= set(SERVICES)
    build = WORKER["build"]
    context = build if isinstance(build, str) else build["context"]
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context, dockerfile) == (".", "Dockerfile")
    assert (ROOT / context / dockerfile).is_file()
    assert "container_name" not in WORKER
    assert "ports" not in WORKER


def test_worker_command_is_a_real_subcommand() -> None:
    argv = as_argv(WORKER["command"])
    assert argv[:2] == ["flowers", "worker"]
    assert "worker" in cli.commands


def test_every_flowers_variable_is_read_by_settings() -> None:
    known = settings_variables()
    assert "FLOWERS_BROKER_URL" in known
    set_here = {name for name in [*worker_environment(), *dockerfile_env()]
                if name.startswith("FLOWERS_")}
    for service in SERVICES.values():
        environment = service.get("environment") or {}
        names = environment if isinstance(environment, dict) else [
            item.split("=", 1)[0] for item in environment]
        set_here |= {name for name in names if name.startswith("FLOWERS_")}
    assert set_here, "compose and Dockerfile set no FLOWERS_* variable"
    assert set_here - known == set()


def test_worker_settings_point_at_the_redis_service() -> None:
    settings = Settings.from_env(worker_environment())
    assert settings.broker_url == "redis://redis:6379/0"
    assert urlsplit(settings.broker_url).hostname in SERVICES
    assert settings.home == Path("/data/flowers-home")
    assert settings.weights_dir == Path("/opt/flowers/weights")
    assert settings.visibility_timeout == 3600
    assert worker_environment()["FLOWERS_VISIBILITY_TIMEOUT"] == "3600"
    assert worker_environment({"FLOWERS_VISIBILITY_TIMEOUT": "7200"})[
        "FLOWERS_VISIBILITY_TIMEOUT"] == "7200"


def test_redis_persists_to_a_volume() -> None:
    redis = SERVICES["redis"]
    argv = as_argv(redis["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert "--save" in argv and argv[argv.index("--save") + 1].strip() != ""
    mounts = [str(volume).split(":") for volume in redis["volumes"]]
    assert any(target == "/data" and source in COMPOSE["volumes"] for source, target in mounts)
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert WORKER["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("env", [{}, {"FLOWERS_DATA": "/mnt/photos"}])
def test_data_is_mounted_at_the_same_path(env: dict[str, str]) -> None:
    binds = [expand(str(volume), env).split(":") for volume in WORKER["volumes"]]
    binds = [bind for bind in binds if bind[0].startswith("/")]
    assert binds, "the worker has no bind mount for photos, bundles and results"
    for source, target, *_ in binds:
        assert source == target
    if env:
        assert [env["FLOWERS_DATA"]] * 2 in [bind[:2] for bind in binds]
    home = worker_environment()["FLOWERS_HOME"]
    assert home in [str(volume).split(":")[1] for volume in WORKER["volumes"]]


def test_dockerfile_matches_compose() -> None:
    env, compose_env = dockerfile_env(), worker_environment()
    for name in ("FLOWERS_HOME", "FLOWERS_WEIGHTS_DIR"):
        assert env[name] == compose_env[name]
    instructions = dockerfile_instructions()
    assert dockerfile_command() == ["flowers", "worker"]
    assert any(re.search(r"pip install(\s+-\S+)*\s+\.(\s|$)", args)
               for word, args in instructions if word == "RUN")
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_the_labelling_target_installs_no_tensorflow_and_the_default_target_does() -> None:
    label, full = dockerfile_instructions("label"), dockerfile_instructions()
    for instructions in (label, full):
        assert [word for word, _ in instructions][-2:] in (["WORKDIR", "CMD"], ["RUN", "USER"])
        assert [args for word, args in instructions if word == "USER"][-1] == "flowers"
    installs = " ".join(args for word, args in label if word == "RUN")
    assert "['project']['dependencies']" in installs and "optional-dependencies" not in installs
    extra = " ".join(args for word, args in full if word == "RUN")
    assert "['optional-dependencies']['train']" in extra
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("tensorflow") for dep in project["dependencies"])
    assert any(dep.startswith("tensorflow") for dep in project["optional-dependencies"]["train"])
