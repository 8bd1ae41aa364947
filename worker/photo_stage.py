"""The photo stage of a training job, shared out over every worker process of the cluster.

`flowers.retrain` and `flowers.evaluate` list the job's photos and send them as
`flowers.photo_chunk` tasks of up to `CHUNK_PHOTOS` photos, smaller towards the end
(`photo_chunks`). Each fills the shared, content-addressed
cache in FLOWERS_HOME (bottlenecks, or activations of augmented views) for its photos; the
worker that finishes the last chunk sends `flowers.fit`, which trains in a process of its own
from the now warm cache (`worker.train_process`), as a one-process run would: same photos,
same split, same features. So every worker process attached computes features, and what the
cluster must share is FLOWERS_HOME's cache folder (the compose file's volume) besides the photos
and the bundle's folder.

A pool process never imports TensorFlow (it labels on LiteRT): it runs its chunks in a
photo-stage process of its own (`python -m worker.photo_stage`), started at its first chunk and
kept while chunks come, so the network is built once per job and process, and stopped once it
has been idle for `IDLE_SECONDS` (or when its pool process starts a training), which frees its
TensorFlow memory. It dies with the pool
process (a killed worker's chunk is redelivered, and redone from the cache entries it wrote).
Requests and replies are one JSON line each over its stdin and a pipe of its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from flowers.models.errors import FlowersError
from flowers.worker.chunk_list import chunked
from flowers.worker.settings import Settings

log = logging.getLogger(__name__)

CHUNK_PHOTOS = 64
LAST_CHUNK_PHOTOS = 8
IDLE_SECONDS = 20.0


def photo_chunks(photos: list[str]) -> list[list[str]]:
    """A job's photos in chunks of `CHUNK_PHOTOS`, ending in chunks of `LAST_CHUNK_PHOTOS`
    (`worker.chunk_list.chunked`)."""
    return list(chunked(photos, CHUNK_PHOTOS, LAST_CHUNK_PHOTOS))


def stages_of(kind: str, request: dict[str, Any]) -> tuple[str, list[dict[str, Any]], int]:
    """(photo folder, the photo stages a `kind` job runs, their batch size), from its request:
    one stage for retrain, one per recipe for evaluate."""
    from flowers.models.training.evaluate import EvaluateRequest
    from flowers.models.training.retrain import RetrainRequest

    if kind == "retrain":
        trainings = [RetrainRequest.from_dict(request)]
    else:
        evaluation = EvaluateRequest.from_dict(request)
        trainings = [dataclasses.replace(evaluation.training, recipe=recipe)
                     for recipe in evaluation.recipes]
    stages = [{"recipe": t.recipe, "fine_tune": t.fine_tune.to_dict(),
               "architecture": t.architecture, "weights": t.weights} for t in trainings]
    return trainings[0].photo_dir, stages, trainings[0].bottleneck_batch_size


class StageProcess:
    """This pool process's photo-stage process: started on demand, stopped when idle."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.replies: IO[bytes] | None = None
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.starts = 0
        threading.Thread(target=self._stop_when_idle, name="flowers-stage-idle",
                         daemon=True).start()

    def run(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """The stage process's reply to one chunk: counts and skipped photos, or an error."""
        with self.lock:
            self.last_used = time.monotonic()
            if self.process is None or self.process.poll() is not None:
                self._start()
            assert self.process is not None and self.process.stdin and self.replies
            try:
                self.process.stdin.write(json.dumps(chunk).encode() + b"\n")
                self.process.stdin.flush()
                line = self.replies.readline()
            except OSError:
                line = b""
            self.last_used = time.monotonic()
            if not line:
                code = self.process.wait()
                self.process = None
                raise FlowersError(f"the photo-stage process exited with code {code} (out of "
                                   "memory?); see the worker's log")
            return dict(json.loads(line))

    def _start(self) -> None:
        from flowers.worker.train_process import PARENT_ENV

        read_end, write_end = os.pipe()
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid()), "FLOWERS_STAGE_REPLIES":
                                  str(write_end)})
        self.process = subprocess.Popen([sys.executable, "-m", "flowers.worker.photo_stage"],
                                        stdin=subprocess.PIPE, env=env, pass_fds=[write_end])
        os.close(write_end)
        self.replies = os.fdopen(read_end, "rb")
        self.starts += 1

    def stop(self) -> None:
        """Ends the stage process, if one runs (it exits at the end of its input)."""
        with self.lock:
            self._stop()

    def _stop(self) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait()
            self.process = None
        if self.replies is not None:
            self.replies.close()
            self.replies = None

    def _stop_when_idle(self) -> None:
        while True:
            time.sleep(5)
            with self.lock:
                if self.process is not None and time.monotonic() - self.last_used > IDLE_SECONDS:
                    log.info("stopping the idle photo-stage process %d", self.process.pid)
                    self._stop()


