"""`flowers import-poets`: the codelab's own retrained graph imported and labelled by real workers,
checked against the original graph run the codelab's way; an InceptionV3-shaped graph built here;
the base graph with its 1001 ImageNet labels; export; and the one-line errors."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from flowers.cli.main import cli
from flowers.models.bundle import LABELS_FILE, TFLITE_FILE, read_manifest
from flowers.models.dataset import walk_images
from flowers.models.decode import codelab_bilinear, open_rgb
from flowers.models.runtime.runners import LiteRTRunner
from flowers.models.tflite_metadata import read_metadata
from tests.conftest import WorkerFactory, flowers_env, run_flowers

pytestmark = pytest.mark.model

BASE_OUTPUT = "MobilenetV1/Predictions/Reshape_1"
# Top-1 agreement with the original graph, and how close the probabilities are: the photos are
# decoded by Pillow (libjpeg's accurate DCT) where the codelab's TensorFlow used the fast one, so
# pixels differ by about a level, and the bilinear result is rounded to 8 bits.
MIN_TOP1_AGREEMENT = 0.98
MAX_MEDIAN_DIFFERENCE = 0.005  # |p_flowers - p_codelab| of each photo's top label, median
MAX_P95_DIFFERENCE = 0.05  # ... 95th percentile


def codelab_probabilities(graph_file: Path, photos: list[Path], size: int, mean: float,
                          std: float, output: str = "final_result:0",
                          input_tensor: str = "input:0") -> np.ndarray:
    """The original graph run as the codelab's label_image.py runs it: tf.compat.v1 GraphDef
    import, decode_jpeg, TF1 resize_bilinear to `size`, (x - mean) / std."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_file.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="import")
        name = tf.compat.v1.placeholder(tf.string)
        decoded = tf.image.decode_jpeg(tf.io.read_file(name), channels=3)
        resized = tf.compat.v1.image.resize_bilinear(tf.cast(decoded, tf.float32)[None],
                                                     [size, size])
        normalized = tf.divide(tf.subtract(resized, [mean]), [std])
    with tf.compat.v1.Session(graph=graph) as session:
        return np.concatenate([
            session.run(f"import/{output}", {
                f"import/{input_tensor}": session.run(normalized, {name: str(photo)})})
            for photo in photos])


