"""`FLOWERS_*` settings: each variable's documented range checked as it is read; a command or
a worker given a value outside it stops before any work with one line naming the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import flowers.worker.settings
from flowers.models.errors import SettingsError, UsageError
from flowers.worker.settings import Settings, redact_url
from tests.conftest import REPO, run_flowers
from tests.test_containers import settings_variables

SETTINGS_DOC = flowers.worker.settings.__doc__


def env_without_flowers(**more: str) -> dict[str, str]:
    """This process's environment without FLOWERS_* variables, plus `more`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    return {**env, **more}


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        Settings.load(env)
    return str(caught.value)


def test_unset_and_empty_variables_take_the_documented_defaults(tmp_path: Path) -> None:
    names = re.findall(r"^(FLOWERS_\w+)", SETTINGS_DOC or "", re.MULTILINE)
    for env in ({}, dict.fromkeys(names, "")):
        settings = Settings.from_env(env)
        assert settings.broker_url is None and settings.weights_dir is None
        assert settings.home == Path.home() / ".flowers"
        assert (settings.visibility_timeout, settings.worker_concurrency, settings.tf_threads,
                settings.job_ttl, settings.queued_chunks) == (3600, 0, 0, 604800, 256)
        assert (settings.queue, settings.runtime, settings.allowed_roots, settings.debug) == (
            "flowers", "litert", (), False)


def test_the_docstring_table_lists_exactly_the_variables_read() -> None:
    documented = set(re.findall(r"^(FLOWERS_\w+)", SETTINGS_DOC or "", re.MULTILINE))
    assert documented == settings_variables()
    assert {"FLOWERS_BROKER_URL", "FLOWERS_QUEUE", "FLOWERS_DEBUG"} <= documented


@pytest.mark.parametrize(("name", "value", "field", "expected"), [
    ("FLOWERS_VISIBILITY_TIMEOUT", "5", "visibility_timeout", 5),
    ("FLOWERS_VISIBILITY_TIMEOUT", " 7200 ", "visibility_timeout", 7200),
    ("FLOWERS_VISIBILITY_TIMEOUT", "2592000", "visibility_timeout", 2592000),
    ("FLOWERS_WORKER_CONCURRENCY", "0", "worker_concurrency", 0),
    ("FLOWERS_WORKER_CONCURRENCY", "16", "worker_concurrency", 16),
    ("FLOWERS_TF_THREADS", "4", "tf_threads", 4),
    ("FLOWERS_JOB_TTL", "60", "job_ttl", 60),
    ("FLOWERS_QUEUED_CHUNKS", "1", "queued_chunks", 1),
    ("FLOWERS_QUEUE", "train.gpu-1", "queue", "train.gpu-1"),
    ("FLOWERS_RUNTIME", "KERAS", "runtime", "keras"),
    ("FLOWERS_DEBUG", "1", "debug", True),
    ("FLOWERS_DEBUG", "off", "debug", False),
    ("FLOWERS_BROKER_URL", "redis://127.0.0.1:6379/0", "broker_url", "redis://127.0.0.1:6379/0"),
    ("FLOWERS_BROKER_URL", "rediss://:pw@redis.example:6380/2", "broker_url",
     "rediss://:pw@redis.example:6380/2"),
    ("FLOWERS_BROKER_URL", "redis://[::1]:6379", "broker_url", "redis://[::1]:6379"),
    ("FLOWERS_BROKER_URL", "redis://user:pw@host/3?socket_timeout=5", "broker_url",
     "redis://user:pw@host/3?socket_timeout=5"),
    ("FLOWERS_BROKER_URL", "redis://redis", "broker_url", "redis://redis"),
])
def test_values_in_range_are_taken(name: str, value: str, field: str, expected: Any) -> None:
    assert getattr(Settings.load({name: value}), field) == expected


