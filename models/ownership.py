"""Proof that flowers wrote a file or folder, asked before it replaces or removes one.

flowers replaces or removes only what carries its own mark, never what merely has a familiar
name:

    a model bundle       manifest.json: a JSON object with flowers' `format_version` (an integer)
                         and `bundle_id`; replaced whole only by a new bundle (train, import)
    a label job's parts  OUTPUT.parts/job.json with `"format": "flowers-label-parts/1"` and the
                         job ids; only flowers' own files in it are removed
    a partitioned CSV    OUTPUT/manifest.json with `"format": "flowers-partitioned-csv/1"`; only
                         the files it lists (and itself) are removed
    a review page        `<meta name="generator" content="flowers review">` in its head
    evaluate's figures   a JSON object with `"format": "flowers-evaluation/1"` and its job id
                         (before the format was recorded: every field evaluate wrote)
    a results CSV        with --overwrite: a regular file, not inside a bundle

A file or folder that lacks the mark is refused with one line naming it. Nothing is ever
removed inside a bundle or a photo folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowers.models.atomic import json_value, read_regular_file
from flowers.models.errors import UsageError

log = logging.getLogger(__name__)

BUNDLE_MANIFEST = "manifest.json"
PARTS_FORMAT = "flowers-label-parts/1"
PARTITIONED_FORMAT = "flowers-partitioned-csv/1"
REVIEW_MARK = b'<meta name="generator" content="flowers review">'
EVALUATION_FORMAT = "flowers-evaluation/1"
# The job ids flowers makes (uuid4().hex).
JOB_ID = re.compile(r"[0-9a-f]{32}")
# What a label job writes in its parts folder: its record, parts, chunk lists, and the
# temporary files of atomic writes (models.atomic) and of the merge's spills.
_PARTS_FILES = re.compile(
    r"job\.json|part-[0-9a-f]{32}-\d{8}\.csv|chunks-[0-9a-f]{32}\.(jsonl|idx)"
    r"|\..+\.[0-9a-f]{12}\.tmp|run-.+\.csv"
)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in a regular file at `path`, or None (missing, not JSON, not an object)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        value = json_value(read_regular_file(path))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_bundle(folder: Path) -> bool:
    """Whether `folder` is a model bundle flowers wrote (its manifest says so)."""
    manifest = read_json_object(folder / BUNDLE_MANIFEST)
    return (manifest is not None and isinstance(manifest.get("format_version"), int)
            and isinstance(manifest.get("bundle_id"), str))


# Every file a bundle may hold (models.bundle, models.codelab.importer).
BUNDLE_FILES = frozenset({"manifest.json", "labels.txt", "model.keras", "model.tflite",
                          "split.json", "report.png", "graph.pb", "features.npy"})


def check_bundle_output(output: Path, what: str = "--output") -> None:
    """Refuses (`UsageError`) a bundle's output folder that flowers may not replace: anything
    but a missing path, an empty folder, or a bundle flowers wrote holding nothing else.
    `what` names the folder in the message ("--output", or the default bundle folder)."""
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise UsageError(f"{what} {output} exists and is not a folder: name a new folder for "
                         "the bundle (--output)")
    if not output.exists():
        if (bundle := bundle_around(output.parent)) is not None:
            raise UsageError(f"{what} {output} is inside the model bundle {bundle}: "
                             "write the new bundle elsewhere (--output)")
        return
    entries = sorted(os.listdir(output))
    if not entries:
        return
    if not is_bundle(output):
        raise UsageError(f"{what} {output} exists and is not a model bundle flowers wrote "
                         "(no manifest.json of one): name a new folder (--output) or move it "
                         "away")
    foreign = [name for name in entries if name not in BUNDLE_FILES]
    if foreign:
        raise UsageError(f"{what} {output} holds files that are not part of its bundle "
                         f"({', '.join(foreign[:3])}): move them or name a new folder (--output)")


def bundle_around(path: Path) -> Path | None:
    """The bundle `path` is, or is inside, if any."""
    for folder in (path, *path.parents):
        if is_bundle(folder):
            return folder
    return None


def is_parts_folder(folder: Path) -> bool:
    """Whether `folder` is a label job's parts folder: its job.json carries flowers' format
    (or, written before the format was recorded, the fields that identify a label job)."""
    record = read_json_object(folder / "job.json")
    if record is None:
        return False
    if record.get("format") == PARTS_FORMAT:
        return True
    return record.get("format") is None and all(
        key in record for key in ("bundle_id", "photo_dir", "top_k"))


def partitioned_entries(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A partitioned CSV output's manifest (flowers' format) without its file list, and that
    list's entries (each file's name and counts); None when `folder` is not one."""
    manifest = read_json_object(folder / BUNDLE_MANIFEST)
    if manifest is None or manifest.get("format") != PARTITIONED_FORMAT:
        return None
    files = manifest.pop("files", None)
    if not isinstance(files, list):
        return None
    return manifest, [entry for entry in files if isinstance(entry, dict)]


