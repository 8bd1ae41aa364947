"""Number options: a float option takes numbers only (`nan` and `inf` parse as floats, and pass
every range check by comparing false), each refusal one line naming the option (exit 2)."""

from __future__ import annotations

import math
from typing import Any

import click


class Number(click.ParamType):
    """A finite float, within [low, high] where given."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        number = value if isinstance(value, float) else click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        if (self.low is not None and number < self.low) or \
                (self.high is not None and number > self.high):
            self.fail(f"{number:g} is not in the range {self._range()}", param, ctx)
        return float(number)

    def _range(self) -> str:
        low = "" if self.low is None else f"{self.low:g}<="
        high = "" if self.high is None else f"<={self.high:g}"
        return f"{low}x{high}"


NUMBER = Number()
