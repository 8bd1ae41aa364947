"""The layout: one importable name installed, and imports that only go downward."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = {"cli": "flowers.cli", "worker": "flowers.worker", "models": "flowers.models",
            "review": "flowers.review"}
SUB_PACKAGES = tuple(f"flowers.models.{name}"
                     for name in ("runtime", "caches", "training", "codelab", "export"))
# What each part may not import (module-level or inside functions alike).
FORBIDDEN = {
    "flowers.models": ("flowers.worker", "flowers.cli", "flowers.review", "celery"),
    "flowers.review": ("flowers.cli", "celery"),
    "flowers.worker": ("flowers.cli",),
    "flowers.models.runtime": SUB_PACKAGES[1:],
    "flowers.models.caches": SUB_PACKAGES[2:],
    "flowers.models.training": SUB_PACKAGES[3:],
    "flowers.models.codelab": ("flowers.models.caches", "flowers.models.training",
                               "flowers.models.export"),
}
# The longest a module may grow before it is split.
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name, from the folders at the root."""
    found = {"flowers": REPO / "flowers" / "__init__.py"}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    """The modules `path` imports, anywhere in it, absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_imports_upward_or_across_its_rule() -> None:
    found = modules()
    broken = []
    for name, path in found.items():
        if name.count(".") == 2 and name.startswith("flowers.models.") and \
                not name.startswith(SUB_PACKAGES):  # where both flows meet: below every one
            broken += [f"{name} imports {target}" for target in imports(path)
                       if target.startswith(SUB_PACKAGES)]
        if name.startswith("flowers.review"):  # the results CSV's format, not the Celery app
            broken += [f"{name} imports {target}" for target in imports(path)
                       if target.startswith("flowers.worker")
                       and not target.startswith("flowers.worker.results")]
        for part, forbidden in FORBIDDEN.items():
            if name == part or name.startswith(part + "."):
                broken += [f"{name} imports {target}" for target in imports(path)
                           if target.startswith(forbidden)]
        old = {target for target in imports(path)
               if target.split(".")[0] in PACKAGES}  # `models.x`, not `flowers.models.x`
        broken += [f"{name} imports {target} (outside the flowers namespace)" for target in old]
    assert not broken, "\n".join(broken)


def test_the_wheel_installs_one_top_level_name(tmp_path: Path) -> None:
    """`pip install .` puts `flowers` (and its metadata) in site-packages and nothing else:
    no `models` or `cli` of ours to clash with another distribution's."""
    source = tmp_path / "source"  # a copy: building in place would leave build/ behind
    for name in ("pyproject.toml", "README.md", "flowers", *PACKAGES):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(tmp_path), str(source)], capture_output=True, text=True,
        timeout=300)
    if built.returncode != 0:
        pytest.fail(f"pip wheel failed: {built.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("flowers-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "flowers", next(name.split("/")[0] for name in names if ".dist-info/" in name)}
    for name, path in modules().items():  # every module, so no sub-package is left out
        module = name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
        assert module in names, module
    assert "flowers/review/templates/base.html" in names
    installed = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(installed), str(wheel)], check=True, capture_output=True, timeout=300)
    probe = ("import importlib.util, sys; "
             "print(importlib.util.find_spec('flowers.cli.main') is not None, "
             "importlib.util.find_spec('models') is None, importlib.util.find_spec('cli') is None)")
    shown = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                            f"{str(installed)!r}); {probe}"], capture_output=True, text=True,
                           cwd=tmp_path, check=True)
    assert shown.stdout.split() == ["True", "True", "True"], shown.stderr


def test_no_module_is_over_the_line_limit() -> None:
    """Past MAX_LINES a module holds more than one thing: split it by what it does."""
    paths = [*modules().values(), *(REPO / "tests").glob("*.py"), *(REPO / "bench").rglob("*.py")]
    long = {str(path.relative_to(REPO)): lines for path in paths
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
