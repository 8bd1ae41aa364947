"""Decoding every kind of photo to RGB pixels of the network's size, and refusing bad ones."""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flowers.models.decode import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    NAME_MAX,
    PATH_MAX,
    block_factor,
    decode_image,
    load_image,
    read_bytes,
)
from flowers.models.errors import ImageDecodeError
from tests.test_dataset import deep_folder


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def halves(size: tuple[int, int] = (64, 32)) -> Image.Image:
    """Red left half, blue right half."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


def test_jpeg_is_resized_to_a_square_rgb_array(flower_photos: Path) -> None:
    photo = next((flower_photos / "daisy").iterdir())
    pixels = load_image(photo, 224)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert 20 < pixels.mean() < 235


def stripes(size: tuple[int, int], vertical: bool) -> Image.Image:
    """Alternating one-pixel black and white stripes."""
    ramp = np.arange(size[0] if vertical else size[1]) % 2 * 255
    grey = np.tile(ramp, (size[1], 1)) if vertical else np.tile(ramp[:, None], (1, size[0]))
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def test_shrinking_under_threefold_takes_nearest_pixels() -> None:
    # A ramp of 16 grey levels halved: every value is one of the ramp's own, none blended.
    levels = np.arange(0, 256, 16, dtype=np.uint8)
    ramp = Image.fromarray(np.tile(levels, (16, 1))).convert("RGB")
    shrunk = decode_image(encode(ramp, "PNG"), 8)
    assert set(np.unique(shrunk)) <= set(levels.tolist())
    assert len(np.unique(shrunk[0, :, 0])) == 8


def test_shrinking_threefold_or_more_averages_blocks_first() -> None:
    # One-pixel stripes shrunk fourfold: each block of four holds two black and two white.
    shrunk = decode_image(encode(stripes((32, 32), vertical=True), "PNG"), 8)
    assert np.all(np.abs(shrunk.astype(int) - 128) <= 1)
    assert [block_factor(n, 224) for n in (223, 224, 671, 672, 895, 896)] == [1, 1, 1, 3, 3, 4]


def test_growing_interpolates_and_each_axis_goes_its_own_way() -> None:
    # Growing 2 pixels to 8 passes through grey between black and white, not in blocks.
    grown = decode_image(encode(stripes((2, 2), vertical=True), "PNG"), 8)
    assert len(np.unique(grown[0, :, 0])) > 3
    # Shrinking across, growing down.
    mixed = decode_image(encode(stripes((32, 2), vertical=True), "PNG"), 8)
    assert np.all(np.abs(mixed.astype(int) - 128) <= 1)
    mixed = decode_image(encode(stripes((32, 2), vertical=False), "PNG"), 8)
    assert len(np.unique(mixed[:, 0, 0])) > 3 and np.ptp(mixed[0, :, 0]) <= 1


def test_png_alpha_is_composited_over_white() -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    pixels = decode_image(encode(image, "PNG"), 4)
    assert (pixels == 255).all()


def test_palette_gif_animated_gif_greyscale_and_cmyk() -> None:
    frames = [Image.new("P", (10, 10), i) for i in (1, 2)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(animated.getvalue(), 5).shape == (5, 5, 3)
    grey = decode_image(encode(Image.new("L", (10, 10), 77), "PNG"), 5)
    assert (grey == 77).all()
    cmyk = decode_image(encode(Image.new("CMYK", (10, 10), (0, 255, 255, 0)), "JPEG"), 5)
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60


def test_16_bit_png_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.full((10, 10), 32768, dtype=np.uint16))
    pixels = decode_image(encode(image, "PNG"), 5)
    assert 120 <= pixels.mean() <= 135


def test_float_pixels_that_are_not_numbers_are_black_without_a_warning() -> None:
    import warnings

    values = np.full((10, 10), 200.0, dtype=np.float32)
    values[:5] = [np.nan, np.inf, -np.inf, np.nan, np.inf, 7, 7, 7, 7, 7]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast"
        pixels = decode_image(encode(Image.fromarray(values, "F"), "TIFF"), 10)
    assert pixels[:5, :5].max() == 0 and pixels[5:].min() == 200
    assert pixels[:5, 5:].tolist() == [[[7] * 3] * 5] * 5


def test_exif_rotation_is_applied() -> None:
    stored = halves().transpose(Image.Transpose.ROTATE_270)  # red half now at the top
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation 8: turn 90 degrees counter-clockwise to view
    pixels = decode_image(encode(stored, "JPEG", exif=exif.tobytes()), 32)
    assert pixels[:, :8, 0].mean() > 200, "red should be back on the left"
    assert pixels[:, -8:, 2].mean() > 200, "blue should be back on the right"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text\n", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, "not an image"),
    ],
)
def test_bad_bytes_give_a_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError, match=reason) as caught:
        load_image(path, 32)
    assert caught.value.path == str(path)


def test_truncated_jpeg_is_refused(flower_photos: Path, tmp_path: Path) -> None:
    photo = next((flower_photos / "roses").iterdir())
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photo.read_bytes()[:2000])
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        load_image(truncated, 224)


@pytest.mark.parametrize("times", [1, 2])
def test_decompression_bomb_is_refused_before_decoding(times: int) -> None:
    # Pillow refuses over its limit with a warning, over twice it with an error, each message
    # quoting its own figure: either way the row names flowers' one limit and the photo's size.
    side = int((times * MAX_PIXELS) ** 0.5) + 100
    bomb = encode(Image.new("1", (side, side)), "PNG")
    assert len(bomb) < 5_000_000
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(bomb, 32, "bomb.png")
    assert str(refused.value) == (
        f"bomb.png: {side * side:,} pixels is over the {MAX_PIXELS:,} pixel limit (possible "
        "decompression bomb); shrink the photo to label it")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not found"):
        read_bytes(tmp_path / "gone.jpg")
    with pytest.raises(ImageDecodeError, match="folder"):
        read_bytes(tmp_path)


def test_unreadable_file_names_the_permission_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, which reads any file: simulate what a user without rights gets.
    path = tmp_path / "locked.jpg"
    path.write_bytes(b"x")

    real_open = os.open

    def denied(file: str | Path, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ImageDecodeError, match="permission denied; make it readable"):
        read_bytes(path)


def read_in_time(path: Path, seconds: float = 20) -> ImageDecodeError:
    """The error `read_bytes(path)` raises, failing the test if the read blocks (a blocked read
    of a named pipe is set free by opening its other end, so no thread is left behind)."""
    outcome: list[BaseException | bytes] = []
    reader = threading.Thread(target=lambda: outcome.append(_read_or_error(path)), daemon=True)
    reader.start()
    reader.join(seconds)
    if reader.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(seconds)
        pytest.fail(f"reading {path.name} blocked for {seconds} s")
    assert isinstance(outcome[0], ImageDecodeError), outcome
    assert outcome[0].path == str(path)
    return outcome[0]


def _read_or_error(path: Path) -> BaseException | bytes:
    try:
        return read_bytes(path)
    except Exception as exc:
        return exc


def test_a_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    error = read_in_time(tmp_path / "pipe.jpg")
    assert error.reason == ("not a regular file (a named pipe): remove it or move it out of "
                            "the folder")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "pipe.jpg")
    assert "(a symbolic link to a named pipe)" in read_in_time(tmp_path / "link.jpg").reason
    with pytest.raises(ImageDecodeError, match="named pipe"):
        load_image(tmp_path / "pipe.jpg", 32)


def test_a_pipe_swapped_in_after_the_check_is_refused_once_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file was regular when it was checked, and is a pipe by the time it is opened.
    regular = os.stat(touch(tmp_path / "regular.jpg"))
    os.mkfifo(tmp_path / "pipe.jpg")
    monkeypatch.setattr(os, "stat", lambda path, *args, **kwargs: regular)
    assert "a named pipe" in read_in_time(tmp_path / "pipe.jpg").reason


def test_a_read_that_stalls_is_given_up_on_and_the_next_photos_go_on(
    flower_photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled file system (a hung NFS or FUSE mount) blocks a read in the kernel; here the
    read of one photo blocks until the test ends. Its row says so after the time limit, and the
    photos after it are labelled."""
    from flowers.models import decode
    from flowers.models.runtime.predict import LabelOptions, LoadedModel, label_photos

    stalled = touch(tmp_path / "stalled.jpg")
    released = threading.Event()
    original = decode._read_bytes

    def blocking(path: Path) -> bytes:
        if path == stalled:
            released.wait(30)
        return original(path)

    monkeypatch.setattr(decode, "_read_bytes", blocking)
    monkeypatch.setattr(decode, "READ_SECONDS", 0.5)
    good = sorted((flower_photos / "daisy").glob("*.jpg"))[:2]
    model = LoadedModel("b", ["a", "b"], 32, lambda batch: np.tile([0.25, 0.75], (len(batch), 1)))
    try:
        started = time.perf_counter()
        rows = list(label_photos([stalled, *good], model, LabelOptions(1, 2), threads=1))
        assert time.perf_counter() - started < 10
    finally:
        released.set()
    assert rows[0].error == ("not read within 0.5 s (a stalled network or FUSE file system?): "
                             "check the file system, then label it again")
    assert [row.labels for row in rows[1:]] == [[("b", 0.75)]] * 2
    assert read_bytes(stalled, seconds=5) == stalled.read_bytes()  # answered: read as before


