"""Security: JSON-only messages, Redis passwords never shown, workers confined to their roots."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowers.worker.app import app, configure
from flowers.worker.embedded import RedisServer, start_redis
from flowers.worker.settings import Settings
from tests.conftest import WorkerFactory, copy_subset, flowers_env, run_flowers, wait_for

pytestmark = [pytest.mark.hardening, pytest.mark.queue]

SECRET = "s3cret-Pa55"


class Exploit:
    """Unpickling this runs a shell command: what a pickle-accepting worker would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_message_runs_no_code(
    redis_url: str, worker_process: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    configure(app, Settings.from_env({}), redis_url)
    app.send_task("flowers.label_chunk", args=[Exploit(marker)], serializer="pickle",
                  queue="flowers")
    wait_for(lambda: "untrusted content" in worker_process.log(), timeout=20,
             what="the worker to refuse the message", interval=0.2)
    assert "untrusted content" in worker_process.log()
    assert not marker.exists()
    assert worker_process.poll() is None


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis-auth", None, "--requirepass", SECRET)
    yield server
    server.stop()


def test_redis_password_is_used_and_never_shown(
    password_redis: RedisServer, start_workers: WorkerFactory, flower_photos: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{password_redis.port}/0"
    photos = copy_subset(flower_photos, tmp_path / "photos", ["roses"], 5)
    worker = start_workers(1, broker_url=url)
    env = flowers_env(flowers_home, url, weights_dir)
    output = tmp_path / "out.csv"
    queued = run_flowers("label-dir", str(photos), "--model", str(trained_bundle[0]),
                         "--output", str(output), "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    wait_for(output.exists, timeout=120, what="the output", interval=0.2)
    with open(output, newline="") as handle:
        assert len(list(csv.reader(handle))) == 6
    status = run_flowers("status", job_id, "--json", env=env)
    assert json.loads(status.stdout)["state"] == "succeeded"

    wrong = flowers_env(flowers_home, url.replace(SECRET, "guess"), weights_dir)
    refused = run_flowers("status", job_id, env=wrong)
    assert refused.returncode == 1 and "refused the password" in refused.stderr
    missing = flowers_env(flowers_home, f"redis://127.0.0.1:{password_redis.port}/0", None)
    needs = run_flowers("status", job_id, env=missing)
    assert needs.returncode == 1 and "needs a password" in needs.stderr
    shown = [queued.stdout, queued.stderr, status.stdout, status.stderr, refused.stderr,
             needs.stderr, worker.log()]
    assert not [text for text in shown if SECRET in text or "guess" in text]
    # Where the URL is printed, it is printed redacted: flowers' own line and Celery's banner.
    port = password_redis.port
    assert f"on redis://:***@127.0.0.1:{port}/0, queue 'flowers'" in worker.log()
    assert f"transport:   redis://:**@127.0.0.1:{port}/0" in worker.log()


def test_confined_worker_refuses_paths_outside_its_roots(
    redis_url: str, start_workers: WorkerFactory, flower_photos: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    allowed = tmp_path / "allowed"
    photos = copy_subset(flower_photos, allowed / "photos", ["daisy"], 3)
    (tmp_path / "secret.jpg").write_bytes((photos / "daisy").iterdir().__next__().read_bytes())
    (photos / "daisy" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    bundle = allowed / "bundle"
    import shutil

    shutil.copytree(trained_bundle[0], bundle)
    start_workers(1, FLOWERS_ALLOWED_ROOTS=str(allowed))
    env = flowers_env(flowers_home, redis_url, weights_dir)

    inside = run_flowers("label-dir", str(photos), "--model", str(bundle), "--output",
                         str(allowed / "out.csv"), env=env)
    assert inside.returncode == 0, inside.stderr
    with open(allowed / "out.csv", newline="") as handle:
        rows = {row[0]: row for row in list(csv.reader(handle))[1:]}
    assert rows["daisy/link.jpg"][-1] == "refused: resolves outside FLOWERS_ALLOWED_ROOTS"
    assert sum(1 for row in rows.values() if not row[-1]) == 3

    outside = run_flowers("label-dir", str(photos), "--model", str(trained_bundle[0]),
                          "--output", str(allowed / "out2.csv"), env=env)
    assert outside.returncode == 1
    assert "bundle" in outside.stderr and "outside the folders this worker may use" in \
        outside.stderr

    # Outputs outside: a label CSV, a trained bundle, TensorBoard summaries; none is written.
    refusals = {
        "output": ("label-dir", str(photos), "--model", str(bundle), "--output",
                   str(tmp_path / "out.csv")),
        "bundle output": ("train", str(two_classes(flower_photos, allowed)), "--output",
                          str(tmp_path / "bundle"), *TINY_TRAINING),
        "summaries folder": ("train", str(allowed / "two"), "--output",
                             str(allowed / "bundle2"), "--summaries-dir",
                             str(tmp_path / "summaries"), *TINY_TRAINING),
    }
    for what, args in refusals.items():
        refused = run_flowers(*args, env=env)
        assert refused.returncode == 1, refused.stderr
        (line,) = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
        assert f"{what} {tmp_path}/" in line and "outside the folders this worker may use" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["allowed", "home", "secret.jpg", "out.csv.parts", "worker-0.log"]), \
        "nothing written outside but the CLI's own parts folder"
    assert not list((tmp_path / "out.csv.parts").glob("part-*.csv"))
    assert not (allowed / "bundle2").exists()


TINY_TRAINING = ("--architecture", "mobilenet_0.25_128", "--recipe", "codelab", "--weights",
                 "none", "--how-many-training-steps", "5")


def two_classes(flower_photos: Path, allowed: Path) -> Path:
    return copy_subset(flower_photos, allowed / "two", ["daisy", "tulips"], 3)