@pytest.mark.parametrize(("name", "value", "accepted"), [
    ("FLOWERS_VISIBILITY_TIMEOUT", "0", "from 5 to 2592000"),
    ("FLOWERS_VISIBILITY_TIMEOUT", "4", "from 5 to 2592000"),
    ("FLOWERS_VISIBILITY_TIMEOUT", "-3600", "from 5 to 2592000"),
    ("FLOWERS_VISIBILITY_TIMEOUT", "an hour", "whole number of seconds"),
    ("FLOWERS_VISIBILITY_TIMEOUT", "3600.5", "whole number of seconds"),
    ("FLOWERS_VISIBILITY_TIMEOUT", "1e3", "whole number of seconds"),
    ("FLOWERS_VISIBILITY_TIMEOUT", "99999999999999999999", "from 5 to 2592000"),
    ("FLOWERS_WORKER_CONCURRENCY", "-1", "from 0 to 1024"),
    ("FLOWERS_WORKER_CONCURRENCY", "four", "whole number of processes"),
    ("FLOWERS_WORKER_CONCURRENCY", "1_000", "whole number of processes"),
    ("FLOWERS_TF_THREADS", "-2", "from 0 to 1024"),
    ("FLOWERS_TF_THREADS", "2.0", "whole number of threads"),
    ("FLOWERS_JOB_TTL", "0", "from 60 to"),
    ("FLOWERS_JOB_TTL", "1w", "whole number of seconds"),
    ("FLOWERS_QUEUED_CHUNKS", "0", "from 1 to 1000000"),
    ("FLOWERS_QUEUED_CHUNKS", "many", "whole number of chunks"),
    ("FLOWERS_QUEUE", "my queue", "without spaces"),
    ("FLOWERS_QUEUE", " ", "without spaces"),
    ("FLOWERS_QUEUE", "a,b", "commas"),
    ("FLOWERS_QUEUE", "bell\a", "control characters"),
    ("FLOWERS_QUEUE", "q" * 201, "at most 200"),
    ("FLOWERS_QUEUE", "flowers:job", "colons"),  # flowers' own keys
    ("FLOWERS_QUEUE", "unacked", "Celery's Redis transport keeps for itself"),
    ("FLOWERS_QUEUE", "_kombu.binding.flowers", "Celery's Redis transport keeps for itself"),
    ("FLOWERS_RUNTIME", "onnx", "litert, keras"),
    ("FLOWERS_DEBUG", "maybe", "give 1 or 0"),
    ("FLOWERS_WORKER_TIMEOUT", "14", "at least three heartbeat intervals"),
    ("FLOWERS_BROKER_URL", "redis//x", "no scheme://"),
    ("FLOWERS_BROKER_URL", "localhost:6379", "no scheme://"),
    ("FLOWERS_BROKER_URL", "REDIS://host:6379/0", "scheme 'REDIS', not redis"),
    ("FLOWERS_BROKER_URL", "redis://host:notaport/0", "cannot be read"),
    ("FLOWERS_BROKER_URL", "redis://host:70000/0", "cannot be read"),
    ("FLOWERS_BROKER_URL", "redis://host:0/0", "port 0"),
    ("FLOWERS_BROKER_URL", "http://host:6379/0", "scheme 'http', not redis"),
    ("FLOWERS_BROKER_URL", "amqp://guest@host//", "scheme 'amqp', not redis"),
    ("FLOWERS_BROKER_URL", "redis://host:6379/0?socket_timeout=abc", "option Redis cannot read"),
    ("FLOWERS_BROKER_URL", "unix:///run/redis.sock", "unix socket"),
    ("FLOWERS_BROKER_URL", "redis://:6379/0", "no host"),
    ("FLOWERS_BROKER_URL", "redis:///0", "no host"),
    ("FLOWERS_BROKER_URL", "redis://host/zero", "database 'zero'"),
    ("FLOWERS_BROKER_URL", "redis://host/0/1", "database '0/1'"),
    ("FLOWERS_BROKER_URL", "redis://host?db=x", "database 'x'"),
    ("FLOWERS_BROKER_URL", "redis://[::1:6379/0", "cannot be read"),
    ("FLOWERS_BROKER_URL", "redis://ho st:6379/0", "spaces"),
    ("FLOWERS_ALLOWED_ROOTS", "photos:/srv/out", "absolute folders"),
    ("FLOWERS_ALLOWED_ROOTS", "::", "names no folder"),  # set: never no confinement
])
def test_values_out_of_range_are_refused_naming_the_variable(
    name: str, value: str, accepted: str
) -> None:
    message = refusal({name: value})
    assert message.startswith(f"{name}={value!r}"[:60]), message
    assert accepted in message, message
    assert "\n" not in message


