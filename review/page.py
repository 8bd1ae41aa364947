"""A template name and its values in, one HTML file out, escaped by Jinja2 and written atomically.

Every value printed into a page is escaped (autoescape) and first made readable: a file name
with undecodable bytes (kept as surrogates when the CSV was read) shows them as `\\xNN`, so
the page is always valid UTF-8. The pages carry a Content-Security-Policy that allows no
script and no network at all: even a name that escaped escaping could not run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from flowers.models.atomic import write_atomically

log = logging.getLogger(__name__)


def readable(text: str) -> str:
    """`text` with undecodable bytes (surrogates from `surrogateescape`) shown as `\\xNN`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _finalize(value: Any) -> Any:
    # Markup (a macro's output) is already made of finalized, escaped values.
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return readable(value)
    return value


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("flowers.review", "templates"),
    autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
    undefined=jinja2.StrictUndefined,
    finalize=_finalize,
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters["percent"] = percent


def write_page(output: Path, template: str, **values: Any) -> int:
    """Renders `template` with `values` into `output` (renamed into place); returns its bytes."""
    html = _environment.get_template(template).render(**values)
    data = html.encode("utf-8")
    write_atomically(output, lambda handle: handle.write(data), durable=False)
    log.info("wrote %s (%d bytes)", output, len(data))
    return len(data)
