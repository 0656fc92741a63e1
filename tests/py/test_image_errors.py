"""Bad inputs to `moxin preprocess`: each must exit with status 1 (not a signal, not 2) and a
message that starts with "error: [image]", names the file and says what is wrong. Where Pillow
is the judge of what is broken (truncated files), the test also checks that Pillow refuses the
same file.
"""
import struct

import numpy as np
import pytest
from PIL import Image

from test_image_common import bmp_bytes, encode, gif_bytes, png_bytes, preprocess, random_image


def _refused(moxin_bin, tmp_path, path, *expected, max_pixels=None):
    proc = preprocess(moxin_bin, path, tmp_path / "out.safetensors", max_pixels=max_pixels,
                      check=False)
    assert proc.returncode == 1, (
        f"{path.name}: exit status {proc.returncode} (want 1; negative = killed by a signal)\n"
        f"{proc.stderr}")
    message = proc.stderr.strip()
    assert message.startswith("error: [image] ") and str(path) in message, message
    for text in expected:
        assert text in message, f"{path.name}: {text!r} not in {message!r}"
    assert not (tmp_path / "out.safetensors").exists()
    return message


def _pillow_refuses(path):
    try:
        with Image.open(path) as im:
            im.convert("RGB")
    except Exception:  # noqa: BLE001 - any refusal counts
        return True
    return False


def _noise_files(rng):
    """Valid files of random noise (so that compression leaves them large) in each format."""
    rgb = random_image(rng, "RGB", int(rng.integers(40, 90)), int(rng.integers(40, 90)))
    return {
        "baseline.jpg": encode(rgb, "JPEG", quality=90),
        "progressive.jpg": encode(rgb, "JPEG", quality=90, progressive=True),
        "plain.png": encode(rgb, "PNG"),
        "adam7.png": png_bytes(np.asarray(rgb), 2, 8, interlace=True),
        "lossy.webp": encode(rgb, "WEBP", quality=90),
        "lossless.webp": encode(rgb, "WEBP", lossless=True, method=0),
        "plain.gif": encode(rgb.quantize(256), "GIF"),
        "rgb.bmp": encode(rgb, "BMP"),
        "rle8.bmp": bmp_bytes(8, 8, 8, None, compression=1, palette=b"\0" * 1024,
                              data=bytes([8, 1, 0, 0] * 4)),  # 4 of its 8 rows
    }


