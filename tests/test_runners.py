"""LiteRT and Keras runners on a real bundle and real photos; the choice between them; export.

The LiteRT rows must be the Keras rows (probabilities within 1e-5, the same labels), in-process
and through `label-dir` with real workers; a labelling pool process must never map TensorFlow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowers.models.bundle import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    TFLITE_FILE,
    load_bundle,
    read_manifest,
)
from flowers.models.decode import load_image
from flowers.models.errors import BundleError, UsageError
from flowers.models.runtime.runners import (
    KerasRunner,
    LiteRTRunner,
    check_runtime,
    choose_runtime,
    pad_to,
)
from flowers.worker.model_cache import ModelCache
from tests.conftest import WorkerFactory, flowers_env, job_ids, run_flowers
from tests.label_data import read_csv
from tests.test_bundle import tampered

pytestmark = [pytest.mark.model, pytest.mark.long(minutes=2)]

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def pixels(flower_photos: Path) -> np.ndarray:
    """Real photos of every class, decoded for the small network (224 px)."""
    paths = [photo for name in ("daisy", "dandelion", "roses", "sunflowers", "tulips")
             for photo in sorted((flower_photos / name).iterdir())[-4:]]
    return np.stack([load_image(path, 224) for path in paths])


def old_format_copy(bundle: Path, target: Path) -> Path:
    """`bundle` as a format-1 bundle: no model.tflite, no "models" in the manifest."""
    shutil.copytree(bundle, target)
    (target / TFLITE_FILE).unlink()
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["format_version"] = 1
    del manifest["models"]
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    return target


def test_litert_gives_the_keras_probabilities(
    trained_bundle: tuple[Path, Any], pixels: np.ndarray
) -> None:
    bundle, _ = trained_bundle
    keras_out = KerasRunner(load_bundle(bundle).model, 16)(pixels)
    litert_out = LiteRTRunner(bundle / TFLITE_FILE)(pixels)
    assert litert_out.shape == keras_out.shape == (len(pixels), 3)
    assert np.abs(litert_out - keras_out).max() < TOLERANCE
    assert (litert_out.argmax(1) == keras_out.argmax(1)).all()
    assert not np.allclose(litert_out[0], litert_out[-1], atol=1e-3), "photos must differ"


def test_runners_slice_long_batches_and_pad_short_ones(
    trained_bundle: tuple[Path, Any], pixels: np.ndarray
) -> None:
    bundle, _ = trained_bundle
    one_at_a_time = LiteRTRunner(bundle / TFLITE_FILE, batch_size=1)(pixels)
    fours = LiteRTRunner(bundle / TFLITE_FILE, batch_size=4)
    assert np.abs(fours(pixels[:6]) - one_at_a_time[:6]).max() < TOLERANCE  # 4 + 2 padded
    assert pad_to(pixels[:3], 4).shape[0] == 4 and not pad_to(pixels[:3], 4)[3].any()
    keras_runner = KerasRunner(load_bundle(bundle).model, 8)
    assert np.abs(keras_runner(pixels[:11]) - one_at_a_time[:11]).max() < TOLERANCE


def test_bundles_carry_the_fast_model_and_choose_litert(trained_bundle: tuple[Path, Any]) -> None:
    bundle, _ = trained_bundle
    manifest = read_manifest(bundle)
    assert manifest["format_version"] == FORMAT_VERSION == 3
    assert manifest["models"]["tflite"]["file"] == TFLITE_FILE
    assert choose_runtime(bundle, manifest, "litert").runtime == "litert"
    assert choose_runtime(bundle, manifest, "keras").runtime == "keras"
    with pytest.raises(UsageError, match="choose one of: litert, keras"):
        check_runtime("onnx")


def test_an_old_bundle_labels_on_keras_with_a_note_until_exported_in_place(
    trained_bundle: tuple[Path, Any], flower_photos: Path, tmp_path: Path
) -> None:
    bundle = old_format_copy(trained_bundle[0], tmp_path / "old")
    choice = choose_runtime(bundle, read_manifest(bundle), "litert")
    assert choice.runtime == "keras"
    hint = f"flowers export {bundle} --format tflite --in-place"
    assert choice.warning and hint in choice.warning
    photo = str(sorted((flower_photos / "roses").iterdir())[0])
    env = flowers_env(tmp_path / "home", None, None)
    before = run_flowers("label", photo, "--model", str(bundle), env=env)
    assert before.returncode == 0, before.stderr
    assert "note:" in before.stderr and "--in-place" in before.stderr

    added = run_flowers("export", str(bundle), "--in-place", env=env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"added {bundle.resolve() / TFLITE_FILE}", added.stdout
    manifest = read_manifest(bundle)
    assert manifest["format_version"] == FORMAT_VERSION and "tflite" in manifest["models"]
    assert choose_runtime(bundle, manifest, "litert").runtime == "litert"
    after = run_flowers("label", photo, "--model", str(bundle), env=env)
    assert after.returncode == 0 and "note:" not in after.stderr, after.stderr
    # The same top labels, confidences within the printed 6 decimals' rounding; the same
    # decision.
    decided = before.stdout.splitlines()[-1]
    assert decided == after.stdout.splitlines()[-1] and decided.startswith("  decision: ")
    first, second = before.stdout.split()[:-2], after.stdout.split()[:-2]
    assert first[1::2] == second[1::2]
    assert all(abs(float(a) - float(b)) <= 2e-6 for a, b in zip(first[2::2], second[2::2],
                                                                 strict=True))


def test_a_bundle_with_neither_model_is_refused(
    trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    bundle = old_format_copy(trained_bundle[0], tmp_path / "empty")
    (bundle / "model.keras").unlink()
    with pytest.raises(BundleError, match=r"neither model\.tflite nor a Keras model"):
        choose_runtime(bundle, read_manifest(bundle), "litert")


MISFITS: dict[str, tuple[dict[str, Any], list[str] | None, str]] = {
    # A manifest that names a class the model has no output for (labels.txt agrees with it).
    "one class too many": ({"class_names": ["daisy", "roses", "tulips", "sunflowers"]},
                           ["daisy", "roses", "tulips", "sunflowers"],
                           "gives 3 scores per photo but manifest.json's class_names has 4"),
    "one class too few": ({"class_names": ["daisy", "roses"]}, ["daisy", "roses"],
                          "gives 3 scores per photo but manifest.json's class_names has 2"),
    "input size": ({"input_size": [128, 128]}, None,
                   "takes photos of [224, 224, 3] but manifest.json's input_size is [128, 128]"),
}


@pytest.mark.parametrize("runtime", ["litert", "keras"])
@pytest.mark.parametrize("case", sorted(MISFITS))
def test_a_model_that_does_not_fit_its_manifest_is_refused_on_both_runtimes(
    trained_bundle: tuple[Path, Any], tmp_path: Path, case: str, runtime: str
) -> None:
    """In a worker's model cache, where a labelling chunk opens its bundle."""
    fields, labels, words = MISFITS[case]
    bundle = tampered(trained_bundle[0], tmp_path / "bundle", labels=labels, **fields)
    read_manifest(bundle)  # the manifest alone is sound
    model_file = "model.tflite" if runtime == "litert" else "model.keras"
    with pytest.raises(BundleError) as caught:
        ModelCache(runtime).get(bundle)
    assert str(caught.value).startswith(f"bundle {bundle.resolve()}: {model_file} {words}")
    assert str(caught.value).endswith("retrain or re-export the bundle")


