"""The CLI and the workers as two users, as with compose's workers (uid 1000 in the image) and
a CLI run by root on the host: the files a job shares follow the CLI's umask, and a worker that
cannot read or write them fails the job with one line saying why and what to do."""

from __future__ import annotations

import csv
import os
import pwd
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO,
    RunningWorker,
    StartedWorkers,
    copy_subset,
    flowers_env,
    run_flowers,
)

pytestmark = [pytest.mark.hardening, pytest.mark.queue]


@pytest.fixture
def worker_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("running the workers as another user than the CLI's needs root")
    return pwd.getpwnam("nobody")


@pytest.fixture
def shared_root(worker_user: pwd.struct_passwd) -> Iterator[Path]:
    """A folder both users reach (pytest's temporary folders are private to their user), with
    photos, a bundle, and an output folder in the workers' group, as compose's FLOWERS_DATA."""
    root = Path(tempfile.mkdtemp(prefix="flowers-two-users-"))
    root.chmod(0o755)
    output = root / "out"
    output.mkdir()
    os.chown(output, 0, worker_user.pw_gid)
    output.chmod(0o2775)  # setgid: what is made inside takes the workers' group
    yield root
    shutil.rmtree(root)


@pytest.fixture
def shared_inputs(shared_root: Path, flower_photos: Path, trained_bundle: tuple[Path, Any]
                  ) -> tuple[Path, Path]:
    """Photos and a copy of the bundle under `shared_root`, readable by everyone."""
    photos = copy_subset(flower_photos, shared_root / "photos", ["daisy", "tulips"], 2)
    bundle = shared_root / "bundle"
    bundle.mkdir()
    for item in trained_bundle[0].iterdir():
        shutil.copyfile(item, bundle / item.name)
        (bundle / item.name).chmod(0o644)
    return photos, bundle


def as_user(user: pwd.struct_passwd, stage: Path) -> list[str]:
    """A command prefix that runs a command as `user`, able to run this Python and this
    checkout even where they live in folders private to root (pyenv's /root/.pyenv, a CI
    clone in a `mktemp -d` folder): in a private mount namespace, each such folder shows only
    the interpreter's or the checkout's own tree, through a view under `stage`."""
    drop = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--"]
    binds: list[str] = []
    overlays: dict[Path, Path] = {}
    for number, source in enumerate((Path(sys.base_prefix).resolve(), REPO.resolve())):
        private = next((folder for folder in reversed(source.parents)
                        if not folder.stat().st_mode & stat.S_IXOTH), None)
        if private is None:
            continue
        view_root = overlays.setdefault(private, stage / f"view-{number}")
        view = view_root / source.relative_to(private)
        view.mkdir(parents=True)
        for folder in (view, *view.relative_to(view_root).parents):
            (view_root / folder).chmod(0o755)
        binds += [str(source), str(view)]
    if not overlays:
        return drop
    for private, view_root in overlays.items():
        binds += [str(view_root), str(private)]
    # Pairs (source, target): the trees into their views first, then the views over the
    # private folders (rbind, so the trees mounted inside come along).
    script = ('count=$(( $1 )); shift; i=0; while [ $i -lt "$count" ]; do '
              'mount --bind "$1" "$2" && shift 2 && i=$((i + 1)) || exit 1; done; '
              'while [ "$1" != "--" ]; do mount --rbind "$1" "$2" && shift 2 || exit 1; done; '
              'shift; exec "$@"')
    bound = len(binds) // 2 - len(overlays)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(bound), *binds, "--", *drop]


@pytest.fixture
def worker_as_other_user(
    shared_root: Path, started_workers: StartedWorkers, worker_user: pwd.struct_passwd,
    redis_url: str, tmp_path: Path,
) -> RunningWorker:
    home = shared_root / "worker-home"
    home.mkdir()
    os.chown(home, worker_user.pw_uid, worker_user.pw_gid)
    env = {**flowers_env(home, redis_url, None), "HOME": str(home)}
    argv = [sys.executable, "-m", "flowers.cli", "worker", "--concurrency", "1"]
    worker = started_workers.run([*as_user(worker_user, tmp_path / "python-view"), *argv], env,
                                 cwd=REPO)
    assert Path(f"/proc/{worker.pid}").stat().st_uid == worker_user.pw_uid, "runs as the user"
    return worker


def test_a_job_from_another_user_with_a_shared_group_completes(
    worker_as_other_user: RunningWorker, shared_inputs: tuple[Path, Path], shared_root: Path,
    redis_url: str, tmp_path: Path,
) -> None:
    photos, bundle = shared_inputs
    output = shared_root / "out" / "labels.csv"
    result = run_flowers("label-dir", str(photos), "--model", str(bundle), "--output",
                         str(output), "--chunk-size", "2",
                         env=flowers_env(tmp_path, redis_url, None), timeout=120, umask=0o002)
    assert result.returncode == 0, result.stderr + worker_as_other_user.log()
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert [row[0] for row in rows] == sorted(
        p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    assert all(row[1] and not row[-1] for row in rows)
    assert output.stat().st_uid == pwd.getpwnam("nobody").pw_uid, "the worker wrote it"


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask 022", "umask 077"])
def test_a_worker_that_cannot_use_the_job_files_fails_the_job_saying_why(
    umask: int, worker_as_other_user: RunningWorker, worker_user: pwd.struct_passwd,
    shared_inputs: tuple[Path, Path], shared_root: Path, redis_url: str, tmp_path: Path,
) -> None:
    photos, bundle = shared_inputs
    output = shared_root / "out" / "labels.csv"
    result = run_flowers("label-dir", str(photos), "--model", str(bundle), "--output",
                         str(output), env=flowers_env(tmp_path, redis_url, None), timeout=120,
                         umask=umask)
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    parts = output.with_name("labels.csv.parts")
    info = parts.stat()
    for words in (str(parts), f"uid {worker_user.pw_uid}", stat.filemode(info.st_mode),
                  f"owner uid {info.st_uid}", "umask"):
        assert words in line, (words, line)
    assert not output.exists()
