"""Dead workers: time from a whole worker's SIGKILL to its job's end, at the default settings
(FLOWERS_WORKER_TIMEOUT 30 s, FLOWERS_VISIBILITY_TIMEOUT 3600 s), over several kills.

A real redis-server and real `flowers worker --concurrency 1` processes (bench/label_cluster).

- label, fresh: `flowers label-dir PHOTOS --no-wait` with one worker; once it has written
  `--chunks-before` chunks and its heartbeat record lists the chunk it holds, its whole
  process group is SIGKILLed (what an out-of-memory kill of a container does) and a fresh worker
  is started at once; the issue's case. The fresh worker must watch the dead one's record go
  without a beat for the timeout before it puts the chunk back.
- label, survivor: the same with a second worker running from the start, which watches the
  first all along.
- train: `flowers train` of a small network on the same photos (its cache warmed by one run
  before, so the training itself is short) with two workers; the one whose record holds
  `flowers.fit` is killed once the training process runs. Kill-to-end less the second
  training's own time is what the death cost.

A kill that leaves no message in kombu's `unacked` hash (the chunk ended in the instant before
the kill) is reported and not counted. Every label job is checked for exactly one row per photo.

    .venv/bin/python bench/dead_workers.py ../shared/data/flower_photos \\
        --weights-dir ../shared/weights/keras --kills 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import label_cluster as lc

from flowers.worker.liveness import UNACKED, read_workers

NETWORK = "mobilenet_0.25_224"


def wait(condition: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def state(cluster: lc.Cluster, job_id: str) -> str:
    return cluster.job(job_id).get("state", "")


def holds(cluster: lc.Cluster, pid: int, task_name: str) -> bool:
    return any(record.pid == pid and any(task["name"] == task_name for task in record.tasks)
               for record in read_workers(cluster.client))


def kill_group(process: Any) -> float:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return time.monotonic()


def label_round(cluster: lc.Cluster, photos: Path, bundle: Path, work: Path, survivor: bool,
                chunks_before: int, photo_count: int) -> dict[str, Any]:
    output = work / f"out-{time.monotonic_ns()}.csv"
    doomed = cluster.start_worker(1)
    if survivor:
        cluster.start_worker(1)
    queued = lc.run_flowers(["label-dir", str(photos), "--model", str(bundle), "--output",
                             str(output), "--no-wait"], cluster.env, work)
    job_id = cluster.job_id(queued)
    parts = output.with_name(output.name + ".parts")
    wait(lambda: len(list(parts.glob("part-*.csv"))) >= chunks_before
         and holds(cluster, doomed.pid, "flowers.label_chunk"), 300, "chunks in hand")
    killed = kill_group(doomed)
    cluster.workers.remove(doomed)
    held = cluster.client.hlen(UNACKED)
    if not survivor:
        cluster.start_worker(1)
    wait(lambda: state(cluster, job_id) in ("succeeded", "failed"), 3700, "the job's end", 0.2)
    took = time.monotonic() - killed
    record = cluster.job(job_id)
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    paths = [row[0] for row in rows]
    cluster.stop_workers()
    return {"scenario": "label, survivor" if survivor else "label, fresh",
            "held_at_kill": held, "seconds_after_kill": round(took, 1),
            "state": record["state"], "rows": len(rows), "unique": len(set(paths)),
            "complete": record["state"] == "succeeded" and len(rows) == len(set(paths))
            == photo_count}


def train_round(cluster: lc.Cluster, photos: Path, work: Path, epochs: int,
                kill: bool) -> dict[str, Any]:
    doomed = cluster.start_worker(1)
    cluster.start_worker(1)
    queued = lc.run_flowers(["train", str(photos), "--output", str(work / "bundle"),
                             "--architecture", NETWORK, "--views", "1", "--epochs", str(epochs),
                             "--no-wait"], cluster.env, work)
    job_id = cluster.job_id(queued)
    result: dict[str, Any] = {"scenario": "train" if kill else "train (warm-up, no kill)"}
    if kill:
        wait(lambda: bool(cluster.job(job_id).get("train_pid")), 600, "the training process")
        wait(lambda: any(holds(cluster, process.pid, "flowers.fit")
                         for process in cluster.workers), 30, "a worker listed training")
        (doomed,) = [process for process in cluster.workers
                     if holds(cluster, process.pid, "flowers.fit")]
        killed = kill_group(doomed)
        cluster.workers.remove(doomed)
        result["held_at_kill"] = cluster.client.hlen(UNACKED)
    else:
        killed = time.monotonic()
    wait(lambda: state(cluster, job_id) in ("succeeded", "failed"), 3700, "the job's end", 0.2)
    took = time.monotonic() - killed
    record = cluster.job(job_id)
    summary = json.loads(record.get("result") or "{}")
    training = float((summary.get("seconds") or {}).get("total") or 0)
    cluster.stop_workers()
    result.update(state=record["state"], seconds_after_kill=round(took, 1),
                  training_seconds=round(training, 1),
                  cost_seconds=round(took - training, 1), complete=record["state"] == "succeeded")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--kills", type=int, default=3, help="kills per scenario")
    parser.add_argument("--chunks-before", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--scenarios", default="fresh,survivor,train")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    photos = args.photos.resolve()
    photo_count = len(lc.real_photos(photos))
    work = args.work or Path(tempfile.mkdtemp(prefix="flowers-dead-workers-"))
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {photo_count} photos in {photos}; "
          f"default FLOWERS_WORKER_TIMEOUT and FLOWERS_VISIBILITY_TIMEOUT; work in {work}")
    bundle = lc.make_bundle(NETWORK, "imagenet", photos, work / "bundle-small", work,
                            args.weights_dir)
    scenarios = args.scenarios.split(",")
    results: list[dict[str, Any]] = []
    with lc.cluster(work, args.weights_dir) as cluster:
        for scenario in scenarios:
            if scenario == "train":
                print(train_round(cluster, photos, work, args.epochs, kill=False), flush=True)
            for kill in range(args.kills):
                if scenario == "train":
                    result = train_round(cluster, photos, work, args.epochs, kill=True)
                else:
                    result = label_round(cluster, photos, bundle, work, scenario == "survivor",
                                         args.chunks_before, photo_count)
                results.append(result)
                print(f"{scenario} kill {kill + 1}: {result}", flush=True)
    print()
    print("scenario          counted kills  kill to end (s): each; median  all complete")
    for scenario in ("label, fresh", "label, survivor", "train"):
        rows = [r for r in results if r["scenario"] == scenario and r.get("held_at_kill")]
        if not rows:
            continue
        key = "cost_seconds" if scenario == "train" else "seconds_after_kill"
        values = [r[key] for r in rows]
        print(f"{scenario:17} {len(rows):13}  {', '.join(f'{v:.1f}' for v in values)}; "
              f"{statistics.median(values):.1f}  {all(r['complete'] for r in rows)}")
    uncounted = [r for r in results if not r.get("held_at_kill")]
    if uncounted:
        print(f"{len(uncounted)} kills held nothing at the kill and are not counted")
    print("(train: kill to end less the second training's own seconds)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
