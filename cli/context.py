"""The state every command shares through click's context object."""

from __future__ import annotations

from dataclasses import dataclass

from flowers.worker.settings import Settings


@dataclass
class CliContext:
    """Settings from the environment and whether to show tracebacks."""

    settings: Settings
    debug: bool = False
    # How an error tells the user to resume: label-dir --overwrite resumes without the flag.
    again: str = "run the same command again"