def test_each_refusal_says_what_is_accepted() -> None:
    assert "keep it above the longest task" in refusal({"FLOWERS_VISIBILITY_TIMEOUT": "0"})
    assert "redis://[:PASSWORD@]HOST[:PORT][/DB]" in refusal({"FLOWERS_BROKER_URL": "redis//x"})
    assert "(default 256)" in refusal({"FLOWERS_QUEUED_CHUNKS": "-5"})


def test_a_password_in_a_refused_broker_url_is_not_shown() -> None:
    message = refusal({"FLOWERS_BROKER_URL": "redis://:hunter2@host:notaport/0"})
    assert "hunter2" not in message and "redis://:***@host:notaport/0" in message
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://:pw@[::1/0") == "redis://:***@[::1/0"


def test_folders_are_checked_on_this_machine(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    message = refusal({"FLOWERS_HOME": str(a_file)})
    assert message.startswith(f"FLOWERS_HOME={str(a_file)!r} is not a folder")
    assert Settings.load({"FLOWERS_HOME": str(tmp_path / "not-yet")}).home == tmp_path / "not-yet"
    under_a_file = refusal({"FLOWERS_HOME": str(a_file / "home" / "flowers")})
    assert under_a_file.startswith(f"FLOWERS_HOME={str(a_file / 'home' / 'flowers')!r} cannot "
                                   f"be made: {str(a_file)!r} is not a folder"), under_a_file

    assert "does not exist" in refusal({"FLOWERS_WEIGHTS_DIR": str(tmp_path / "gone")})
    assert "is not a folder" in refusal({"FLOWERS_WEIGHTS_DIR": str(a_file)})
    assert Settings.load({"FLOWERS_WEIGHTS_DIR": str(tmp_path)}).weights_dir == tmp_path

    roots = f"{tmp_path}:{tmp_path / 'gone'}"
    assert f"names {str(tmp_path / 'gone')!r}, which does not exist" in refusal(
        {"FLOWERS_ALLOWED_ROOTS": roots})
    # Reading alone touches no file: a worker's paths may be checked on another machine.
    assert Settings.from_env({"FLOWERS_ALLOWED_ROOTS": roots,
                              "FLOWERS_WEIGHTS_DIR": "/opt/nowhere"}).allowed_roots == (
        tmp_path.resolve(), (tmp_path / "gone").resolve())


def test_a_settings_error_is_a_usage_error() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"FLOWERS_JOB_TTL": "0"})
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("name", "value"), [
    ("FLOWERS_VISIBILITY_TIMEOUT", "0"),
    ("FLOWERS_BROKER_URL", "redis://localhost:notaport/0"),
    ("FLOWERS_QUEUE", "two words"),
    ("FLOWERS_DEBUG", "maybe"),
])
def test_any_command_with_a_bad_setting_stops_with_one_line(
    name: str, value: str, tmp_path: Path
) -> None:
    result = run_flowers("architectures", env=env_without_flowers(
        FLOWERS_HOME=str(tmp_path), **{name: value}), timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: bad FLOWERS_* environment variable: {name}=")
    assert value.split(":")[0] in line


def test_flowers_worker_with_a_bad_setting_exits_at_once(tmp_path: Path) -> None:
    env = env_without_flowers(FLOWERS_HOME=str(tmp_path), FLOWERS_WORKER_CONCURRENCY="-1",
                              FLOWERS_BROKER_URL="redis://127.0.0.1:1/0")
    result = run_flowers("worker", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: bad FLOWERS_* environment variable: "
                           "FLOWERS_WORKER_CONCURRENCY='-1': give a whole number of processes")


def test_a_celery_worker_of_the_app_with_a_bad_setting_exits_at_once(tmp_path: Path) -> None:
    """`celery -A flowers.worker.app worker`, the other way to start one: one line, no traceback."""
    env = env_without_flowers(FLOWERS_HOME=str(tmp_path), FLOWERS_VISIBILITY_TIMEOUT="0")
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "flowers.worker.app", "worker"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: bad FLOWERS_* environment variable: "
                           "FLOWERS_VISIBILITY_TIMEOUT='0'")


def test_an_allowed_root_that_cannot_be_resolved_is_refused(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(SettingsError, match=r"FLOWERS_ALLOWED_ROOTS=.*cannot be resolved"):
        Settings.from_env({"FLOWERS_ALLOWED_ROOTS": str(tmp_path / "loop")})
