"""A labelling-only install (`pip install flowers`, no `train` extra): every command either
works on LiteRT or says in one line which extra it needs, before any work; none shows an
"unexpected" error. TensorFlow, Keras and matplotlib are made unimportable in each command's
processes (the local worker's too) by a sitecustomize on PYTHONPATH."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowers.models.bundle import TFLITE_FILE, read_manifest
from flowers.models.tflite_metadata import read_metadata
from tests.conftest import flowers_env, run_flowers

pytestmark = pytest.mark.model

BLOCKED = ("tensorflow", "keras", "matplotlib")
EXTRA = "pip install 'flowers[train]'"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A FLOWERS_* environment without a broker, where TensorFlow cannot be imported."""
    blocker = tmp_path / "no-tensorflow"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED))
    environment = flowers_env(tmp_path / "home", None, None)
    environment["PYTHONPATH"] = str(blocker)
    return environment


def test_the_blocker_blocks(env: dict[str, str]) -> None:
    code = "import importlib.util; print(importlib.util.find_spec('tensorflow')); import keras"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "None" and "ModuleNotFoundError" in result.stderr


def one_line_needing_the_extra(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and EXTRA in lines[0], lines[0]
    assert "unexpected" not in lines[0] and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_commands_that_need_tensorflow_say_so_in_one_line(
    env: dict[str, str], trained_bundle: tuple[Path, Any], photo_subset: Path, tmp_path: Path,
) -> None:
    bundle, _ = trained_bundle
    graph = tmp_path / "retrained_graph.pb"
    graph.write_bytes(b"\n\x05input")
    labels = tmp_path / "retrained_labels.txt"
    labels.write_text("daisy\nroses\n")
    bare = tmp_path / "bundle-without-tflite"
    shutil.copytree(bundle, bare)
    (bare / TFLITE_FILE).unlink()
    photo = next((photo_subset / "daisy").iterdir())
    cases = [
        (["export", str(bundle), "--format", "saved_model", "-o", str(tmp_path / "out")],
         ["--format saved_model"]),
        (["export", str(bundle), "--quantize", "float16", "-o", str(tmp_path / "out")],
         ["--quantize float16"]),
        (["export", str(bundle), "--in-place"], ["--in-place"]),
        (["export", str(bare), "-o", str(tmp_path / "out")], [f"{TFLITE_FILE} is missing"]),
        (["train", str(photo_subset), "-o", str(tmp_path / "out")], ["flowers train"]),
        (["evaluate", str(photo_subset), "-o", str(tmp_path / "out.json")],
         ["flowers evaluate"]),
        (["import-poets", str(graph), "--labels", str(labels), "-o", str(tmp_path / "out")],
         ["import-poets"]),
        (["label", str(photo), "-m", str(bare)], [TFLITE_FILE]),
        (["label-dir", str(photo_subset), "-m", str(bare), "-o", str(tmp_path / "out.csv")],
         [TFLITE_FILE]),
    ]
    for args, words in cases:
        one_line_needing_the_extra(run_flowers(*args, env=env), *words)
    assert not any((tmp_path / name).exists() for name in ("out", "out.json", "out.csv"))
    assert not (bare / TFLITE_FILE).exists()


def test_labelling_and_the_tflite_export_work_without_tensorflow(
    env: dict[str, str], trained_bundle: tuple[Path, Any], photo_subset: Path, tmp_path: Path,
) -> None:
    bundle, _ = trained_bundle
    manifest = read_manifest(bundle)
    photo = next((photo_subset / "daisy").iterdir())
    exported = run_flowers("export", str(bundle), "-o", str(tmp_path / "phone"), env=env)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "phone" / TFLITE_FILE).read_bytes() == (bundle / TFLITE_FILE).read_bytes()
    packed = read_metadata((tmp_path / "phone" / TFLITE_FILE).read_bytes())
    assert packed is not None and packed.version == manifest["bundle_id"]

    labelled = run_flowers("label", str(photo), "-m", str(bundle), env=env)
    assert labelled.returncode == 0, labelled.stderr
    assert "decision: " in labelled.stdout
    on_keras = run_flowers("label", str(photo), "-m", str(bundle), "--runtime", "keras", env=env)
    assert on_keras.returncode == 0, on_keras.stderr
    assert "TensorFlow is not installed here" in on_keras.stderr
    assert on_keras.stdout == labelled.stdout
    listed = run_flowers("architectures", env=env)
    assert listed.returncode == 0, listed.stderr