def test_truncated_files(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)
    for name, data in _noise_files(rng).items():
        # One cut in the headers, one in the pixel data.
        for cut in (int(rng.integers(1, 40)),
                    int(rng.integers(len(data) // 10, len(data) * 9 // 10))):
            path = tmp_path / f"truncated-{cut}-{name}"
            path.write_bytes(data[:cut])
            assert _pillow_refuses(path), f"{path.name}: Pillow decodes it, the test is wrong"
            _refused(moxin_bin, tmp_path, path)


def test_garbage(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)
    garbage = bytes(rng.integers(0, 256, int(rng.integers(1, 4096)), np.uint8))
    garbage = b"\0" + garbage[1:]  # no image signature starts with a zero byte
    path = tmp_path / "garbage.jpg"  # the extension must not matter
    path.write_bytes(garbage)
    message = _refused(moxin_bin, tmp_path, path, "not a supported image format")
    assert garbage[:4].hex(" ") in message, message  # names the first bytes
    # Garbage behind each format's signature.
    for name, signature in (("jpeg", b"\xff\xd8\xff"), ("png", b"\x89PNG\r\n\x1a\n"),
                            ("gif", b"GIF89a"), ("webp", b"RIFF\x10\0\0\0WEBP"), ("bmp", b"BM")):
        path = tmp_path / f"garbage.{name}"
        path.write_bytes(signature + garbage)
        assert _pillow_refuses(path)
        _refused(moxin_bin, tmp_path, path)


def test_empty_missing_and_directory(moxin_bin, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _refused(moxin_bin, tmp_path, empty, "empty")
    _refused(moxin_bin, tmp_path, tmp_path / "does-not-exist.jpg", "cannot open",
             "No such file")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    _refused(moxin_bin, tmp_path, folder, "directory")


def _jpeg_with_size(data, width, height):
    """Rewrites the frame size in a JPEG's SOF0 marker."""
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def test_zero_size(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)
    rgb = random_image(rng, "RGB", 16, 16)
    cases = {
        "zero.png": png_bytes(np.zeros((1, 1, 3), int), 2, 8, size=(0, 5)),
        "zero.jpg": _jpeg_with_size(encode(rgb, "JPEG"), 16, 0),
        "zero.gif": gif_bytes((0, 0), (0, 0), np.zeros((0, 0), int),
                              global_colors=[(0, 0, 0), (1, 1, 1)]),
        "zero.bmp": bmp_bytes(0, 7, 24, [b""] * 7),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _refused(moxin_bin, tmp_path, path)


def test_pixel_limit(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(20, 100)), int(rng.integers(20, 100))
    rgb = random_image(rng, "RGB", w, h)
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
        path = tmp_path / f"image.{fmt.lower()}"
        path.write_bytes(encode(rgb.quantize(256) if fmt == "GIF" else rgb, fmt))
        _refused(moxin_bin, tmp_path, path, f"{w}x{h}", f"limit of {w * h - 1}",
                 "raise --max-pixels", max_pixels=w * h - 1)
        preprocess(moxin_bin, path, tmp_path / "ok.safetensors", max_pixels=w * h)


@pytest.mark.parametrize("fmt", ["png", "bmp", "jpeg", "gif"])
def test_pixel_limit_checked_before_decoding(moxin_bin, tmp_path, fmt):
    """Headers announcing 60000 x 60000 pixels with (almost) no pixel data behind them: the
    refusal must come from the limit (Pillow's decompression-bomb guard), before decoding."""
    side = 60000
    if fmt == "png":
        data = png_bytes(np.zeros((1, 1, 3), int), 2, 8, size=(side, side))
    elif fmt == "bmp":
        data = bmp_bytes(side, side, 24, [], data=b"")
    elif fmt == "jpeg":
        data = _jpeg_with_size(encode(Image.new("RGB", (8, 8)), "JPEG"), side, side)
    else:
        data = gif_bytes((side, side), (0, 0), np.zeros((1, 1), int),
                         global_colors=[(0, 0, 0), (1, 1, 1)])
    path = tmp_path / f"bomb.{fmt}"
    path.write_bytes(data)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path).convert("RGB")
    _refused(moxin_bin, tmp_path, path, f"{side}x{side}", "raise --max-pixels")


def test_bmp_layouts_pillow_refuses(moxin_bin, tmp_path):
    """BMPs Pillow cannot open are refused too, with the reason."""
    row = [b"\0" * 12] * 4
    palette = bytes(range(256)) * 4  # not a gray ramp
    cases = {
        "header-size-20.bmp": (bmp_bytes(4, 4, 24, row)[:14] + struct.pack("<I", 20)
                               + b"\0" * 200, "header size 20"),
        "2-bit.bmp": (bmp_bytes(4, 4, 2, [b"\0"] * 4, palette=palette[:16]), "pixel depth"),
        "64-bit.bmp": (bmp_bytes(4, 4, 64, [b"\0" * 32] * 4), "pixel depth"),
        "jpeg-compression.bmp": (bmp_bytes(4, 4, 24, row, compression=4), "compression (4)"),
        "alphabitfields.bmp": (bmp_bytes(4, 4, 32, [b"\0" * 16] * 4, compression=6),
                               "compression (6)"),
        "odd-masks.bmp": (bmp_bytes(4, 4, 32, [b"\0" * 16] * 4, compression=3,
                                    masks=(0xFF, 0xFF00, 0xFF0000)), "bitfields layout"),
        "rle8-24-bit.bmp": (bmp_bytes(4, 4, 24, None, compression=1,
                                      data=bytes([4, 1, 0, 0] * 4 + [0, 1])), "24-bit pixels"),
        "300-colors.bmp": (bmp_bytes(4, 4, 8, [b"\0" * 4] * 4, colors=300,
                                     palette=palette + palette[:176]), "300 colors"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert _pillow_refuses(path), f"{name}: Pillow decodes it, the test is wrong"
        _refused(moxin_bin, tmp_path, path, reason)
