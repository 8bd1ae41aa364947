"""One progress line on stderr for a job: phase, done/total, a bar, rate and ETA."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import click

BAR_WIDTH = 24


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe(record: dict[str, Any], unit: str = "") -> str:
    """`phase  done/total [####    ] rate/s ETA` for a job record."""
    phase, done, total = record.get("phase", ""), record["done"], record["total"]
    if total <= 0:
        return f"{phase}..."
    filled = int(BAR_WIDTH * min(done, total) / total)
    text = f"{phase:<12} {done}/{total} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"
    rate = float(record.get("rate", 0) or 0)
    if rate > 0 and done < total:
        text += f" {rate:.1f}{unit}/s ETA {format_seconds((total - done) / rate)}"
    elif rate > 0:
        text += f" {rate:.1f}{unit}/s"
    return text


class ProgressLine:
    """Redraws one line on a terminal; elsewhere prints a line per phase."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, unit: str = "") -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.unit = unit
        self.phase: str | None = None
        self.width = 0

    def show(self, record: dict[str, Any]) -> None:
        if not self.enabled or record.get("state") in ("succeeded", "failed"):
            return
        text = describe(record, self.unit)
        if self.tty:
            click.echo("\r" + text.ljust(self.width), file=self.stream, nl=False)
            self.width = len(text)
        elif record.get("phase") != self.phase:
            click.echo(text, file=self.stream)
        self.phase = record.get("phase")

    def close(self) -> None:
        if self.enabled and self.tty and self.width:
            click.echo(file=self.stream)
            self.width = 0
