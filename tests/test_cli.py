"""The command line: fast help without TensorFlow, and one clear line for each bad input."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, flowers_env, job_ids, run_flowers


def test_help_and_train_import_no_tensorflow() -> None:
    code = ("import sys, flowers.cli.main, flowers.cli.train, flowers.cli.queue, "
            "flowers.review.results_page, flowers.review.bundle_page; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_architectures_lists_the_registry(tmp_path: Path) -> None:
    result = run_flowers("architectures", env=flowers_env(tmp_path, None, None))
    assert result.returncode == 0
    assert "mobilenet_v2 " in result.stdout and "inception_v3 " in result.stdout
    assert "(default)" in result.stdout


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_missing_folder(tmp_path: Path) -> None:
    result = run_flowers("train", str(tmp_path / "nope"), env=flowers_env(tmp_path, None, None))
    assert_one_line_error(result, 2, "does not exist", str(tmp_path / "nope"))


def test_one_class_only(tmp_path: Path) -> None:
    (tmp_path / "photos" / "daisy").mkdir(parents=True)
    (tmp_path / "photos" / "daisy" / "a.jpg").write_bytes(b"x")
    result = run_flowers("train", str(tmp_path / "photos"), env=flowers_env(tmp_path, None, None))
    assert_one_line_error(result, 2, "only class 'daisy'", "at least two")


def test_unknown_architecture(photo_subset: Path, tmp_path: Path) -> None:
    result = run_flowers("train", str(photo_subset), "--architecture", "resnet9",
                         env=flowers_env(tmp_path, None, None))
    assert_one_line_error(result, 2, "resnet9", "mobilenet_v2")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_split_layer_the_network_lacks_is_refused_before_any_work(
    command: str, photo_subset: Path, tmp_path: Path,
) -> None:
    result = run_flowers(command, str(photo_subset), "--split-layer", "block_13_add",
                         env=flowers_env(tmp_path, None, None))
    assert_one_line_error(result, 2, "mobilenet_v2_1.0_224 has no layer 'block_13_add'",
                          "block_12_add, block_14_add")
    assert not (tmp_path / "logs").exists(), "no local cluster was started"


@pytest.mark.parametrize(("option", "value"), [("--how-many-training-steps", "-5"),
                                               ("--learning-rate", "0"),
                                               ("--testing-percentage", "100"),
                                               ("--learning-rate", "nan"),
                                               ("--validation-percentage", "inf"),
                                               ("--accept-precision", "nan"),
                                               ("--epochs", "9" * 20), ("--views", "9" * 11),
                                               ("--train-batch-size", "9" * 20),
                                               ("--how-many-training-steps", "9" * 23),
                                               ("--eval-step-interval", "9" * 20)])
def test_bad_numbers(photo_subset: Path, tmp_path: Path, option: str, value: str) -> None:
    """Each refused by the command (a number past any real use too, which the job would have
    taken to its photo stage and then failed deep in TensorFlow), nothing started."""
    result = run_flowers("train", str(photo_subset), option, value,
                         env=flowers_env(tmp_path, None, None))
    assert_one_line_error(result, 2, option)
    assert not (tmp_path / "logs").exists(), "no local cluster was started"


def test_unreachable_redis_names_the_url_without_its_password(
    photo_subset: Path, trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    env = flowers_env(tmp_path, "redis://:hunter2@127.0.0.1:1/0", None)
    result = run_flowers("train", str(photo_subset), env=env)
    assert_one_line_error(result, 1, "cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "hunter2" not in result.stderr + result.stdout
    labelled = run_flowers("label-dir", str(photo_subset), "--model", str(trained_bundle[0]),
                           "--output", str(tmp_path / "out.csv"), env=env)
    assert_one_line_error(labelled, 1, "cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "out.csv.parts" not in os.listdir(tmp_path), \
        "nothing written before Redis answers (a leftover would refuse the next command)"


def test_a_server_that_is_not_redis_is_named_as_such(tmp_path: Path) -> None:
    """An HTTP server where FLOWERS_BROKER_URL points: one line naming the setting."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = server.accept()
                with connection:
                    connection.recv(4096)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        env = flowers_env(tmp_path, f"redis://:hunter2@127.0.0.1:{port}/0", None)
        result = run_flowers("workers", env=env, timeout=60)
    finally:
        server.close()
    assert_one_line_error(result, 1, f"redis://:***@127.0.0.1:{port}/0 (FLOWERS_BROKER_URL) "
                                     "does not answer as Redis does")
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.queue
def test_status_of_an_unknown_job(redis_url: str, tmp_path: Path) -> None:
    env = flowers_env(tmp_path, redis_url, None)
    result = run_flowers("status", "feedface" * 4, env=env)
    assert_one_line_error(result, 1, f"no job '{'feedface' * 4}'")
    for malformed in ("feedface", "a" * 5000):  # too long for a path, too
        result = run_flowers("status", malformed, env=env)
        assert_one_line_error(result, 2, "is not one flowers makes (32 hex digits), nor a "
                                         "bundle folder")
    # A job's own keys (`ID:chunks` is a list) are not jobs to cancel either.
    for malformed in (f"{'feedface' * 4}:chunks", "x"):
        result = run_flowers("cancel", malformed, env=env)
        assert_one_line_error(result, 2, "is not one flowers makes (32 hex digits): pass the id")


