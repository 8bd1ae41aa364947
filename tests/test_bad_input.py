"""Bad and unusual photos through `flowers label-dir` with a real worker: one row each, the
job goes on, and photos that can be labelled are labelled as they look."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flowers.models.decode import MAX_PIXELS
from tests.conftest import WorkerFactory, copy_subset, flowers_env, run_flowers, wait_for

pytestmark = [pytest.mark.hardening, pytest.mark.queue]


def save(image: Image.Image, path: Path, fmt: str, **options: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **options)


@pytest.fixture
def odd_photos(flower_photos: Path, tmp_path: Path) -> Path:
    root = tmp_path / "odd"
    root.mkdir()
    source = sorted((flower_photos / "daisy").iterdir())[3]
    photo = Image.open(source).convert("RGB")
    shutil.copy(source, root / "original.jpg")
    (root / "zero.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(source.read_bytes()[:1200])
    (root / "text.jpg").write_text("I am a text file\n")
    rgba = photo.convert("RGBA")
    rgba.putalpha(200)
    save(rgba, root / "alpha.png", "PNG")
    frames = [photo.convert("P"), photo.rotate(10).convert("P")]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    save(photo.convert("P"), root / "palette.gif", "GIF")
    save(photo.convert("CMYK"), root / "cmyk.jpg", "JPEG")
    grey16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save(Image.fromarray(grey16), root / "grey16.png", "PNG")
    save(photo.convert("L"), root / "grey.jpg", "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: turn 90 degrees clockwise to view
    save(photo.transpose(Image.Transpose.ROTATE_90), root / "exif_rotated.jpg", "JPEG",
         exif=exif.tobytes(), quality=95)
    side = int(MAX_PIXELS**0.5) + 100
    save(Image.new("1", (side, side)), root / "bomb.png", "PNG")
    save(photo.resize((8660, 5774)), root / "fifty_megapixels.jpg", "JPEG", quality=80)
    (root / "loop.jpg").symlink_to("loop.jpg")
    os.symlink(source, os.path.join(os.fsencode(root), b"caf\xe9.jpg"))
    return root


# Each converted photo against the same picture saved as plain 8-bit RGB: (reference, format,
# largest allowed pixel difference in levels of 255). Lossless pairs must decode to the same
# pixels; a JPEG pair is compared with an RGB JPEG of the same quality, within a few levels.
LOSSLESS, JPEG_LEVELS = 0, 8


def plain_references(photo: Image.Image) -> dict[str, tuple[Image.Image, str, int]]:
    white = Image.new("RGBA", photo.size, (255, 255, 255, 255))
    rgba = photo.convert("RGBA")
    rgba.putalpha(200)
    grey = photo.convert("L").convert("RGB")
    return {
        "palette.gif": (photo.convert("P").convert("RGB"), "PNG", LOSSLESS),
        "animated.gif": (photo.convert("P").convert("RGB"), "PNG", LOSSLESS),  # first frame
        "alpha.png": (Image.alpha_composite(white, rgba).convert("RGB"), "PNG", LOSSLESS),
        "grey16.png": (grey, "PNG", LOSSLESS),
        "cmyk.jpg": (photo, "JPEG", JPEG_LEVELS),
        "grey.jpg": (grey, "JPEG", JPEG_LEVELS),
    }


def save_references(odd_photos: Path, target: Path) -> dict[str, tuple[Path, int]]:
    """The plain RGB references of `odd_photos`' converted photos, saved in `target`."""
    photo = Image.open(odd_photos / "original.jpg").convert("RGB")
    saved = {}
    for name, (image, fmt, tolerance) in plain_references(photo).items():
        path = target / f"{name}.plain.{fmt.lower()}"
        save(image, path, fmt)
        saved[name] = (path, tolerance)
    return saved


def test_converted_photos_decode_to_the_pixels_of_the_plain_rgb_picture(
    odd_photos: Path, tmp_path: Path
) -> None:
    from flowers.models.decode import load_image

    for name, (reference, tolerance) in save_references(odd_photos, tmp_path / "plain").items():
        converted = load_image(odd_photos / name, 224).astype(int)
        plain = load_image(reference, 224).astype(int)
        assert converted.shape == plain.shape == (224, 224, 3), name
        assert np.abs(converted - plain).max() <= tolerance, name


