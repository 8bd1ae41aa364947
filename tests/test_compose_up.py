"""The compose file's services run for real, with podman: the project's image built from the
Dockerfile, then Redis (with its persistence flags), two workers and Flower started from their
own definitions in docker-compose.yml (command, environment, volumes, init), a folder under
FLOWERS_DATA labelled from the host's CLI through them, and a worker container killed mid-job.

No Docker engine runs here, but podman does: ../shared/tools/containers-here installs it and
builds stand-ins for the base images (run by this test when podman or they are missing). The
containers share the host's network: each service gets its own loopback port, and the compose
service name `redis` is mapped to 127.0.0.1 (`--add-host`). As with compose, the workers run as
uid 1000 and the CLI as whoever runs the tests: the output folder is in the workers' group and
the CLI's umask is 002, as the README says.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flowers.worker import results
from flowers.worker.embedded import free_port
from flowers.worker.settings import usable_cores
from tests.compose_file import (
    COMPOSE,
    ROOT,
    SERVICES,
    WORKER,
    as_argv,
    expand,
    redis_arguments,
    service_environment,
)
from tests.conftest import (
    SHARED,
    chunks_in_flight,
    copy_subset,
    flowers_env,
    wait_for,
)

pytestmark = [pytest.mark.containers, pytest.mark.long(minutes=2.5)]

CONTAINERS_HERE = SHARED / "tools" / "containers-here"
# The compose file's host variables, as a user would set them for `docker compose up`: a short
# visibility timeout so the killed worker's chunks come back within the test.
HOST_VARIABLES = {"FLOWERS_VISIBILITY_TIMEOUT": "10"}
# Enough one-photo chunks (900) that the job lasts seconds on a quiet machine: 90 were done in
# under a second, before the test could freeze a worker holding one, and 450 in 3 s, before
# any of the freezes the test tried (each takes over half a second) caught one (once in CI).
PHOTOS_PER_CLASS = 300


def podman(*args: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}{result.stderr}")
    return result


def base_images() -> list[str]:
    """The images the Dockerfile builds FROM and the compose services run, fully named."""
    names = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    names += [service["image"] for service in SERVICES.values() if "image" in service]
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (ROOT / "Dockerfile").read_text(),
                        re.MULTILINE)
    full = {name if name.count("/") >= 2 else
            f"docker.io/{name if '/' in name else 'library/' + name}"
            for name in names if name not in stages}
    return sorted(full)


def ensure_podman() -> None:
    """podman and the base images, set up by containers-here when missing; a skip only where
    neither podman nor ../shared's containers-here is at hand."""
    ready = shutil.which("podman") is not None and all(
        podman("image", "exists", name, check=False).returncode == 0 for name in base_images())
    if ready:
        return
    if not CONTAINERS_HERE.is_file():
        pytest.skip(f"podman and its base images are not set up and {CONTAINERS_HERE} is "
                    "missing: put ../shared beside the checkout or install podman")
    setup = subprocess.run(["bash", str(CONTAINERS_HERE)], capture_output=True, text=True,
                           timeout=900)
    assert setup.returncode == 0, f"containers-here failed:\n{setup.stdout}{setup.stderr}"


@pytest.fixture(scope="session")
def project_image() -> Iterator[str]:
    """`podman build` of the Dockerfile with the compose file's build arguments; the tag is
    this session's, removed afterwards (with the cached layers, unless another tag holds them:
    .ci/run builds the same image ahead and keeps its tag until it ends)."""
    ensure_podman()
    tag = f"localhost/flowers:test-{os.getpid()}"
    build = WORKER["build"]
    arguments = [f"--build-arg={name}={expand(str(value), {})}"
                 for name, value in (build.get("args") or {}).items()]
    podman("build", "-q", "-t", tag, "-f", str(ROOT / build.get("dockerfile", "Dockerfile")),
           *arguments, str(ROOT / build["context"]), timeout=900)
    yield tag
    podman("rmi", tag, check=False)