def test_a_device_or_a_link_to_one_is_refused_unread(tmp_path: Path) -> None:
    # /dev/null, not an endless device: a regression must fail the test, not fill the memory.
    (tmp_path / "device.jpg").symlink_to("/dev/null")
    assert read_in_time(tmp_path / "device.jpg").reason == (
        "not a regular file (a symbolic link to a character device): remove it or move it out "
        "of the folder"
    )
    assert "(a character device)" in read_in_time(Path("/dev/null")).reason


def test_a_socket_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a socket's path is limited to about 100 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("socket.jpg")
        server.listen()
        assert "(a socket)" in read_in_time(tmp_path / "socket.jpg").reason


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    assert 3 * MAX_PIXELS < MAX_FILE_BYTES < 2**30  # an uncompressed 8-bit RGB picture fits
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:  # sparse: takes no disk space
        handle.truncate(MAX_FILE_BYTES + 1)
    error = read_in_time(huge)
    assert error.reason == (f"file of {MAX_FILE_BYTES + 1:,} bytes is over the "
                            f"{MAX_FILE_BYTES:,} byte limit for a photo; shrink or recompress "
                            "it to label it")


def test_a_path_longer_than_the_system_allows_names_the_reason(tmp_path: Path) -> None:
    deep = deep_folder(tmp_path, PATH_MAX, {"photo.jpg": b"x"})
    photo = deep / "photo.jpg"
    reason = read_in_time(photo).reason
    assert reason.startswith(f"path too long: {len(os.fsencode(photo)):,} bytes, over the "
                             f"{PATH_MAX:,} the system allows")
    long_name = tmp_path / ("n" * (NAME_MAX + 1) + ".jpg")
    assert read_in_time(long_name).reason.startswith(
        f"path too long: a name in it is {NAME_MAX + 5:,} bytes, over the {NAME_MAX:,}"
    )


