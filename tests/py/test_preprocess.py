"""`moxin preprocess` on real photographs against Pillow + numpy (docs/model.md section 2).

Every run re-encodes scikit-image's bundled photographs in each format variant (JPEG qualities,
chroma subsamplings and progressive; PNG colour types; lossy and lossless WebP; GIF; BMP) at
random crops and sizes drawn from the seed: tiny sources (upscaling), sides of exactly 224 (a
skipped resize pass), medium and large ones (downscaling by up to ~13x).
"""
import numpy as np
import pytest
from PIL import Image

from test_image_common import PHOTOS, assert_matches_pillow, encode, photo


def _rgba(im, rng):
    rgba = im.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, im.size[::-1], dtype=np.uint8)))
    return rgba


def _quality(rng):
    return int(rng.integers(30, 101))


ENCODINGS = {
    "jpeg-420": lambda im, rng: ("jpg", encode(im.convert("RGB"), "JPEG", quality=_quality(rng),
                                               subsampling=2)),
    "jpeg-422": lambda im, rng: ("jpg", encode(im.convert("RGB"), "JPEG", quality=_quality(rng),
                                               subsampling=1)),
    "jpeg-444": lambda im, rng: ("jpg", encode(im.convert("RGB"), "JPEG", quality=_quality(rng),
                                               subsampling=0)),
    "jpeg-progressive": lambda im, rng: ("jpg", encode(
        im.convert("RGB"), "JPEG", quality=_quality(rng), progressive=True, optimize=True,
        subsampling=int(rng.integers(0, 3)))),
    "jpeg-gray": lambda im, rng: ("jpg", encode(im.convert("L"), "JPEG", quality=_quality(rng))),
    "png-rgb": lambda im, rng: ("png", encode(im.convert("RGB"), "PNG", compress_level=1)),
    "png-gray": lambda im, rng: ("png", encode(im.convert("L"), "PNG", compress_level=1)),
    "png-palette": lambda im, rng: ("png", encode(
        im.convert("RGB").quantize(int(rng.integers(2, 257))), "PNG", compress_level=1)),
    "png-rgba": lambda im, rng: ("png", encode(_rgba(im, rng), "PNG", compress_level=1)),
    "webp-lossy": lambda im, rng: ("webp", encode(im.convert("RGB"), "WEBP",
                                                  quality=_quality(rng))),
    "webp-lossy-alpha": lambda im, rng: ("webp", encode(_rgba(im, rng), "WEBP",
                                                        quality=_quality(rng))),
    "webp-lossless": lambda im, rng: ("webp", encode(im.convert("RGB"), "WEBP", lossless=True,
                                                     method=0)),
    "gif": lambda im, rng: ("gif", encode(im.convert("RGB").quantize(int(rng.integers(2, 257))),
                                          "GIF", interlace=bool(rng.integers(0, 2)))),
    "bmp-rgb": lambda im, rng: ("bmp", encode(im.convert("RGB"), "BMP")),
    "bmp-palette": lambda im, rng: ("bmp", encode(im.convert("RGB").quantize(256), "BMP")),
    "bmp-gray": lambda im, rng: ("bmp", encode(im.convert("L"), "BMP")),
    "bmp-bilevel": lambda im, rng: ("bmp", encode(im.convert("1"), "BMP")),
}


def _random_source(rng, max_side=2400):
    """A random crop of a random photograph, resized to a random size class."""
    name = PHOTOS[rng.integers(len(PHOTOS))]
    im = photo(name)
    w, h = im.size
    cw, ch = int(rng.integers(max(1, w // 4), w + 1)), int(rng.integers(max(1, h // 4), h + 1))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    kind = ["tiny", "small", "side-224", "medium", "large"][rng.integers(5)]
    if kind == "tiny":
        size = rng.integers(1, 17, 2)
    elif kind == "small":
        size = rng.integers(17, 224, 2)
    elif kind == "side-224":
        size = np.array([224, rng.integers(30, 900)])[rng.permutation(2)]
    elif kind == "medium":
        size = rng.integers(225, 1100, 2)
    else:
        size = rng.integers(1200, max_side + 1, 2)
    size = tuple(int(s) for s in size)
    return im.resize(size, Image.LANCZOS), f"{name} crop {cw}x{ch} -> {kind} {size}"


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_photographs_match_pillow(moxin_bin, seed, tmp_path, encoding):
    rng = np.random.default_rng(seed)
    for case in range(2):
        # Pillow's WebP encoder is slow on large images: keep its inputs under ~2 megapixels.
        source, what = _random_source(rng, 1400 if encoding.startswith("webp") else 2400)
        ext, data = ENCODINGS[encoding](source, rng)
        path = tmp_path / f"{encoding}-{case}.{ext}"
        path.write_bytes(data)
        assert_matches_pillow(moxin_bin, path, what=f"{encoding}: {what}")


def test_decoded_pixels_match_pillow(moxin_bin, seed, tmp_path):
    """Square sources resized to their own size skip the resize (in Pillow too), so this
    compares the decoders' output pixel for pixel, for one variant of each codec."""
    rng = np.random.default_rng(seed)
    for encoding in ("jpeg-420", "jpeg-444", "jpeg-progressive", "png-palette", "webp-lossy",
                     "webp-lossless", "gif", "bmp-rgb"):
        side = int(rng.integers(1, 300))
        name = PHOTOS[rng.integers(len(PHOTOS))]
        source = photo(name).resize((side, side), Image.BILINEAR)
        ext, data = ENCODINGS[encoding](source, rng)
        path = tmp_path / f"{encoding}.{ext}"
        path.write_bytes(data)
        assert_matches_pillow(moxin_bin, path, size=side, what=f"{encoding}: {name} {side}x{side}")


# The resize's vectorized loop has an AVX2 build taken where the CPU has it; MOXIN_CPU_KERNELS=generic
# runs the portable one, so both meet Pillow on an x86 machine.
RESIZE_KERNELS = ["default", "generic"]


def _use_kernels(monkeypatch, kernels):
    if kernels == "generic":
        monkeypatch.setenv("MOXIN_CPU_KERNELS", "generic")


@pytest.mark.parametrize("kernels", RESIZE_KERNELS)
def test_other_output_sizes_match_pillow(moxin_bin, seed, tmp_path, monkeypatch, kernels):
    _use_kernels(monkeypatch, kernels)
    rng = np.random.default_rng(seed)
    for case in range(4):
        source, what = _random_source(rng)
        path = tmp_path / f"source-{case}.png"
        path.write_bytes(encode(source.convert("RGB"), "PNG", compress_level=1))
        assert_matches_pillow(moxin_bin, path, size=int(rng.integers(1, 600)), what=what)


@pytest.mark.parametrize("kernels", RESIZE_KERNELS)
def test_pass_order_matches_pillow(moxin_bin, seed, tmp_path, monkeypatch, kernels):
    """Pillow 13 resizes vertically first when rows removed > max(0, 2 * columns removed):
    sources on both sides of that boundary, for a 224x224 output."""
    _use_kernels(monkeypatch, kernels)
    rng = np.random.default_rng(seed)
    width = int(rng.integers(225, 400))
    boundary = 224 + 2 * (width - 224)
    for height in (boundary - 1, boundary, boundary + 1):
        source = photo(PHOTOS[rng.integers(len(PHOTOS))]).resize((width, height), Image.BILINEAR)
        path = tmp_path / f"{width}x{height}.png"
        path.write_bytes(encode(source.convert("RGB"), "PNG", compress_level=1))
        assert_matches_pillow(moxin_bin, path, what=f"{width}x{height}")