def run_chunk(chunk: dict[str, Any], stages: dict[str, Any], settings: Settings
              ) -> dict[str, Any]:
    """In the stage process: fills the cache for one chunk's photos, stage by stage. The reply
    counts what was cached and computed, and the milliseconds spent in all (`busy_ms`), on
    importing TensorFlow, building and converting networks (`setup_ms`), and of CPU time over
    all its threads (`cpu_ms`: on more than one thread, decoding overlaps the network)."""
    from flowers.models import networks
    from flowers.models.training.recipe import FineTuneRecipe
    from flowers.models.training.trainer import PhotoStage
    from flowers.worker.confine import photo_guard

    started, cpu = time.perf_counter(), time.process_time()
    paths = [Path(path) for path in chunk["paths"]]
    reply: dict[str, Any] = {"photos": len(paths), "skipped": [], "cache_hits": 0,
                             "computed": 0, "stages": []}
    setup = 0.0
    for n, params in enumerate(chunk["stages"]):
        key = json.dumps(params, sort_keys=True)
        before = stages[key].setup_seconds if key in stages else 0.0
        if key not in stages:
            stages[key] = PhotoStage(
                params["recipe"], FineTuneRecipe.from_dict(params["fine_tune"]),
                networks.get_spec(params["architecture"]), params["weights"],
                settings.weights_dir, settings.home, int(params["passes"]))
        found = stages[key].run(paths, int(chunk["batch_size"]),
                                guard=photo_guard(settings.allowed_roots))
        setup += stages[key].setup_seconds - before
        if n == 0:
            reply["skipped"] = [[str(path), reason] for path, reason in found.skipped]
        reply["cache_hits"] += found.cache_hits
        reply["computed"] += found.computed
        reply["stages"].append([found.cache_hits, found.computed])
    reply["busy_ms"] = round((time.perf_counter() - started) * 1000)
    reply["setup_ms"] = round(setup * 1000)
    reply["cpu_ms"] = round((time.process_time() - cpu) * 1000)
    return reply


def stage_counts(reply: dict[str, Any]) -> dict[str, int]:
    """A chunk's reply as fields of the job's record, summed over its chunks: cache counts per
    stage, and the milliseconds its processes spent, in all and on set-up."""
    counts = {f"stage_{name}": int(reply[name]) for name in ("busy_ms", "setup_ms", "cpu_ms")}
    for n, (hits, computed) in enumerate(reply["stages"]):
        counts[f"stage{n}_cache_hits"] = int(hits)
        counts[f"stage{n}_computed"] = int(computed)
    return counts


def stage_summary(record: dict[str, Any], n: int) -> dict[str, Any]:
    """What stage `n` of a job did over the cluster, from its record: cache counts, the seconds
    from the job's start to now (its last chunk done), and the seconds its processes spent,
    summed over them: in all, and on set-up (importing TensorFlow, building and converting the
    network), which each process pays once and the photos do not share out."""
    return {"cache_hits": int(record.get(f"stage{n}_cache_hits", 0)),
            "computed": int(record.get(f"stage{n}_computed", 0)),
            "seconds": round(time.time() - float(record.get("started", time.time())), 3),
            "processes": sum(1 for name in record if name.startswith("chunks:")),
            "process_seconds": int(record.get("stage_busy_ms", 0)) / 1000,
            "setup_seconds": int(record.get("stage_setup_ms", 0)) / 1000,
            "cpu_seconds": int(record.get("stage_cpu_ms", 0)) / 1000}


def main() -> None:
    from flowers.models.runtime.tensorflow_setup import set_network_threads
    from flowers.worker.train_process import die_with_parent

    die_with_parent()
    replies = os.fdopen(int(os.environ["FLOWERS_STAGE_REPLIES"]), "w")
    os.dup2(2, 1)  # whatever a library prints goes to the log, not into the replies
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/stage-"
                        f"{os.getpid()}] %(name)s: %(message)s")
    settings = Settings.from_env()
    # TensorFlow is imported only if a network must be built: not for a warm cache, nor for
    # a cached LiteRT conversion (its import is then counted in the chunk's set-up).
    set_network_threads(settings.threads_per_process())
    stages: dict[str, Any] = {}
    for line in sys.stdin:
        chunk = json.loads(line)
        try:
            reply = run_chunk(chunk, stages, settings)
        except FlowersError as exc:
            reply = {"error": str(exc), "exit_code": exc.exit_code}
        except Exception as exc:
            log.exception("chunk %s of job %s failed", chunk.get("index"), chunk.get("job_id"))
            reply = {"error": f"{type(exc).__name__}: {exc}", "exit_code": 1}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