@pytest.fixture(scope="module")
def poets_bundle(codelab_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared retrained_graph.pb imported by the command line, architecture read from it."""
    output = tmp_path_factory.mktemp("imported") / "poets"
    home = tmp_path_factory.mktemp("home")
    retrained = codelab_weights / "poets_retrained"
    done = run_flowers("import-poets", str(retrained / "retrained_graph.pb"), "--labels",
                       str(retrained / "retrained_labels.txt"), "--output", str(output),
                       env=flowers_env(home, None, None))
    assert done.returncode == 0, done.stderr
    assert "mobilenet_0.25_128, read from the graph" in done.stdout
    return output


def test_imported_bundle_records_where_it_came_from(poets_bundle: Path,
                                                    codelab_weights: Path) -> None:
    graph_file = codelab_weights / "poets_retrained" / "retrained_graph.pb"
    manifest = read_manifest(poets_bundle)
    assert manifest["architecture"] == "mobilenet_0.25_128"
    assert manifest["input_size"] == [128, 128]
    imported = manifest["imported"]
    assert imported["graph_sha256"] == hashlib.sha256(graph_file.read_bytes()).hexdigest()
    assert (imported["input_tensor"], imported["output_tensor"]) == ("input:0", "final_result:0")
    assert (imported["input_mean"], imported["input_std"]) == (127.5, 127.5)
    assert imported["architecture_from"] == "graph"
    assert manifest["preprocessing"]["resize_method"] == "codelab"
    assert "(x - 127.5) / 127.5" in manifest["preprocessing"]["scaling"]
    assert set(manifest["not_included"]) == {"split", "metrics", "training_arguments"}
    assert not {"split", "metrics", "training_arguments"} & set(manifest)
    assert "keras" not in manifest["models"]
    labels = (codelab_weights / "poets_retrained" / "retrained_labels.txt").read_text().split()
    assert (poets_bundle / LABELS_FILE).read_text().splitlines() == labels == \
        manifest["class_names"]
    runner = LiteRTRunner(poets_bundle / TFLITE_FILE)
    assert (runner.input_size, runner.classes) == (128, 5)


def test_label_dir_with_real_workers_gives_the_codelab_labels(
    poets_bundle: Path, codelab_weights: Path, flower_photos: Path, redis_url: str,
    start_workers: WorkerFactory, flowers_home: Path, tmp_path: Path,
) -> None:
    start_workers(2)
    output = tmp_path / "labels.csv"
    done = run_flowers("label-dir", str(flower_photos), "--model", str(poets_bundle),
                       "--output", str(output), "--top-k", "5",
                       env=flowers_env(flowers_home, redis_url, None))
    assert done.returncode == 0, done.stderr
    assert "imported from the codelab" in done.stderr and "flowers train" in done.stderr
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    photos = sorted(walk_images(flower_photos))
    assert [row[0] for row in rows] == [p.relative_to(flower_photos).as_posix() for p in photos]
    assert all(row[-2:] == ["", ""] for row in rows), "no error, and no decision: the codelab's " \
        "graph has no calibration"
    assert "makes no decisions (imported from a codelab graph): its rows' decision is empty; " \
        "train a bundle on its photos (flowers train)" in done.stderr, done.stderr
    names = read_manifest(poets_bundle)["class_names"]
    reference = codelab_probabilities(
        codelab_weights / "poets_retrained" / "retrained_graph.pb", photos, 128, 127.5, 127.5)
    ours = np.zeros_like(reference)
    for index, row in enumerate(rows):
        for label, confidence in zip(row[1:-2:2], row[2:-2:2], strict=True):
            ours[index, names.index(label)] = float(confidence)
    agreement = float(np.mean(ours.argmax(1) == reference.argmax(1)))
    top = reference.argmax(1)
    difference = np.abs(ours[np.arange(len(top)), top] - reference[np.arange(len(top)), top])
    assert agreement >= MIN_TOP1_AGREEMENT, agreement
    assert np.median(difference) <= MAX_MEDIAN_DIFFERENCE, np.median(difference)
    assert np.percentile(difference, 95) <= MAX_P95_DIFFERENCE, np.percentile(difference, 95)


def test_codelab_resize_is_tensorflow_1_resize_bilinear(flower_photos: Path) -> None:
    import tensorflow as tf

    for photo in sorted((flower_photos / "tulips").iterdir())[:5]:
        pixels = np.asarray(open_rgb(photo.read_bytes()))
        expected = tf.compat.v1.image.resize_bilinear(
            tf.constant(pixels, tf.float32)[None], [128, 128])[0].numpy()
        assert np.abs(codelab_bilinear(pixels, 128) - expected).max() <= 0.5


def test_status_label_and_review_say_what_an_imported_bundle_is(
        poets_bundle: Path, flower_photos: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    described = runner.invoke(cli, ["status", str(poets_bundle)])
    assert described.exit_code == 0, described.output
    assert "imported from" in described.output and "has no metrics" in described.output
    assert "can: flowers label, flowers label-dir, flowers export" in described.output
    page = runner.invoke(cli, ["review", str(poets_bundle), "--output",
                               str(tmp_path / "bundle.html")])
    assert page.exit_code == 0, page.output
    text = (tmp_path / "bundle.html").read_text()
    assert "resize_bilinear" in text and "records no learning curves" in text
    daisy = sorted((flower_photos / "daisy").iterdir())[0]
    labelled = runner.invoke(cli, ["label", str(daisy), "--model", str(poets_bundle)])
    assert labelled.exit_code == 0, labelled.output
    assert labelled.stdout.splitlines()[1].split()[0] == "daisy"


def test_graph_given_as_a_model_names_import_poets(codelab_weights: Path, flower_photos: Path,
                                                   tmp_path: Path) -> None:
    graph_file = codelab_weights / "poets_retrained" / "retrained_graph.pb"
    runner = CliRunner()
    for args in (["label", str(next(walk_images(flower_photos)))],
                 ["label-dir", str(flower_photos), "--output", str(tmp_path / "x.csv")]):
        result = runner.invoke(cli, [*args, "--model", str(graph_file)])
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert "flowers import-poets" in line and "retrained_graph.pb" in line
    assert not (tmp_path / "x.csv").exists()


def inception_like_graph(path: Path, classes: int) -> Path:
    """A small TF1 frozen graph shaped as retrain.py's InceptionV3 one: JPEG bytes at
    DecodeJpeg/contents, 299x299 pixels scaled (x - 128) / 128 at Mul:0, a `pool_3/_reshape`
    bottleneck (here: mean colours of 3x3 cells) and the `final_result` softmax."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, name="DecodeJpeg/contents")
        decoded = tf.cast(tf.image.decode_jpeg(contents, channels=3, name="DecodeJpeg"),
                          tf.float32)
        resized = tf.compat.v1.image.resize_bilinear(decoded[None], [299, 299],
                                                     name="ResizeBilinear")
        scaled = tf.multiply(tf.subtract(resized, 128.0, name="Sub"), 1 / 128, name="Mul")
        pooled = tf.nn.avg_pool2d(scaled, 99, 99, "VALID", name="pool_3")
        bottleneck = tf.reshape(pooled, [-1, 27], name="pool_3/_reshape")
        weights = tf.constant(rng.normal(0, 4, (27, classes)), tf.float32,
                              name="final_training_ops/weights/final_weights")
        logits = tf.matmul(bottleneck, weights, name="final_training_ops/Wx_plus_b/MatMul")
        tf.nn.softmax(logits, name="final_result")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def test_inception_v3_graph_is_fed_at_mul_and_labels_like_the_graph_itself(
        flower_photos: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    classes = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    graph_file = inception_like_graph(tmp_path / "retrained_graph.pb", len(classes))
    labels = tmp_path / "retrained_labels.txt"
    labels.write_text("".join(f"{name}\n" for name in classes))
    bundle = tmp_path / "inception"
    runner = CliRunner()
    result = runner.invoke(cli, ["import-poets", str(graph_file), "--labels", str(labels),
                                 "--output", str(bundle)])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(bundle)
    assert manifest["architecture"] == "inception_v3" and manifest["input_size"] == [299, 299]
    assert manifest["imported"]["input_tensor"] == "Mul:0"
    assert (manifest["imported"]["input_mean"], manifest["imported"]["input_std"]) == (128, 128)

    photos = [sorted((flower_photos / name).iterdir())[0] for name in classes]
    labelled = runner.invoke(cli, ["label", *map(str, photos), "--model", str(bundle),
                                   "--top-k", "5"])
    assert labelled.exit_code == 0, labelled.output
    lines = labelled.stdout.splitlines()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_file.read_bytes())
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.import_graph_def(graph_def, name="")
        for index, photo in enumerate(photos):
            expected = session.run("final_result:0",
                                   {"DecodeJpeg/contents:0": photo.read_bytes()})[0]
            rows = [line.split() for line in lines[index * 6 + 1:index * 6 + 6]]
            assert rows[0][0] == classes[int(expected.argmax())]
            for name, confidence in rows:
                assert abs(float(confidence) - expected[classes.index(name)]) < 0.02


def test_base_graph_imports_with_its_output_tensor_and_gives_imagenet_labels(
        codelab_weights: Path, flower_photos: Path, tmp_path: Path) -> None:
    labels = codelab_weights / "imagenet_labels_1001.txt"
    bundle = tmp_path / "base"
    runner = CliRunner()
    result = runner.invoke(cli, ["import-poets", str(codelab_weights /
                                 "mobilenet_v1_0.25_128_frozen.pb"), "--labels", str(labels),
                                 "--output", str(bundle), "--output-tensor", BASE_OUTPUT])
    assert result.exit_code == 0, result.output
    assert read_manifest(bundle)["imported"]["output_tensor"] == f"{BASE_OUTPUT}:0"
    daisies = sorted((flower_photos / "daisy").iterdir())[:8]
    labelled = runner.invoke(cli, ["label", *map(str, daisies), "--model", str(bundle)])
    assert labelled.exit_code == 0, labelled.output
    imagenet = set(labels.read_text().splitlines())
    rows = [line for line in labelled.stdout.splitlines() if line.startswith("  ")]
    assert len(rows) == 3 * len(daisies)
    assert all(line.strip().rsplit(" ", 1)[0].strip() in imagenet for line in rows)
    top = [rows[i].split()[0] for i in range(0, len(rows), 3)]
    assert top.count("986:daisy") >= 6, top


def test_export_converts_an_imported_bundle(poets_bundle: Path, flower_photos: Path,
                                            tmp_path: Path) -> None:
    import tensorflow as tf

    from flowers.models.decode import load_image
    from flowers.models.export import export_bundle

    pixels = np.stack([load_image(path, 128, "codelab")
                       for path in sorted((flower_photos / "roses").iterdir())[:4]])
    expected = LiteRTRunner(poets_bundle / TFLITE_FILE)(pixels)
    copied = export_bundle(poets_bundle, "tflite", tmp_path / "tflite")
    assert (copied / TFLITE_FILE).read_bytes() == (poets_bundle / TFLITE_FILE).read_bytes()
    assert (copied / LABELS_FILE).read_text() == (poets_bundle / LABELS_FILE).read_text()
    names = read_manifest(poets_bundle)["class_names"]
    packed = read_metadata((copied / TFLITE_FILE).read_bytes())
    assert packed is not None and packed.output_names == ("probabilities",)
    assert packed.labels == tuple(names), "the imported model names its classes too"
    half = export_bundle(poets_bundle, "tflite", tmp_path / "half", "float16")
    assert (half / TFLITE_FILE).stat().st_size < 0.6 * (copied / TFLITE_FILE).stat().st_size
    half_packed = read_metadata((half / TFLITE_FILE).read_bytes())
    assert half_packed is not None and half_packed.labels == tuple(names)
    halved = LiteRTRunner(half / TFLITE_FILE)(pixels)
    # float16 weights: the same top labels, probabilities within a few hundredths.
    assert (halved.argmax(1) == expected.argmax(1)).all()
    assert 0 < np.abs(halved - expected).max() < 0.05
    served = export_bundle(poets_bundle, "saved_model", tmp_path / "served")
    serve = tf.saved_model.load(str(served)).signatures["serving_default"]
    result = serve(pixels=tf.constant(pixels))
    assert np.abs(result["probabilities"].numpy() - expected).max() < 1e-4
    assert [name.decode() for name in result["classes"].numpy()[0]] == names


def _write(path: Path, data: str) -> Path:
    path.write_text(data)
    return path


def _retrained(work: Path, codelab: Path, photos: Path) -> Path:
    return codelab / "poets_retrained" / "retrained_graph.pb"


def _photo_as_graph(work: Path, codelab: Path, photos: Path) -> Path:
    return Path(shutil.copy(next(walk_images(photos)), work / "graph.pb"))


# case: (graph maker, lines in the labels file, more arguments, words the one line must hold)
BAD_INPUTS: dict[str, tuple[Any, int, list[str], list[str]]] = {
    "not a GraphDef": (_photo_as_graph, 5, [], ["not a TensorFlow GraphDef"]),
    "a text file": (lambda w, c, p: _write(w / "graph.pb", "not a graph at all\n"), 5, [],
                    ["not a TensorFlow GraphDef"]),
    "no final_result": (lambda w, c, p: c / "mobilenet_v1_0.25_128_frozen.pb", 1001, [],
                        ["no tensor final_result:0", "--output-tensor"]),
    "label count": (_retrained, 4, [], ["4 lines", "5 classes"]),
    "inception as mobilenet": (lambda w, c, p: inception_like_graph(w / "graph.pb", 5), 5,
                               ["--architecture", "mobilenet_1.0_224"],
                               ["inception_v3 graph", "mobilenet"]),
    "wrong alpha": (_retrained, 5, ["--architecture", "mobilenet_0.50_128"],
                    ["mobilenet_0.25_128 graph, not mobilenet_0.50_128"]),
    "wrong size": (_retrained, 5, ["--architecture", "mobilenet_0.25_224"],
                   ["takes 128x128", "224"]),
}


@pytest.mark.hardening
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(
        case: str, codelab_weights: Path, flower_photos: Path, tmp_path: Path) -> None:
    make_graph, lines, extra, words = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    graph_file = make_graph(work, codelab_weights, flower_photos)
    labels = _write(work / "labels.txt", "".join(f"class{i}\n" for i in range(lines)))
    output = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["import-poets", str(graph_file), "--labels", str(labels),
                                      "--output", str(output), *extra])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert all(word in line for word in words), line
    assert not output.exists()
    assert not [name for name in tmp_path.iterdir() if name.name.startswith(".bundle")]