@pytest.mark.queue
@pytest.mark.parametrize("how", ["--debug", "FLOWERS_DEBUG=1", "neither", "FLOWERS_DEBUG=0"])
def test_debug_shows_tracebacks_and_debug_logs(
    how: str, redis_url: str, photo_subset: Path, trained_bundle: tuple[Path, object],
    tmp_path: Path,
) -> None:
    env = flowers_env(tmp_path, redis_url, None)
    option = [how] if how.startswith("--") else []
    if how.startswith("FLOWERS_DEBUG="):
        env["FLOWERS_DEBUG"] = how.split("=")[1]
    debug = how in ("--debug", "FLOWERS_DEBUG=1")
    failed = run_flowers(*option, "train", str(tmp_path / "nope"), env=env)
    queued = run_flowers(*option, "label-dir", str(photo_subset), "--model",
                         str(trained_bundle[0]), "--output", str(tmp_path / "out.csv"),
                         "--no-wait", env=env)  # no worker: the chunks stay queued
    assert queued.returncode == 0, queued.stderr
    sent = f"DEBUG flowers.cli.queue: sent flowers.label_chunk to queue 'flowers' on {redis_url}"
    if debug:
        assert failed.returncode == 1 and "Traceback (most recent call last)" in failed.stderr
        assert "models.errors.DatasetError: photo folder" in failed.stderr
        assert sent in queued.stderr
    else:
        assert_one_line_error(failed, 2, "does not exist")
        assert "DEBUG" not in queued.stderr


def test_a_missing_module_of_the_train_extra_is_one_line_naming_the_extra() -> None:
    """What a command reaches without checking first: the train extra's modules are named with
    the install line; any other missing module stays an unexpected error."""
    import click
    from click.testing import CliRunner

    from flowers.cli.main import FlowersGroup

    @click.group(cls=FlowersGroup)
    def group() -> None:
        pass

    @group.command()
    @click.argument("module")
    def needs(module: str) -> None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    missing = CliRunner().invoke(group, ["needs", "tensorflow.lite"])
    assert missing.exit_code == 1
    assert missing.output.strip() == ("Error: flowers needs needs tensorflow.lite, which this "
                                      "install lacks: pip install 'flowers[train]'")
    other = CliRunner().invoke(group, ["needs", "numpy"])
    assert other.exit_code == 1 and "unexpected ModuleNotFoundError" in other.output


@pytest.mark.parametrize("value", ["nan", "-inf", "1.5"])
def test_review_below_takes_a_number_from_0_to_1(tmp_path: Path, value: str) -> None:
    rows = tmp_path / "labels.csv"
    rows.write_text("path,label_1,confidence_1,decision,error\n")
    result = run_flowers("review", str(rows), "--output", str(tmp_path / "page.html"),
                         "--below", value, env=flowers_env(tmp_path, None, None))
    assert_one_line_error(result, 2, "--below")


def test_review_of_a_named_pipe_is_refused_without_reading_it(tmp_path: Path) -> None:
    pipe = tmp_path / "labels.csv"
    os.mkfifo(pipe)
    result = run_flowers("review", str(pipe), "--output", str(tmp_path / "page.html"),
                         env=flowers_env(tmp_path, None, None), timeout=60)
    assert_one_line_error(result, 2, f"{pipe} is not a regular file")


@pytest.mark.parametrize("name", ["notes.txt", "notes.h5"])
def test_weights_that_are_not_a_weights_file_are_refused_before_any_work(
    photo_subset: Path, tmp_path: Path, name: str,
) -> None:
    weights = tmp_path / name
    weights.write_text("not weights\n")
    for command in ("train", "evaluate"):
        result = run_flowers(command, str(photo_subset), "--weights", str(weights),
                             "--output", str(tmp_path / f"out-{command}"),
                             env=flowers_env(tmp_path / "home", None, None))
        assert_one_line_error(result, 2, f"--weights {weights}: not a Keras weights file")
    assert not (tmp_path / "home" / "logs").exists(), "refused before a local cluster started"