def read_rows(path: Path) -> dict[bytes, list[str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        rows = list(csv.reader(handle))
    return {os.fsencode(row[0]): row for row in rows[1:]}


def test_each_bad_photo_is_one_row_and_the_rest_are_labelled(
    redis_url: str, start_workers: WorkerFactory, odd_photos: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "odd.csv"
    doomed = odd_photos / "deleted_before_labelling.jpg"
    shutil.copy(odd_photos / "original.jpg", doomed)
    references = save_references(odd_photos, odd_photos / "plain")
    queued = run_flowers("label-dir", str(odd_photos), "--model", str(trained_bundle[0]),
                         "--output", str(output), "--no-wait", "--chunk-size", "4", env=env)
    assert queued.returncode == 0, queued.stderr
    doomed.unlink()  # enqueued, not yet labelled: no worker runs yet
    worker = start_workers(1)
    wait_for(output.exists, timeout=180, what="the output", interval=0.5)
    rows = read_rows(output)
    assert worker.poll() is None
    assert len(rows) == 16 + len(references)
    errors = {name.decode(errors="replace"): row[-1] for name, row in rows.items() if row[-1]}
    assert errors.keys() == {"zero.jpg", "truncated.jpg", "text.jpg", "bomb.png", "loop.jpg",
                             "deleted_before_labelling.jpg"}
    assert errors["zero.jpg"] == "empty file (0 bytes)"
    assert "decompression bomb" in errors["bomb.png"]
    assert "symbolic links" in errors["loop.jpg"]
    assert "not found" in errors["deleted_before_labelling.jpg"]
    for name, row in rows.items():
        assert (row[-1] == "") == (row[1] != ""), name

    original = rows[b"original.jpg"]
    assert rows[b"caf\xe9.jpg"][1:] == original[1:], "a non-UTF-8 name is labelled like any other"
    assert rows[b"exif_rotated.jpg"][1] == original[1], "EXIF rotation is applied"
    assert abs(float(rows[b"exif_rotated.jpg"][2]) - float(original[2])) < 0.05
    # Converted photos are labelled as their plain RGB pictures: the same labels, and for the
    # pairs with the same pixels, confidences equal to within the batch's rounding (2e-6).
    for converted, (reference, tolerance) in references.items():
        mine = rows[os.fsencode(converted)]
        plain = rows[os.fsencode(reference.relative_to(odd_photos).as_posix())]
        if tolerance == LOSSLESS:
            assert mine[1:-1:2] == plain[1:-1:2], converted
            for ours, theirs in zip(mine[2:-1:2], plain[2:-1:2], strict=True):
                assert abs(float(ours) - float(theirs)) <= 2e-6, converted


def test_broken_files_do_not_fail_training(
    flower_photos: Path, tmp_path: Path, weights_dir: Path
) -> None:
    from flowers.models.training.retrain import RetrainRequest, retrain
    from tests.conftest import SMALL_NETWORK, copy_subset

    root = copy_subset(flower_photos, tmp_path / "photos", ["daisy", "tulips"], 6)
    (root / "daisy" / "zero.jpg").write_bytes(b"")
    (root / "tulips" / "only_text.png").write_text("text")
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 40), (255, 0, 0, 128)).save(buffer, "PNG")
    (root / "tulips" / "alpha.PNG").write_bytes(buffer.getvalue())
    summary = retrain(RetrainRequest(photo_dir=str(root), output=str(tmp_path / "b"),
                                     architecture=SMALL_NETWORK, recipe="codelab",
                             how_many_training_steps=20),
                      tmp_path / "home", weights_dir)
    assert {item["path"] for item in summary["skipped"]} == {"daisy/zero.jpg",
                                                            "tulips/only_text.png"}
    assert summary["photos"] == 15


def test_output_inside_the_photo_folder_and_bad_numbers_are_usage_errors(
    odd_photos: Path, trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    env = flowers_env(tmp_path, None, None)
    inside = run_flowers("label-dir", str(odd_photos), "--model", str(trained_bundle[0]),
                         "--output", str(odd_photos / "out.csv"), env=env)
    assert inside.returncode == 2 and "inside the photo folder" in inside.stderr
    top0 = run_flowers("label-dir", str(odd_photos), "--model", str(trained_bundle[0]),
                       "--output", str(tmp_path / "o.csv"), "--top-k", "0", env=env)
    assert top0.returncode == 2 and "--top-k" in top0.stderr
    huge = run_flowers("label-dir", str(odd_photos), "--model", str(trained_bundle[0]),
                       "--output", str(tmp_path / "p"), "--partition-rows", "9" * 23, env=env)
    assert huge.returncode == 2 and "--partition-rows" in huge.stderr, huge.stderr
    assert not (tmp_path / ".p.parts").exists() and not (tmp_path / "p.parts").exists()
    for name in ("out.csv.parts", "out.csv.job.json"):
        beside = run_flowers("label-dir", str(odd_photos), "--model", str(trained_bundle[0]),
                             "--output", str(tmp_path / name), env=env)
        assert beside.returncode == 2 and "is what flowers writes beside the output out.csv" \
            in beside.stderr, beside.stderr
    no_home = run_flowers("label-dir", str(odd_photos), "--model", str(trained_bundle[0]),
                          "--output", str(tmp_path / "h.csv"),
                          env={**env, "FLOWERS_HOME": "/proc/1"})
    assert no_home.returncode == 2 and "cannot keep the local run's logs" in no_home.stderr
    assert not (tmp_path / "h.csv.parts").exists(), "nothing written before the refusal"
    unwritable = run_flowers("label-dir", str(odd_photos), "--model", str(trained_bundle[0]),
                             "--output", "/proc/flowers.csv", env=env)
    assert unwritable.returncode == 2 and "/proc/flowers.csv: cannot write" in unwritable.stderr
    not_bundle = run_flowers("label-dir", str(odd_photos), "--model", str(odd_photos),
                             "--output", str(tmp_path / "o.csv"), env=env)
    assert not_bundle.returncode == 2 and "not a model bundle" in not_bundle.stderr
    missing = run_flowers("label", str(next(odd_photos.iterdir())), "--model",
                          str(tmp_path / "gone"), env=env)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"Error: model bundle {tmp_path / 'gone'} does not exist: pass the --output of "
        "flowers train"], missing.stderr
    assert "Traceback" not in inside.stderr + top0.stderr + not_bundle.stderr + unwritable.stderr


@pytest.mark.parametrize("case", ["missing", "empty", "file", "no_classes", "one_class",
                                  "ten_thousand_empty"])
def test_bad_photo_folders_are_one_clear_line(case: str, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    if case == "file":
        root.write_bytes(b"x")
    elif case != "missing":
        root.mkdir()
    if case == "no_classes":
        (root / "loose.jpg").write_bytes(b"x")
    if case == "one_class":
        (root / "daisy").mkdir()
        (root / "daisy" / "a.jpg").write_bytes(b"x")
    if case == "ten_thousand_empty":
        for i in range(10_000):
            (root / f"class{i:05d}").mkdir()
    env = flowers_env(tmp_path, None, None)
    for command in (["train", str(root)],
                    ["label-dir", str(root), "--model", str(tmp_path), "--output",
                     str(tmp_path / "o.csv")]):
        result = run_flowers(*command, env=env)
        if command[0] == "label-dir" and case in ("no_classes", "one_class"):
            # Labelling needs no classes: these photos are fine, the bundle is not.
            assert result.returncode == 2 and "not a model bundle" in result.stderr
            continue
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and str(root) in lines[0]


def test_a_class_with_one_photo_trains_with_a_warning(
    flower_photos: Path, tmp_path: Path, weights_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flowers.models.training.retrain import RetrainRequest, retrain
    from tests.conftest import SMALL_NETWORK, copy_subset

    root = copy_subset(flower_photos, tmp_path / "photos", ["daisy"], 12)
    copy_subset(flower_photos, root, ["roses"], 1)
    summary = retrain(RetrainRequest(photo_dir=str(root), output=str(tmp_path / "b"),
                                     architecture=SMALL_NETWORK, recipe="codelab",
                             how_many_training_steps=20),
                      tmp_path / "home", weights_dir)
    assert summary["photos"] == 13
    assert "class 'roses' has only 1 photos" in caplog.text


def test_cross_fit_options_that_do_not_fit_are_usage_errors_before_any_work(
    flower_photos: Path, tmp_path: Path
) -> None:
    """--cross-fit 1 or beyond its bound, --refit beside cross-fitting, more parts than the
    smallest class's photos, and an option of the recipe not trained: exit 2 with one line
    naming the option, nothing written."""
    few = copy_subset(flower_photos, tmp_path / "few", ["daisy", "roses"], 3)
    env = flowers_env(tmp_path / "home", None, None)
    for argv, said in (
            (["train", "--cross-fit", "1"], "fine-tune cross-fit 1: use 0"),
            (["evaluate", "--cross-fit", "11"], "fine-tune cross-fit 11: use 0"),
            (["train", "--refit", "--cross-fit", "2"], "fine-tune refit goes with cross-fit 0 "
                                                       "(--refit with --cross-fit 0)"),
            (["train", "--cross-fit", "4"], "--cross-fit 4 is more than the 3 photos of the "
                                            "smallest class: every part needs a photo of every "
                                            "class; use fewer parts (or --cross-fit 0)"),
            (["evaluate", "--folds", "3", "--cross-fit", "3"],
             "--cross-fit 3 is more than the 2 photos of the smallest class in fold 1's "
             "training photos"),
            (["train", "--recipe", "codelab", "--cross-fit", "2"],
             "--cross-fit is the fine-tune recipe's option, and this training runs --recipe "
             "codelab: drop it, or pass --recipe fine-tune"),
            # Options the recipe would not read, recorded in its manifest as if it had:
            (["train", "--recipe", "codelab", "--views", "4"],
             "--views is the fine-tune recipe's option"),
            (["train", "--recipe", "codelab", "--no-refit"],
             "--refit is the fine-tune recipe's option"),
            (["train", "--how-many-training-steps", "100"],
             "--how-many-training-steps is the codelab recipe's option, and this training runs "
             "--recipe fine-tune"),
            (["evaluate", "--recipe", "fine-tune", "--how-many-training-steps", "5"],
             "--how-many-training-steps is the codelab recipe's option, and this evaluation runs "
             "--recipe fine-tune: drop it, or pass --recipe codelab")):
        result = run_flowers(argv[0], str(few), *argv[1:], "--weights", "none", "--output",
                             str(tmp_path / "out"), env=env)
        assert result.returncode == 2, (argv, result.stderr)
        (line,) = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
        assert line.startswith("Error: ") and said in line, (argv, line)
    assert not (tmp_path / "out").exists() and not (tmp_path / "home" / "logs").exists()
