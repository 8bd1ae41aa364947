"""One progress line on stderr for a job: phase, done/total, a bar, rate and ETA.

On a terminal the line is redrawn in place. Elsewhere (a log file, CI, a pipe) each update is a
line of its own, printed when the phase changes and then at least every `LOG_SECONDS` or each
1/`LOG_STEPS` of the phase's total, whichever comes first, so a log of a long phase is never
silent for long and never floods: a dozen lines a phase at most, plus one every 10 s. (tqdm and
rich draw bars; neither writes this kind of log line.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import click

BAR_WIDTH = 24
# Off a terminal: a line at least this often, and at each 1/LOG_STEPS of the phase's total.
LOG_SECONDS = 10.0
LOG_STEPS = 10


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
    """Redraws one line on a terminal; elsewhere prints log lines (see the module docstring)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, unit: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.unit = unit
        self.clock = clock
        self.phase: str | None = None
        self.width = 0
        self.logged_at = 0.0  # when the last log line was printed
        self.logged_step = -1  # the step of the total it reached, in 1/LOG_STEPS

    def show(self, record: dict[str, Any]) -> None:
        if not self.enabled or record.get("state") in ("succeeded", "failed"):
            return
        text = describe(record, self.unit)
        if self.tty:
            click.echo("\r" + text.ljust(self.width), file=self.stream, nl=False)
            self.width = len(text)
        elif self._log_now(record):
            click.echo(text, file=self.stream)
        self.phase = record.get("phase")

    def _log_now(self, record: dict[str, Any]) -> bool:
        """Whether a log line is due: a new phase, LOG_SECONDS since the last line, or the next
        1/LOG_STEPS of the total reached."""
        now, total = self.clock(), int(record.get("total") or 0)
        step = min(int(record.get("done") or 0), total) * LOG_STEPS // total if total > 0 else 0
        if (record.get("phase") != self.phase or now - self.logged_at >= LOG_SECONDS
                or step > self.logged_step):
            self.logged_at, self.logged_step = now, step
            return True
        return False

    def close(self) -> None:
        if self.enabled and self.tty and self.width:
            click.echo(file=self.stream)
            self.width = 0