@pytest.mark.parametrize("where", ["itself", "a class", "around", "linked", "missing"])
def test_stray_photos_must_be_a_folder_apart_from_the_classes(
    photo_subset: Path, tmp_path: Path, where: str,
) -> None:
    """Strays are photos of none of the classes: the photo folder, one of its classes (also
    one reached through a link) or a folder around it would count flowers as strays."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("daisy", "roses"):
        (photos / name).symlink_to(photo_subset / name)  # class folders kept elsewhere
    stray = {"itself": photos, "a class": photos / "daisy", "around": tmp_path,
             "linked": photo_subset / "roses", "missing": tmp_path / "gone"}[where]
    result = run_flowers("evaluate", str(photos), "--stray", str(stray),
                         "--output", str(tmp_path / "e.json"),
                         env=flowers_env(tmp_path / "home", None, None))
    words = ("is not a folder",) if where == "missing" else ("holds photos of the classes",)
    assert_one_line_error(result, 2, f"--stray {stray}", *words)
    assert not (tmp_path / "home" / "logs").exists(), "refused before a local cluster started"


def test_an_output_under_a_file_is_named_as_such(tmp_path: Path) -> None:
    from flowers.models.errors import UsageError
    from flowers.models.ownership import check_output_place

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    with pytest.raises(UsageError, match=f"{a_file} is a file, not a folder"):
        check_output_place(a_file / "out.csv", file="a CSV file")
    with pytest.raises(UsageError, match=f"folder {tmp_path / 'gone'} does not exist; create it"):
        check_output_place(tmp_path / "gone" / "out.csv", file="a CSV file")
    with pytest.raises(UsageError, match=f"--output {tmp_path} is a folder; name a CSV file"):
        check_output_place(tmp_path, file="a CSV file")
    assert check_output_place(tmp_path / "out.csv", file="a CSV file") == tmp_path / "out.csv"


def test_every_path_parameter_refuses_an_empty_path_and_outputs_refuse_a_dash(
    tmp_path: Path,
) -> None:
    """And an output's name leaves room for the files flowers names after it (a label job's
    record, written whole, adds 27 bytes: `.NAME.job.json.<12 hex>.tmp`)."""
    import click

    from flowers.cli.main import cli
    from flowers.cli.paths import PathParam

    paths = [(name, param) for name, command in cli.commands.items() for param in command.params
             if isinstance(param.type, click.Path)]
    assert len(paths) >= 15
    for name, param in paths:
        assert isinstance(param.type, PathParam), (name, param.name)
        for value in ("", "-") if param.type.output else ("",):
            with pytest.raises(click.BadParameter):
                param.type.convert(value, param, None)
        assert param.type.output == (param.name in ("output", "summaries_dir")), (name, param.name)
        assert param.type.beside == (param.name == "output"), (name, param.name)
        if param.type.beside:
            with pytest.raises(click.BadParameter, match="at most 228: shorten it"):
                param.type.convert(str(tmp_path / ("n" * 229)), param, None)
            assert param.type.convert(str(tmp_path / ("n" * 228)), param, None).name == "n" * 228
    assert PathParam().convert("-", None, None) == Path("-")  # an input named - is a file


def test_path_slips_are_refused_at_the_option_before_any_work(tmp_path: Path) -> None:
    """An empty photo folder (not the current folder), `--output -`, a name too long."""
    result = run_flowers("label-dir", "", "--model", str(tmp_path), "--output",
                         str(tmp_path / "out.csv"), env=flowers_env(tmp_path, None, None))
    assert_one_line_error(result, 2, "PHOTO_DIR", "the path is empty")
    written = run_flowers("train", str(tmp_path), "--output", "-",
                          env=flowers_env(tmp_path, None, None))
    assert_one_line_error(written, 2, "--output", "not standard output")
    named = run_flowers("label-dir", str(tmp_path), "--model", str(tmp_path), "--output",
                        str(tmp_path / ("q" * 236 + ".csv")), env=flowers_env(tmp_path, None, None))
    assert_one_line_error(named, 2, "--output", "is 240 bytes", "at most 228")
    assert not (tmp_path / "logs").exists(), "refused before a local cluster started"


def test_folders_train_and_import_poets_write_are_checked_before_any_work(
    photo_subset: Path, tmp_path: Path,
) -> None:
    """A bundle's --output and train's --summaries-dir: not a link, a file or under one, nor
    inside a bundle (a summaries folder there would leave files the bundle does not own); the
    summaries apart from the bundle's folder and the photo folder (TensorBoard's files would
    land among them, and a bundle folder holding them cannot be replaced)."""
    import shutil

    photos = tmp_path / "data" / "photos"
    shutil.copytree(photo_subset, photos)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"format_version": 3, "bundle_id": "b1"}')
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    env = flowers_env(tmp_path / "home", None, None)
    graph = tmp_path / "retrained_graph.pb"
    graph.write_bytes(b"\n\x05input")
    labels = tmp_path / "labels.txt"
    labels.write_text("daisy\nroses\n")
    for option, value, words in [
        ("--summaries-dir", a_file, f"{a_file} is a file, not a folder"),
        ("--summaries-dir", bundle, f"is inside the model bundle {bundle}"),
        ("--summaries-dir", bundle / "train", f"is inside the model bundle {bundle}"),
        ("--summaries-dir", tmp_path / "out" / "logs",
         f"and the bundle's folder {tmp_path / 'out'} overlap"),
        ("--summaries-dir", tmp_path, f"and the bundle's folder {tmp_path / 'out'} overlap"),
        ("--summaries-dir", photos.parent, f"and the photo folder {photos} overlap"),
        ("--output", a_file / "bundle", f": {a_file} is a file, not a folder"),
        ("--output", bundle / "inner", f"is inside the model bundle {bundle}"),
    ]:
        command = ["train", str(photos), "--output", str(tmp_path / "out")]
        command = [*command[:2], option, str(value)] if option == "--output" else \
            [*command, option, str(value)]
        assert_one_line_error(run_flowers(*command, env=env), 2, f"{option} ", words)
    for output, words in [(a_file / "sub", f": {a_file} is a file, not a folder"),
                          (tmp_path / "link", "is a symbolic link"),
                          (bundle / "sub", f"is inside the model bundle {bundle}")]:
        imported = run_flowers("import-poets", str(graph), "--labels", str(labels), "--output",
                               str(output), env=env)
        assert_one_line_error(imported, 2, f"--output {output}", words)
    assert not (tmp_path / "nowhere").exists() and sorted(os.listdir(bundle)) == ["manifest.json"]
    assert not (tmp_path / "home" / "logs").exists(), "refused before a local cluster started"


def test_evaluate_refuses_more_folds_than_photos_of_a_class_before_any_work(
    photo_subset: Path, tmp_path: Path,
) -> None:
    smallest = min(len(os.listdir(folder)) for folder in photo_subset.iterdir())
    result = run_flowers("evaluate", str(photo_subset), "--folds", str(smallest + 1), "--output",
                         str(tmp_path / "figures.json"), env=flowers_env(tmp_path, None, None))
    assert_one_line_error(result, 2, f"--folds {smallest + 1} is more than the {smallest} photos "
                                     "of the smallest class")
    assert not (tmp_path / "logs").exists(), "refused before a local cluster started"


@pytest.mark.parametrize("name", ["x\ny@host", "two words@host", "", "n" * 256])
def test_a_worker_node_name_that_would_not_list_on_one_line_is_refused(
    name: str, tmp_path: Path,
) -> None:
    env = {**flowers_env(tmp_path, "redis://127.0.0.1:1/0", None)}
    result = run_flowers("worker", "-n", name, env=env)
    assert_one_line_error(result, 2, "is not a node name: give 1 to 255 printable characters")


def test_a_second_training_to_the_same_bundle_folder_is_refused_while_the_first_is_unfinished(
    redis_url: str, photo_subset: Path, tmp_path: Path,
) -> None:
    """Two trainings to one folder would each replace the other's bundle (the last to end
    winning): the second is refused at once, naming the first, and sends nothing; another
    folder is not held up, and once the first has ended its folder can be trained again.
    No worker runs: the jobs stay queued."""
    import redis

    env = flowers_env(tmp_path, redis_url, None)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    before, jobs_before = client.llen("flowers"), set(job_ids(redis_url))

    def train(output: Path) -> subprocess.CompletedProcess[str]:
        return run_flowers("train", str(photo_subset), "--output", str(output), "--no-wait",
                           env=env)

    first = train(tmp_path / "bundle")
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.strip().splitlines()[-1]
    second = train(tmp_path / "bundle")
    assert_one_line_error(second, 2, f"another flowers train (job {first_id}) is writing "
                          f"{tmp_path / 'bundle'} now", f"flowers cancel {first_id}")
    assert client.llen("flowers") == before + 1, "the refused training sent nothing"
    assert set(job_ids(redis_url)) == jobs_before | {first_id}, "no record of the refused job"
    elsewhere = train(tmp_path / "another")
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert run_flowers("cancel", first_id, env=env).returncode == 0
    again = train(tmp_path / "bundle")
    assert again.returncode == 0, again.stderr
