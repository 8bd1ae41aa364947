"""Decoding every kind of photo to RGB pixels of the network's size, and refusing bad ones."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.decode import MAX_PIXELS, block_factor, decode_image, load_image, read_bytes
from models.errors import ImageDecodeError


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


def test_decompression_bomb_is_refused_before_decoding() -> None:
    side = int(MAX_PIXELS**0.5) + 100
    bomb = encode(Image.new("1", (side, side)), "PNG")
    assert len(bomb) < 5_000_000
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(bomb, 32, "bomb.png")


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

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ImageDecodeError, match="permission denied; make it readable"):
        read_bytes(path)


def test_a_50_megapixel_jpeg_decodes_in_bounded_memory(tmp_path: Path) -> None:
    """JPEGs decode at a reduced scale: far less memory than the 150 MB of full-size pixels."""
    big = tmp_path / "big.jpg"
    Image.new("RGB", (8660, 5774), (30, 120, 60)).save(big, quality=80)
    code = (
        "import resource, sys; from pathlib import Path; from models.decode import load_image; "
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