def test_labels_are_read_as_utf8_in_any_locale_without_a_byte_order_mark(tmp_path: Path) -> None:
    """Under the C locale (ASCII), as an editor saved them (a byte-order mark first, CRLF)."""
    import os
    import subprocess
    import sys

    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeffdaisy\r\nmuguet été\r\n".encode())
    script = ("import sys, types; from pathlib import Path; "
              "from flowers.models.codelab.importer import read_labels; "
              "graph = types.SimpleNamespace(classes=2, path=Path('g.pb'), "
              "output_tensor='final_result'); "
              "print(ascii(read_labels(Path(sys.argv[1]), graph)))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0"}
    read = subprocess.run([sys.executable, "-c", script, str(labels)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == ascii(["daisy", "muguet été"])
    labels.write_bytes("daisy\nmuguet été\n".encode("latin-1"))
    from types import SimpleNamespace

    from flowers.models.codelab.importer import read_labels
    from flowers.models.errors import UsageError

    graph = SimpleNamespace(classes=2, path=tmp_path / "g.pb", output_tensor="final_result")
    with pytest.raises(UsageError, match=f"cannot read --labels {labels}: not UTF-8 \\(byte 13\\): "
                                         "save it as UTF-8$"):
        read_labels(labels, graph)  # type: ignore[arg-type]


def test_a_label_line_no_bundle_could_keep_is_refused_naming_it(tmp_path: Path) -> None:
    """A tab or another control character in a class name: refused before any conversion, as
    a class folder so named is (every command would refuse the bundle it made)."""
    import types

    from flowers.models.codelab.importer import read_labels
    from flowers.models.errors import UsageError

    labels = _write(tmp_path / "labels.txt", "daisy\ndande\tlion\nroses\n")
    graph = types.SimpleNamespace(classes=3, path=Path("g.pb"), output_tensor="final_result")
    with pytest.raises(UsageError) as refused:
        read_labels(labels, graph)  # type: ignore[arg-type]  # the fields it reads
    assert str(refused.value) == (f"--labels {labels}, line 2, 'dande\\tlion': the name holds a "
                                  "control character, which labels.txt cannot keep: edit the line")
