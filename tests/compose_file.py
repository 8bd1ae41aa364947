"""docker-compose.yml and the Dockerfile read as data: services, `${VAR:-default}`, ENV, CMD.

Shared by the tests that check the files against the code and those that run what they say.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
WORKER: dict[str, Any] = SERVICES["worker"]


def expand(text: str, env: dict[str, str]) -> str:
    """`text` with compose's `${VAR}`, `${VAR:-default}` and `${VAR-default}` filled from `env`."""

    def value(match: re.Match[str]) -> str:
        name, colon, default = match["name"], match["colon"], match["default"] or ""
        if name in env and (env[name] or not colon):
            return env[name]
        return default

    pattern = r"\$\{(?P<name>\w+)(?:(?P<colon>:?)-(?P<default>[^}]*))?\}"
    return re.sub(pattern, value, text)


def dockerfile_instructions(target: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) that build stage `target` (default: the last, what a plain
    build makes), with those of the stages it is built FROM first; continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]
    starts = [i for i, (word, _) in enumerate(pairs) if word == "FROM"]
    stages: dict[str, list[tuple[str, str]]] = {}
    for begin, end in zip(starts, [*starts[1:], len(pairs)], strict=True):
        base, _, name = pairs[begin][1].partition(" AS ")
        inherited = stages.get(base.strip(), [("FROM", "")])[1:]
        stages[name.strip() or str(begin)] = [pairs[begin], *inherited, *pairs[begin + 1:end]]
    return stages[target] if target else list(stages.values())[-1]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in dockerfile_instructions():
        if word == "ENV":
            parts = shlex.split(args)
            if "=" in parts[0]:
                env.update(part.partition("=")[::2] for part in parts)
            else:
                env[parts[0]] = " ".join(parts[1:])
    return env


def dockerfile_command() -> list[str]:
    """The last stage's ENTRYPOINT followed by its CMD (exec form), as one argv."""
    run = [args for word, args in dockerfile_instructions() if word in ("ENTRYPOINT", "CMD")]
    return [str(arg) for args in run for arg in json.loads(args)]


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def service_environment(service: dict[str, Any], env: dict[str, str] | None = None
                        ) -> dict[str, str]:
    """A service's `environment:`, `${...}` filled from `env` (empty: every default)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: expand(str(value), env or {}) for key, value in raw.items()}


def worker_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    return service_environment(WORKER, env)


def worker_deployed() -> tuple[list[str], dict[str, str]]:
    """What a worker container runs with every `${VAR:-default}` at its default: the command
    (compose's, else the image's) and the environment (the image's ENV, then compose's)."""
    argv = as_argv(WORKER["command"]) if "command" in WORKER else dockerfile_command()
    return argv, {**dockerfile_env(), **worker_environment()}


def redis_arguments() -> list[str]:
    """The options compose's redis service starts redis-server with (persistence included)."""
    argv = as_argv(SERVICES["redis"]["command"])
    assert argv[0] == "redis-server", argv
    return argv[1:]
