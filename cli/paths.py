"""Path arguments and options: click's Path, refusing what a shell slip gives (exit 2, one line
naming the option): an empty string (`""` or an unset variable, which would be the current
folder) and, for what flowers writes, `-` (which reads as standard output but would be a file
named `-`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class PathParam(click.Path):
    """click.Path with `path_type=Path`, refusing an empty path, and `-` where `output`."""

    def __init__(self, *, output: bool = False, **kwargs: Any) -> None:
        super().__init__(path_type=Path, **kwargs)
        self.output = output

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str | Path) and str(value) == "":
            self.fail("the path is empty: name a file or folder (`.` for the current folder)",
                      param, ctx)
        if self.output and isinstance(value, str | Path) and str(value) == "-":
            self.fail("flowers writes files, not standard output: name a file (`./-` for a "
                      "file named -)", param, ctx)
        return super().convert(value, param, ctx)

