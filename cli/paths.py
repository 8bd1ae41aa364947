"""Path arguments and options: click's Path, refusing what a shell slip gives (exit 2, one line
naming the option): an empty string (`""` or an unset variable, which would be the current
folder) and, for what flowers writes, `-` (which reads as standard output but would be a file
named `-`) and a name too long for the files flowers writes beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from flowers.models.atomic import BESIDE_NAME_BYTES
from flowers.worker.results import JOB_RECORD_SUFFIX

# What flowers adds to an output's name for the files it writes beside it, at most: a label
# job's record, written whole (".NAME.job.json.<12 hex digits>.tmp").
OUTPUT_NAME_ROOM = len(JOB_RECORD_SUFFIX) + BESIDE_NAME_BYTES


class PathParam(click.Path):
    """click.Path with `path_type=Path`, refusing an empty path; where `output`, also `-`, and
    (unless the files go inside it, not `beside`) a name without room for those beside it."""

    def __init__(self, *, output: bool = False, beside: bool = True, **kwargs: Any) -> None:
        super().__init__(path_type=Path, **kwargs)
        self.output, self.beside = output, output and beside

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str | Path) and str(value) == "":
            self.fail("the path is empty: name a file or folder (`.` for the current folder)",
                      param, ctx)
        if self.output and isinstance(value, str | Path) and str(value) == "-":
            self.fail("flowers writes files, not standard output: name a file (`./-` for a "
                      "file named -)", param, ctx)
        path = super().convert(value, param, ctx)
        if self.beside and isinstance(path, Path):
            size, longest = len(os.fsencode(path.name)), name_max(path.parent) - OUTPUT_NAME_ROOM
            if size > longest:
                self.fail(f"the name {path.name[:40]!r}... is {size} bytes; flowers names files "
                          f"beside it with up to {OUTPUT_NAME_ROOM} more, so it may have at most "
                          f"{longest}: shorten it", param, ctx)
        return path


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, the file system of `folder` (or of its nearest
    existing ancestor) allows; 255 where none can be asked."""
    for place in (folder.absolute(), *folder.absolute().parents):
        try:
            return os.pathconf(place, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255