def partitioned_files(folder: Path) -> list[str] | None:
    """The file names a partitioned CSV output lists in its manifest (flowers' format), or
    None when `folder` is not one."""
    found = partitioned_entries(folder)
    if found is None:
        return None
    names = [entry.get("name") for entry in found[1]]
    if not all(isinstance(name, str) and re.fullmatch(r"part-\d{5,}\.csv", name)
               for name in names):
        return None
    return [str(name) for name in names]


def is_review_page(path: Path) -> bool:
    """Whether `path` is a regular file holding flowers review's mark near its start."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            return REVIEW_MARK in handle.read(4096)
    except OSError:
        return False


def is_evaluation(path: Path) -> bool:
    """Whether `path` is a regular file of `flowers evaluate`'s figures: its format and job id
    (or, written before the format was recorded, every field evaluate wrote)."""
    figures = read_json_object(path)
    if figures is None:
        return False
    if figures.get("format") is None:
        return all(key in figures for key in ("photo_dir", "architecture", "folds", "recipes",
                                              "fold_of", "request"))
    job = figures.get("job_id")
    return (figures["format"] == EVALUATION_FORMAT and isinstance(job, str)
            and bool(JOB_ID.fullmatch(job)))


def refuse_link(path: Path, what: str) -> None:
    """Refuses (`UsageError`) an output path that is a symbolic link: what flowers would write
    there lands wherever the link points, so the path must name the file or folder itself."""
    if path.is_symlink():
        raise UsageError(f"{what} {path} is a symbolic link (to {os.readlink(path)}): name the "
                         "file or folder itself")


def apart(one: Path, other: Path) -> bool:
    """Whether neither of the two absolute paths is the other or inside it."""
    return one != other and one not in other.parents and other not in one.parents


def check_output_place(output: Path, photo_dir: Path | None = None, what: str = "--output",
                       *, folder: bool = False, bundle: bool = False,
                       file: str | None = None) -> Path:
    """`output` made absolute, or `UsageError` before any work when flowers may not write
    there. `output` is what a command will write, with the folders missing above it: a
    `folder`, a `bundle` folder that may replace a bundle there, or a `file` (which names the
    kind of file to write, "a CSV file", and must go in a folder that exists). Refused: a
    symbolic link (or below a loop of them), a file where a folder goes or a folder where a
    file goes, a `file` in a folder that does not exist, under a file or a folder that cannot
    be written, inside the photo folder, or a bundle or inside one (a `bundle` output may be
    one: `check_bundle_output` says which may be replaced)."""
    refuse_link(output, what)
    try:
        output = output.resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links above it
        raise UsageError(f"{what} {output} cannot be followed ({exc}): name another") from None
    if (folder or bundle) and output.exists() and not output.is_dir():
        raise UsageError(f"{what} {output} is a file, not a folder")
    if file is not None and output.is_dir():
        raise UsageError(f"{what} {output} is a folder; name {file}")
    above = next(parent for parent in output.parents if parent.exists())
    if not above.is_dir():
        raise UsageError(f"{what} {output}: {above} is a file, not a folder")
    if file is not None and above != output.parent:
        raise UsageError(f"{what} {output}: folder {output.parent} does not exist; create it")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {output}: folder {above} is not writable; write elsewhere")
    if photo_dir is not None and (output == photo_dir or photo_dir in output.parents):
        raise UsageError(f"{what} {output} is inside the photo folder; write it elsewhere")
    if (around := bundle_around(output.parent if bundle else output)) is not None:
        raise UsageError(f"{what} {output} is inside the model bundle {around}; "
                         "write it elsewhere")
    return output


def check_replaceable_file(path: Path, what: str) -> None:
    """Refuses (`UsageError`) a path that --overwrite may not replace: anything but a regular
    file, or a file inside a model bundle."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what} {path} exists and is not a regular file: flowers replaces only "
                         "files; name another")
    if (bundle := bundle_around(path.parent)) is not None:
        raise UsageError(f"{what} {path} is inside the model bundle {bundle}: write it elsewhere")


def remove_own_files(folder: Path, names: Iterable[str]) -> bool:
    """Removes the files `names` of `folder` (regular files only; missing ones are fine), then
    the folder if nothing else is left in it; True when it is gone. What flowers did not write
    stays, and the folder with it."""
    for name in names:
        path = folder / name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                path.unlink()
    try:
        folder.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        left = sorted(entry.name for entry in os.scandir(folder))
        log.warning("kept %s: it holds files flowers did not write (%s)", folder,
                    ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""))
        return False
    return True


def _parts_files(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder) if _PARTS_FILES.fullmatch(entry.name)]
    except FileNotFoundError:
        return []


def remove_parts_files(folder: Path) -> None:
    """Removes what label jobs wrote in a parts folder; the folder and anything else stay."""
    for name in _parts_files(folder):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(folder / name).st_mode):
                (folder / name).unlink()


def remove_parts_folder(folder: Path) -> bool:
    """Removes what a label job wrote in its parts folder, and the folder once empty."""
    return remove_own_files(folder, _parts_files(folder))
