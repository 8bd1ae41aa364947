"""Issue 30's figures: how far the default recipe's answers can be trusted, and what the
`unknown` check costs labelling.

    python bench/trust.py PHOTOS --stray STRAY --weights-dir WEIGHTS [--folds 5] [--repeats 3]

1. Cross-validation (`flowers evaluate PHOTOS --recipe fine-tune --stray STRAY`): per fold the
   temperature, acceptance and unknown thresholds are fitted on the fold's held-out training
   photos as `flowers train` fits them; the test folds give ECE before and after, the
   precision and coverage of `accept`, the share of photos of the classes decided `unknown`,
   and how many of the STRAY photos (none of the classes; they fit nothing) each fold calls
   `unknown`.
2. One default bundle trained on all of PHOTOS (`flowers train`), and STRAY labelled with it:
   how many come out `unknown`.
3. Throughput: `flowers label-dir PHOTOS` with that bundle, against a copy of it whose manifest
   has no `unknown` section (same model, same calibration; the features output is read but
   nobody compares it), alternating, `--repeats` times each, one warm worker with a process per
   core: photos/s of each and their ratio, from the worker's busy time as the job record gives
   it (created to finished) and the command's wall time.

Run it alone: two cores, nothing else busy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from label_cluster import cluster, run_flowers  # bench/ is on sys.path


def evaluate(photos: Path, stray: Path, folds: int, env: dict[str, str], work: Path) -> None:
    output = work / "cv.json"
    done = run_flowers(["evaluate", str(photos), "--folds", str(folds), "--recipe", "fine-tune",
                        "--stray", str(stray), "--output", str(output)], env, work)
    if done.returncode:
        raise SystemExit(f"evaluate failed: {done.stderr[-2000:]}")
    print(done.stdout.strip())
    figures = json.loads(output.read_text())["recipes"]["fine-tune"]
    print(f"\nper fold ({done.wall:.0f} s):")
    print(f"{'fold':<5}{'held out':>9}{'accuracy':>9}{'T':>7}{'ECE before':>11}{'after':>7}"
          f"{'accept at':>10}{'precision':>10}{'coverage':>9}{'unknown':>8}{'stray':>7}")
    for d in figures["fold_details"]:
        precision = "-" if d["accept_precision"] is None else f"{d['accept_precision']:.3f}"
        threshold = "none" if d["accept_threshold"] is None else f"{d['accept_threshold']:.3f}"
        print(f"{d['fold']:<5}{d['held_out']:>9}{d['accuracy']:>9.3f}{d['temperature']:>7.3f}"
              f"{d['ece_before']:>11.3f}{d['ece_after']:>7.3f}{threshold:>10}"
              f"{precision:>10}{d['accept_coverage']:>9.3f}{d['unknown_rate']:>8.3f}"
              f"{d['stray_unknown']:>7}")
    print(f"figures: {output}")


def train(photos: Path, env: dict[str, str], work: Path) -> Path:
    bundle = work / "bundle"
    done = run_flowers(["train", str(photos), "--output", str(bundle)], env, work)
    if done.returncode:
        raise SystemExit(f"train failed: {done.stderr[-2000:]}")
    print(f"\ndefault bundle on all {photos} ({done.wall:.0f} s):")
    print("\n".join(line for line in done.stdout.splitlines() if line.startswith(
        ("test accuracy", "confidences"))))
    return bundle


def without_unknown(bundle: Path, work: Path) -> Path:
    """A copy of `bundle` that makes the same decisions but for `unknown`."""
    copy = work / "bundle-without-unknown"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["decisions"]["unknown"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def label(photos: Path, bundle: Path, env: dict[str, str], work: Path, name: str
          ) -> tuple[float, dict[str, int]]:
    output = work / f"{name}.csv"
    output.unlink(missing_ok=True)
    (work / f"{name}.csv.job.json").unlink(missing_ok=True)
    done = run_flowers(["label-dir", str(photos), "--model", str(bundle), "--output",
                        str(output)], env, work)
    if done.returncode:
        raise SystemExit(f"label-dir failed: {done.stderr[-2000:]}")
    record = json.loads((work / f"{name}.csv.job.json").read_text())
    return record["rows"] / done.wall, record.get("decided", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--stray", type=Path, required=True)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cv", action="store_true")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="Label with this default bundle instead of training one.")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="flowers-trust-"))
    work.mkdir(parents=True, exist_ok=True)
    photos, stray = args.photos.resolve(), args.stray.resolve()
    print(f"{os.cpu_count()} cores; work in {work}")
    with cluster(work, args.weights_dir.resolve()) as running:
        env = {k: v for k, v in running.env.items() if k != "FLOWERS_BROKER_URL"}
        if not args.skip_cv:
            evaluate(photos, stray, args.folds, env, work)
        bundle = args.bundle.resolve() if args.bundle else train(photos, env, work)
        running.start_worker(os.cpu_count() or 1)
        rate, decided = label(stray, bundle, running.env, work, "stray")
        print(f"\n{stray}: {decided.get('unknown', 0)} of {sum(decided.values())} unknown "
              f"({decided})")
        plain = without_unknown(bundle, work)
        label(photos, bundle, running.env, work, "warm-up")
        rates: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(args.repeats):
            for name, model in (("with", bundle), ("without", plain)):
                rate, decided = label(photos, model, running.env, work, name)
                rates[name].append(rate)
                print(f"label-dir {name} the unknown check: {rate:.1f} photos/s {decided}")
        with_rate, without_rate = (statistics.median(rates[n]) for n in ("with", "without"))
        print(f"\nmedian photos/s: with {with_rate:.1f}, without {without_rate:.1f}; "
              f"ratio {with_rate / without_rate:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