@pytest.mark.parametrize("runtime", ["litert", "keras"])
def test_manifest_and_labels_are_checked_alike_on_both_runtimes(
    trained_bundle: tuple[Path, Any], tmp_path: Path, runtime: str
) -> None:
    """labels.txt disagreeing with class_names, or class_names a string: refused by the worker's
    model cache whichever runtime it runs (LiteRT once ignored labels.txt)."""
    source = trained_bundle[0]
    disagreeing = tampered(source, tmp_path / "labels", labels=["daisy", "tulips", "roses"])
    with pytest.raises(BundleError, match=r"labels\.txt .* does not match manifest\.json's"):
        ModelCache(runtime).get(disagreeing)
    letters = tampered(source, tmp_path / "letters", labels=list("abcde"), class_names="abcde")
    with pytest.raises(BundleError, match=r"manifest\.json's class_names is \"abcde\""):
        ModelCache(runtime).get(letters)
    assert ModelCache(runtime).get(source).class_names == ["daisy", "roses", "tulips"]


def test_a_bundle_replaced_while_it_loads_is_loaded_again_whole(
    trained_bundle: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retraining in place that swaps the folder after the model was read and before the
    decisions were: the cache loads the new bundle whole, never one's model with the other's
    class names and thresholds."""
    from flowers.worker import model_cache
    from tests.test_label_resume import another_bundle

    folder = tmp_path / "bundle"
    shutil.copytree(trained_bundle[0], folder)
    newer = another_bundle(trained_bundle[0], tmp_path / "newer")
    real_open = model_cache.open_runner
    opened: list[str] = []

    def open_then_swap(path: Path, manifest: dict[str, Any], *args: Any) -> Any:
        runner = real_open(path, manifest, *args)
        opened.append(manifest["bundle_id"])
        if len(opened) == 1:  # as `flowers train --output` replaces a bundle
            folder.rename(tmp_path / "old")
            newer.rename(folder)
        return runner

    monkeypatch.setattr(model_cache, "open_runner", open_then_swap)
    cache = ModelCache("litert")
    loaded = cache.get(folder)
    assert opened == [read_manifest(tmp_path / "old")["bundle_id"], "0" * 32]
    assert loaded.bundle_id == "0" * 32 and cache.loads == 1


@pytest.mark.parametrize("runtime", ["litert", "keras"])
def test_flowers_label_shows_a_misfit_in_one_line(
    trained_bundle: tuple[Path, Any], flower_photos: Path, tmp_path: Path, runtime: str
) -> None:
    photo = str(sorted((flower_photos / "roses").iterdir())[0])
    env = flowers_env(tmp_path / "home", None, None)
    source = trained_bundle[0]
    for name, fields, words in (
        ("letters", {"class_names": "abcde"}, "manifest.json's class_names is \"abcde\""),
        ("size", {"input_size": [160, 160]}, "input_size is [160, 160]"),
    ):
        bundle = tampered(source, tmp_path / name, **fields)
        result = run_flowers("label", photo, "--model", str(bundle), "--runtime", runtime,
                             env=env)
        assert result.returncode == 1 and result.stdout == "", result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert words in errors[0] and "retrain or re-export the bundle" in errors[0]


def tensorflow_mapped(pid: int) -> bool:
    """Whether process `pid` has TensorFlow's shared libraries in its memory."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtensorflow" in maps or "_pywrap_tensorflow" in maps


@pytest.mark.queue
def test_label_dir_rows_on_litert_equal_keras_rows_and_no_tensorflow_is_loaded(
    redis_url: str, start_workers: WorkerFactory, photo_subset: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    bundle, _ = trained_bundle
    outputs = {}
    for runtime in ("litert", "keras"):
        worker = start_workers(1, FLOWERS_RUNTIME=runtime, FLOWERS_QUEUE=runtime)
        env = {**flowers_env(flowers_home, redis_url, weights_dir), "FLOWERS_QUEUE": runtime}
        outputs[runtime] = tmp_path / f"{runtime}.csv"
        result = run_flowers("label-dir", str(photo_subset), "--model", str(bundle),
                             "--output", str(outputs[runtime]), "--chunk-size", "16", env=env)
        assert result.returncode == 0, result.stderr
        (pool_pid,) = worker.pool_pids()
        assert tensorflow_mapped(pool_pid) == (runtime == "keras")
        assert f"on {runtime}" in worker.log()
    litert_rows, keras_rows = (read_csv(outputs[name]) for name in ("litert", "keras"))
    assert len(litert_rows) == len(keras_rows) == 1 + 76
    for fast, reference in zip(litert_rows[1:], keras_rows[1:], strict=True):
        assert fast[0] == reference[0] and fast[-1] == reference[-1]
        assert fast[1:-1:2] == reference[1:-1:2], fast[0]  # the same labels, in order
        for a, b in zip(fast[2:-1:2], reference[2:-1:2], strict=True):
            assert (a == b == "") or abs(float(a) - float(b)) <= TOLERANCE + 1e-6


@pytest.mark.queue
def test_label_dir_refuses_a_bad_manifest_before_any_work_and_a_misfit_in_the_worker(
    redis_url: str, start_workers: WorkerFactory, photo_subset: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, tmp_path: Path,
) -> None:
    env = flowers_env(flowers_home, redis_url, None)
    letters = tampered(trained_bundle[0], tmp_path / "letters", class_names="abcde")
    output = tmp_path / "letters.csv"
    refused = run_flowers("label-dir", str(photo_subset), "--model", str(letters), "--output",
                          str(output), env=env)  # no worker: refused before anything is sent
    assert refused.returncode == 1, refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert "manifest.json's class_names is \"abcde\"" in line
    assert not output.exists() and not job_ids(redis_url)
    names = json.loads((trained_bundle[0] / "manifest.json").read_text())["class_names"]
    swapped = tampered(trained_bundle[0], tmp_path / "swapped", labels=names[::-1])
    refused = run_flowers("label-dir", str(photo_subset), "--model", str(swapped), "--output",
                          str(output), env=env)  # labelled on LiteRT, which reads no labels.txt
    assert refused.returncode == 1, refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert "labels.txt" in line and "does not match manifest.json's class_names" in line, line
    assert not output.exists() and not job_ids(redis_url)

    start_workers(1)
    misfit = tampered(trained_bundle[0], tmp_path / "misfit", input_size=[128, 128])
    output = tmp_path / "misfit.csv"
    failed = run_flowers("label-dir", str(photo_subset), "--model", str(misfit), "--output",
                         str(output), env=env)
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    (line,) = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert "model.tflite takes photos of [224, 224, 3] but manifest.json's input_size is " \
           "[128, 128]" in line and "retrain or re-export the bundle" in line
    assert not output.exists()


@pytest.mark.queue
def test_training_runs_in_its_own_process_and_leaves_the_pool_process_without_tensorflow(
    redis_url: str, start_workers: WorkerFactory, photo_subset: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    worker = start_workers(1)
    (pool_pid,) = worker.pool_pids()
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "bundle"
    trained = run_flowers("train", str(photo_subset), "--output", str(output), "--architecture",
                          "mobilenet_0.25_224", env=env)
    assert trained.returncode == 0, trained.stderr
    assert (output / TFLITE_FILE).is_file()
    assert worker.pool_pids() == [pool_pid], "the pool process itself lives on"
    assert not tensorflow_mapped(pool_pid)
    labelled = run_flowers("label-dir", str(photo_subset), "--model", str(output), "--output",
                           str(tmp_path / "labels.csv"), env=env)
    assert labelled.returncode == 0, labelled.stderr
    assert not tensorflow_mapped(pool_pid)


def test_a_keras_runtime_asked_of_a_bundle_without_a_readable_keras_model_says_why(
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    """model.keras a link to a device: LiteRT runs it, and the note does not call the bundle
    imported."""
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    (bundle / "model.keras").unlink()
    (bundle / "model.keras").symlink_to("/dev/zero")
    choice = choose_runtime(bundle, read_manifest(bundle), "keras")
    assert choice.runtime == "litert"
    assert choice.warning == (f"{bundle} has no Keras model (its Keras model file is missing or "
                              "not a regular file): it runs on LiteRT"), choice.warning


def test_a_killed_trainings_temporary_folder_is_removed_by_the_next_training_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed outright cannot remove its training's temporary folder: the next
    training on the host removes the folders marked with this host and a pid that no longer
    runs, and nothing else (a live pid's, another host's, one with no mark, a link, another
    kind's)."""
    import os
    import socket
    import subprocess
    import sys

    from flowers.worker import train_process

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid, host = int(ended.stdout), socket.gethostname()

    def folder(name: str, mark: dict[str, Any] | None) -> Path:
        (tmp_path / name).mkdir()
        if mark is not None:
            (tmp_path / name / train_process.TEMPORARY_MARK).write_text(json.dumps(mark))
        return tmp_path / name

    abandoned = folder("flowers-retrain-a", {"host": host, "pid": dead_pid})
    kept = [folder("flowers-retrain-live", {"host": host, "pid": os.getpid()}),
            folder("flowers-retrain-elsewhere", {"host": host + "-other", "pid": dead_pid}),
            folder("flowers-retrain-unmarked", None),
            folder("flowers-retrain-garbled", {"pid": "x"}),
            folder("flowers-evaluate-a", {"host": host, "pid": dead_pid})]
    (tmp_path / "flowers-retrain-link").symlink_to(abandoned)
    assert train_process.sweep_abandoned("retrain") == [abandoned]
    assert not abandoned.exists() and all(path.is_dir() for path in kept)
    assert (tmp_path / "flowers-retrain-link").is_symlink()
