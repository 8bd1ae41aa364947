"""FLOWERS_ALLOWED_ROOTS: paths resolved (.., symlinks) before they are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowers.models.errors import PathNotAllowedError
from flowers.worker.confine import check_allowed, photo_guard
from flowers.worker.settings import Settings

pytestmark = pytest.mark.hardening


def test_roots_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOWERS_ALLOWED_ROOTS": f"{tmp_path}/a:{tmp_path}/b"})
    assert settings.allowed_roots == (tmp_path / "a", tmp_path / "b")
    assert Settings.from_env({}).allowed_roots == ()


def test_paths_inside_pass_and_outside_are_refused(tmp_path: Path) -> None:
    roots = ((tmp_path / "data").resolve(),)
    (tmp_path / "data" / "photos").mkdir(parents=True)
    assert check_allowed(tmp_path / "data" / "photos", roots, "photo folder") == roots[0] / "photos"
    assert check_allowed(tmp_path / "data" / "new.csv", roots, "output") == roots[0] / "new.csv"
    with pytest.raises(PathNotAllowedError, match=r"photo folder .* is outside"):
        check_allowed(tmp_path / "data" / ".." / "secrets", roots, "photo folder")
    with pytest.raises(PathNotAllowedError, match="outside"):
        check_allowed("/etc", roots, "bundle")
    assert check_allowed("/etc", (), "bundle") == Path("/etc")


def test_symlinks_are_resolved_before_the_check(tmp_path: Path) -> None:
    roots = ((tmp_path / "data").resolve(),)
    (tmp_path / "data").mkdir()
    (tmp_path / "outside.jpg").write_bytes(b"x")
    (tmp_path / "data" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (tmp_path / "data" / "dirlink").symlink_to(tmp_path)
    with pytest.raises(PathNotAllowedError):
        check_allowed(tmp_path / "data" / "dirlink" / "outside.jpg", roots, "photo")
    guard = photo_guard(roots)
    assert guard is not None
    refusal = guard(tmp_path / "data" / "link.jpg")
    assert refusal == "refused: resolves outside FLOWERS_ALLOWED_ROOTS"
    (tmp_path / "data" / "real.jpg").write_bytes(b"x")
    assert guard(tmp_path / "data" / "real.jpg") is None
    assert photo_guard(()) is None