@pytest.fixture(scope="session")
def flower_image() -> Iterator[str]:
    """Compose's Flower image; containers-here's stand-in lacks `packaging`, which kombu's
    Redis transport imports without declaring it (the registry's image has it): added here."""
    ensure_podman()
    image = SERVICES["flower"]["image"]
    probe = podman("run", "--rm", image, "python3", "-c", "import packaging", check=False)
    if probe.returncode == 0:
        yield image
        return
    tag = f"localhost/flower-with-packaging:test-{os.getpid()}"
    containerfile = f"FROM {image}\nRUN pip install -q packaging\n"
    result = subprocess.run(["podman", "build", "-q", "-t", tag, "-"], input=containerfile,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    yield tag
    podman("rmi", tag, check=False)


class Project:
    """The compose project's containers and named volumes, each named after this test run."""

    def __init__(self, data: Path) -> None:
        self.prefix = f"flowers-test-{os.getpid()}"
        self.data = data
        self.redis_port = free_port()
        self.flower_port = free_port()
        self.containers: list[str] = []
        self.volumes: set[str] = set()

    @property
    def broker_url(self) -> str:
        """The URL the host's CLI uses."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def to_loopback(self, text: str) -> str:
        """Compose's addresses moved to this run's loopback ports (host networking)."""
        text = text.replace("redis:6379", f"redis:{self.redis_port}")
        return text.replace("--port=5555", f"--port={self.flower_port}")

    def volume(self, spec: str) -> str:
        """`SOURCE:TARGET` with `${...}` filled and named volumes made this run's own."""
        source, target, *mode = expand(spec, {"FLOWERS_DATA": str(self.data)}).split(":")
        if source in (COMPOSE.get("volumes") or {}):
            source = f"{self.prefix}-{source}"
            self.volumes.add(source)
        return ":".join([source, target, *mode])

    def run(self, service: str, image: str, name: str, extra: list[str]) -> str:
        """Starts one container of `service` as its definition says; returns its name."""
        definition = SERVICES[service]
        container = f"{self.prefix}-{name}"
        argv = ["run", "-d", "--name", container, "--hostname", container,
                "--add-host", "redis:127.0.0.1"]
        if definition.get("init"):
            argv.append("--init")
        for key, value in service_environment(definition, HOST_VARIABLES).items():
            argv += ["-e", f"{key}={self.to_loopback(value)}"]
        for spec in definition.get("volumes") or []:
            argv += ["-v", self.volume(str(spec))]
        command = [self.to_loopback(arg) for arg in as_argv(definition["command"])]
        podman(*argv, image, *command, *extra)
        self.containers.append(container)
        return container

    def logs(self, container: str) -> str:
        result = podman("logs", container, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        for container in self.containers:
            podman("rm", "-f", "-t", "2", container, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False)


@pytest.fixture
def flowers_data(flower_photos: Path, trained_bundle: tuple[Path, Any]) -> Iterator[Path]:
    """FLOWERS_DATA: photos and a bundle readable by all, an output folder in the workers'
    group (setgid), as compose's comments set /srv/flowers up."""
    data = Path(tempfile.mkdtemp(prefix="flowers-data-"))
    data.chmod(0o755)
    copy_subset(flower_photos, data / "photos", ["daisy", "roses", "tulips"], PHOTOS_PER_CLASS)
    shutil.copytree(trained_bundle[0], data / "bundles" / "small")
    for item in data.rglob("*"):
        item.chmod(0o755 if item.is_dir() else 0o644)
    worker_gid = int(expand(str(WORKER["build"]["args"]["UID"]), {}))
    (data / "out").mkdir()
    os.chown(data / "out", 0, worker_gid)
    (data / "out").chmod(0o2775)
    yield data
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def project(flowers_data: Path) -> Iterator[Project]:
    running = Project(flowers_data)
    yield running
    running.remove()


def answers(url: str) -> Callable[[], str]:
    def fetch() -> str:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    return fetch


def test_compose_services_label_a_folder_and_survive_a_killed_worker(
    project: Project, project_image: str, flower_image: str, flowers_data: Path,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    project.run("redis", SERVICES["redis"]["image"], "redis",
                ["--port", str(project.redis_port), "--bind", "127.0.0.1"])
    client = redis.Redis(port=project.redis_port, decode_responses=True)
    wait_for(lambda: bool(answers_ping(client)), timeout=30, what="the redis container")
    persistence = redis_arguments()
    for option in ("appendonly", "appendfsync", "save", "maxmemory-policy"):
        expected = persistence[persistence.index(f"--{option}") + 1]
        assert client.config_get(option)[option] == expected, option

    workers = [project.run("worker", project_image, f"worker-{n}", []) for n in (1, 2)]
    for worker in workers:
        wait_for(lambda w=worker: " ready." in project.logs(w), timeout=60,  # type: ignore[misc]
                 what=f"{worker} ready", interval=0.5)
        assert f"flowers worker: {usable_cores()} processes" in project.logs(worker)
    project.run("flower", flower_image, "flower", [])
    dashboard = answers(f"http://127.0.0.1:{project.flower_port}/")
    wait_for(lambda: all(f"@{worker}" in dashboard() for worker in workers), timeout=60,
             what="Flower to show both workers", interval=1)

    output = flowers_data / "out" / "labels.csv"
    env = flowers_env(tmp_path / "cli-home", project.broker_url, None)
    # The CLI waits, as a user's would: it ends when the job does.
    cli = subprocess.Popen(
        [sys.executable, "-m", "flowers.cli", "label-dir", str(flowers_data / "photos"), "--model",
         str(flowers_data / "bundles" / "small"), "--output", str(output), "--chunk-size", "1",
         "--batch-size", "1"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        umask=0o002)
    jobs: list[str] = []

    def job_recorded() -> bool:
        jobs[:] = [str(key).split(":")[2] for key in client.keys("flowers:job:*")
                   if str(key).count(":") == 2]
        return bool(jobs)

    wait_for(job_recorded, timeout=60, what="the job recorded")
    (job_id,) = jobs
    parts = output.with_name(output.name + ".parts")

    def stuck(what: str) -> AssertionError:
        """What the job, the queue and the workers were doing when `what` did not happen."""
        logs = "".join(f"\n{worker}'s log (end):\n{project.logs(worker)[-4000:]}"
                       for worker in workers)
        return AssertionError(
            f"{what}\njob: {client.hgetall(f'flowers:job:{job_id}')}\nqueued: "
            f"{client.llen('flowers')}, unacked: {client.hlen('unacked')}, parts: "
            f"{len(list(parts.glob('part-*.csv')))}{logs}")

    def waited(condition: Callable[[], bool], what: str, interval: float) -> None:
        try:
            wait_for(condition, timeout=120, what=what, interval=interval)
        except AssertionError as exc:
            raise stuck(str(exc)) from None

    waited(lambda: len(list(parts.glob("part-*.csv"))) >= 6 and client.llen("flowers") > 0,
           "the job under way", interval=0.02)
    # A one-photo chunk takes milliseconds, less than `podman kill` takes to start: freeze the
    # worker first (`podman pause`), and kill it once it is frozen with chunks in hand (taken,
    # not finished, not acknowledged).
    held: set[str] = set()

    def frozen_holding_chunks() -> bool:
        podman("pause", workers[0])
        # The log lags the frozen processes: read it once nothing new reaches it (on a loaded
        # machine a success written before the pause arrived after half a second).
        log = ""
        while (latest := project.logs(workers[0])) != log:
            log = latest
            time.sleep(0.5)
        # Taken and not acknowledged, and unfinished: no success logged, no part written (a
        # chunk that wrote its part and logged its success can still await its acknowledgement).
        unfinished = {task_id for task_id, chunk in chunks_in_flight(project.broker_url)
                      if not results.part_path(parts, job_id, int(chunk["index"])).exists()}
        held.update((tasks_logged(log, "received") - tasks_logged(log, "succeeded"))
                    & unfinished)
        if not held:
            podman("unpause", workers[0])
        return bool(held)

    waited(frozen_holding_chunks, "worker 1 frozen with a chunk in hand", interval=0.05)
    kill_frozen(workers[0])
    assert not output.exists(), "killed mid-job"

    try:
        stdout, stderr = cli.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        cli.kill()
        raise stuck("timed out waiting for the CLI to end after the killed worker's chunks "
                    f"came back; its output:\n{''.join(cli.communicate())}") from None
    assert cli.returncode == 0, stderr
    assert f"labelled {3 * PHOTOS_PER_CLASS} photos (0 errors)" in stdout, stdout
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    photos = flowers_data / "photos"
    assert [row[0] for row in rows] == sorted(
        p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg")), "one row per photo"
    assert all(row[1] in ("daisy", "roses", "tulips") and not row[-1] for row in rows)
    assert output.stat().st_uid == int(expand(str(WORKER["build"]["args"]["UID"]), {}))
    assert client.hget(f"flowers:job:{job_id}", "state") == "succeeded"

    # The chunks the killed worker held came back, and the other worker did them.
    assert held <= tasks_logged(project.logs(workers[1]), "received"), stuck(
        f"held {sorted(held)}: not all received by the other worker; the CLI said:\n{stderr}")
    assert not held & tasks_logged(project.logs(workers[0]), "succeeded")

    # The job's per-process counts keep the containers' processes apart (their pids repeat):
    # each process that loaded the bundle counted as itself, once loaded.
    loaded = {(container, pid) for container in workers
              for pid in re.findall(r"process (\d+) loaded bundle", project.logs(container))}
    record: dict[str, str] = client.hgetall(f"flowers:job:{job_id}")  # type: ignore[assignment]
    counts = {key.split(":", 1)[1]: int(value) for key, value in record.items()
              if key.startswith("loads:")}
    counted = {tuple(reversed(process.split("@"))) for process in counts}
    assert set(counts.values()) == {1}, counts
    assert counted <= loaded and {(c, pid) for c, pid in loaded if c == workers[1]} <= counted, \
        (counted, loaded)
    print(f"compose services up, labelled and recovered in {time.monotonic() - started:.0f} s")


def kill_frozen(container: str) -> None:
    """SIGKILL, from the host, to every process of a paused container, then `podman kill`: a
    frozen process dies as it thaws, running nothing more. `podman kill` alone thaws a paused
    container before it kills (a loop writing a file went on for 64 ms here), long enough for
    a worker to finish the chunk it was frozen with."""
    def tree(pid: int) -> list[int]:
        return [pid] + [grandchild for task in Path(f"/proc/{pid}/task").iterdir()
                        for child in (task / "children").read_text().split()
                        for grandchild in tree(int(child))]

    init = int(podman("inspect", "--format", "{{.State.Pid}}", container).stdout)
    for pid in tree(init):
        os.kill(pid, signal.SIGKILL)
    podman("kill", container)


def tasks_logged(log: str, event: str) -> set[str]:
    """Ids of the label chunks a worker's log says it `event` ("received", "succeeded")."""
    return set(re.findall(rf"flowers\.label_chunk\[([0-9a-f-]+)\] {event}", log))


def answers_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