def test_a_looping_link_names_the_loop(tmp_path: Path) -> None:
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    assert "symbolic links" in read_in_time(tmp_path / "loop.jpg").reason


def touch(path: Path, data: bytes = b"x") -> Path:
    path.write_bytes(data)
    return path


def test_a_50_megapixel_jpeg_decodes_in_bounded_memory(tmp_path: Path) -> None:
    """JPEGs decode at a reduced scale: far less memory than the 150 MB of full-size pixels."""
    big = tmp_path / "big.jpg"
    Image.new("RGB", (8660, 5774), (30, 120, 60)).save(big, quality=80)
    code = (
        "import resource, sys; from pathlib import Path; "
        "from flowers.models.decode import load_image; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "pixels = load_image(Path(sys.argv[1]), 224); "
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "print(pixels.shape, (after - before) // 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    shape, grown_mb = out.stdout.rsplit(" ", 1)
    assert shape == "(224, 224, 3)"
    assert int(grown_mb) < 40, f"decoding grew the process by {grown_mb} MB"


def test_a_link_that_leads_nowhere_is_named_as_such(tmp_path: Path) -> None:
    link = tmp_path / "photo.jpg"
    link.symlink_to(tmp_path / "moved-away.jpg")
    with pytest.raises(ImageDecodeError) as raised:
        load_image(link, 224)
    assert raised.value.reason == (f"a symbolic link to {tmp_path / 'moved-away.jpg'}, which "
                                   "does not exist: fix or remove the link")
    with pytest.raises(ImageDecodeError) as raised:
        load_image(tmp_path / "never-there.jpg", 224)
    assert raised.value.reason == "file not found (deleted or moved?)"
