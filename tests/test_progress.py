"""The progress line: redrawn on a terminal; off one, log lines at each phase, at least every
10 s and at each tenth of the phase, never one per update."""

from __future__ import annotations

import io

from flowers.cli.progress import ProgressLine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_line_a_phase_a_tenth_and_ten_seconds() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = ProgressLine(stream=stream, unit=" photos", clock=clock)
    progress.show({"phase": "activations", "done": 0, "total": 1000, "rate": 0})
    for done in range(1, 1001):  # an update a photo, 0.05 s apart: 50 s in all
        clock.now += 0.05
        progress.show({"phase": "activations", "done": done, "total": 1000, "rate": 20.0})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("activations  0/1000")
    assert len(lines) == 11, lines  # the phase's start, then each tenth (each 5 s here)
    assert [line.split()[1] for line in lines[1:]] == [f"{n}/1000" for n in range(100, 1001, 100)]
    assert "20.0 photos/s ETA 45s" in lines[1]

    clock.now += 1
    progress.show({"phase": "training", "done": 1, "total": 690, "rate": 0.01})
    for step in range(2, 6):  # a slow phase: an update every 4 s, no tenth reached
        clock.now += 4
        progress.show({"phase": "training", "done": step, "total": 690, "rate": 0.25})
    training = stream.getvalue().splitlines()[11:]
    assert [line.split()[1] for line in training] == ["1/690", "4/690"], training  # 0 s, 12 s


def test_on_a_terminal_the_line_is_redrawn() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = ProgressLine(stream=stream)
    for done in range(3):
        progress.show({"phase": "labelling", "done": done, "total": 3, "rate": 1.0})
    progress.close()
    assert stream.getvalue().count("\r") == 3 and stream.getvalue().endswith("\n")
