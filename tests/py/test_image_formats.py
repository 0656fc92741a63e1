"""Decoder edge cases against Pillow's `Image.open(p).convert("RGB")`.

Each case is a file in an unusual layout (every PNG colour type and bit depth, interlaced or
not; palettes with transparency or too few entries; 16-bit samples; CMYK and EXIF-rotated
JPEGs; GIF frames off the screen origin; BMP headers, bit depths, bitfields and RLE) with
random content and size. Square files are compared at their own size, where the resize is
skipped, i.e. pixel for pixel after decoding; others after the 224x224 resize.
"""
import struct

import numpy as np
import pytest
from PIL import Image

from test_image_common import (assert_matches_pillow, bmp_bytes, bmp_rle, encode, gif_bytes,
                               photo, png_bytes, random_image)

# The reference itself warns that convert("RGB") drops palette transparency; that is the
# behaviour under test.
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency")


def _check(moxin_bin, tmp_path, name, data, size=None):
    path = tmp_path / name
    path.write_bytes(data)
    if size is None:
        with Image.open(path) as im:
            size = im.size[0] if im.size[0] == im.size[1] else 224
    assert_matches_pillow(moxin_bin, path, size=size)


# ---------------------------------------------------------------------------------------- PNG

PNG_LAYOUTS = [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4),
               (3, 8), (4, 8), (4, 16), (6, 8), (6, 16)]  # (colour type, bit depth)


@pytest.mark.parametrize("interlace", [False, True], ids=["progressive", "adam7"])
def test_png_layouts(moxin_bin, seed, tmp_path, interlace):
    rng = np.random.default_rng(seed)
    for color_type, depth in PNG_LAYOUTS:
        side = int(rng.integers(1, 40))
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
        samples = rng.integers(0, 1 << depth, (side, side, channels))
        if depth == 16 and rng.integers(2):
            samples[rng.random(samples.shape) < 0.5] %= 256  # Pillow's I;16 -> RGB clamps at 255
        palette = trns = None
        if color_type == 3:
            # Fewer entries than the bit depth can index: Pillow shows the others as black.
            entries = int(rng.integers(1, (1 << depth) + 1))
            palette = rng.integers(0, 256, (entries, 3))
            if rng.integers(2):
                trns = bytes(rng.integers(0, 256, int(rng.integers(1, entries + 1)), np.uint8))
        elif color_type in (0, 2) and rng.integers(2):
            trns = struct.pack(">3H", *rng.integers(0, 1 << depth, 3))[:2 if color_type == 0 else 6]
        data = png_bytes(samples, color_type, depth, palette=palette, trns=trns,
                         interlace=interlace)
        _check(moxin_bin, tmp_path, f"png-c{color_type}-d{depth}.png", data)


def test_png_modes_written_by_pillow(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)
    side = int(rng.integers(1, 120))
    palette_image = random_image(rng, "RGB", side, side).quantize(int(rng.integers(2, 257)))
    palette_image.info["transparency"] = bytes(rng.integers(0, 256, 256, np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 1024, (side, side), np.uint16))  # mode I;16
    cases = {
        "palette-trns": encode(palette_image, "PNG",
                               transparency=palette_image.info["transparency"]),
        "la": encode(random_image(rng, "LA", side, side), "PNG"),
        "rgba": encode(random_image(rng, "RGBA", side, side), "PNG"),
        "i16": encode(gray16, "PNG"),
        "bilevel": encode(random_image(rng, "L", side, side).convert("1"), "PNG"),
        "gray-trns": encode(random_image(rng, "L", side, side), "PNG", transparency=7),
    }
    for name, data in cases.items():
        _check(moxin_bin, tmp_path, f"pillow-{name}.png", data)


# ----------------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_extreme_shapes(moxin_bin, seed, tmp_path, fmt):
    """1x1 (upscaled 224x), 10000x3 and 3x10000 (one axis shrunk ~45x, the other grown)."""
    rng = np.random.default_rng(seed)
    src = photo("astronaut.png")
    for w, h in ((1, 1), (10000, 3), (3, 10000)):
        im = src.resize((w, h), Image.BILINEAR)
        if fmt == "GIF":
            im = im.quantize(int(rng.integers(2, 257)))
        data = encode(im, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
        _check(moxin_bin, tmp_path, f"{w}x{h}.{fmt.lower()}", data, size=224)
        if (w, h) == (1, 1):
            _check(moxin_bin, tmp_path, f"{w}x{h}.{fmt.lower()}", data, size=1)


# --------------------------------------------------------------------------------------- JPEG

def test_jpeg_variants(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)
    side = int(rng.integers(8, 200))
    im = photo("coffee.png").resize((side, side), Image.BILINEAR)
    cmyk = Image.frombytes("CMYK", (side, side), rng.integers(0, 256, side * side * 4,
                                                               np.uint8).tobytes())
    odd = photo("chelsea.png").resize((int(rng.integers(1, 40)) | 1, int(rng.integers(1, 40)) | 1))
    cases = {
        "gray": encode(im.convert("L"), "JPEG", quality=int(rng.integers(50, 101))),
        # Pillow writes (and reads back) Adobe-style inverted CMYK; convert("RGB") then
        # computes (255 - k) - (255 - k) * c / 255 per channel.
        "cmyk": encode(cmyk, "JPEG", quality=int(rng.integers(50, 101))),
        "odd-size-420": encode(odd, "JPEG", quality=95, subsampling=2),
        "odd-size-422": encode(odd, "JPEG", quality=95, subsampling=1),
    }
    for name, data in cases.items():
        _check(moxin_bin, tmp_path, f"{name}.jpg", data)


def test_jpeg_exif_orientation_is_not_applied(moxin_bin, seed, tmp_path):
    """Pillow's open + convert ignores EXIF Orientation (no exif_transpose); so do we."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(100, 300)), int(rng.integers(301, 500))
    im = photo("rocket.jpg").resize((w, h), Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(im, "JPEG", quality=90, exif=exif))
    with Image.open(path) as check:
        assert check.getexif()[0x0112] == 6 and check.size == (w, h)
    assert_matches_pillow(moxin_bin, path)
    # The file is w x h as stored, not h x w as displayed.
    from safetensors.numpy import load_file
    from test_image_common import preprocess
    out = tmp_path / "rotated.safetensors"
    preprocess(moxin_bin, path, out)
    rotated = Image.open(path).transpose(Image.Transpose.ROTATE_270)
    want_rotated = np.asarray(rotated.convert("RGB").resize((224, 224), Image.BICUBIC))
    assert not np.array_equal(load_file(str(out))["resized"], want_rotated)


# --------------------------------------------------------------------------------------- WebP

def test_webp_variants(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)
    side = int(rng.integers(1, 200))
    rgba = random_image(rng, "RGBA", side, side)
    frames = [random_image(rng, "RGB", side, side) for _ in range(3)]
    cases = {
        # exact=True keeps the colour of fully transparent pixels, which convert("RGB") shows.
        "lossless-alpha": encode(rgba, "WEBP", lossless=True, exact=True, method=0),
        "lossy-alpha": encode(rgba, "WEBP", quality=int(rng.integers(1, 101))),
        "animated": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                           duration=100, lossless=bool(rng.integers(2))),
    }
    for name, data in cases.items():
        _check(moxin_bin, tmp_path, f"{name}.webp", data)


# ---------------------------------------------------------------------------------------- GIF

def test_gif_variants(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)

    def colors(n):
        return rng.integers(0, 256, (n, 3))

    gray_ramp = np.repeat(np.arange(256)[:, None], 3, axis=1)
    side = int(rng.integers(2, 60))
    fw, fh = int(rng.integers(1, side + 1)), int(rng.integers(1, side + 1))
    left, top = int(rng.integers(0, side - fw + 1)), int(rng.integers(0, side - fh + 1))
    frame = rng.integers(0, 256, (fh, fw))
    full = rng.integers(0, 256, (side, side))
    cases = {
        "global": gif_bytes((side, side), (0, 0), full, global_colors=colors(256)),
        "local-over-global": gif_bytes((side, side), (0, 0), full, global_colors=colors(256),
                                       local_colors=colors(256)),
        "interlaced": gif_bytes((side, side), (0, 0), full, global_colors=colors(256),
                                interlace=True),
        # A gray-ramp table makes Pillow use mode L; a local one hides a coloured global one.
        "gray-ramp-local": gif_bytes((side, side), (0, 0), full, global_colors=colors(256),
                                     local_colors=gray_ramp),
        "no-table": gif_bytes((side, side), (0, 0), full),
        # Indices past a 4-entry table are black in Pillow.
        "short-table": gif_bytes((side, side), (0, 0), full, global_colors=colors(4)),
        # A frame smaller than the screen: the rest is index 0 or the transparent index.
        "offset-frame": gif_bytes((side, side), (left, top), frame, global_colors=colors(256)),
        "offset-frame-transparent": gif_bytes((side, side), (left, top), frame,
                                              global_colors=colors(256),
                                              transparent=int(rng.integers(0, 256))),
        # A frame reaching past the screen enlarges the canvas.
        "frame-past-screen": gif_bytes((fw, fh), (side - fw, side - fh), frame,
                                       global_colors=colors(256)),
        "small-code-size": gif_bytes((side, side), (0, 0), full % 4, global_colors=colors(4),
                                     min_code_size=2),
    }
    animated = [random_image(rng, "RGB", side, side).quantize(64) for _ in range(3)]
    cases["animated"] = encode(animated[0], "GIF", save_all=True, append_images=animated[1:])
    for name, data in cases.items():
        _check(moxin_bin, tmp_path, f"{name}.gif", data)


# ---------------------------------------------------------------------------------------- BMP

def _bgrx(colors):
    return b"".join(bytes([b, g, r, 0]) for r, g, b in colors)


def test_bmp_variants(moxin_bin, seed, tmp_path):
    rng = np.random.default_rng(seed)
    w = h = int(rng.integers(1, 50))

    def indices(bits, count=None):
        return rng.integers(0, count or (1 << bits), (h, w))

    def packed(rows, bits):
        return [np.packbits(((np.array(r)[:, None] >> np.arange(bits - 1, -1, -1)) & 1)
                            .astype(np.uint8).ravel()).tobytes() for r in rows]

    def channels(n):
        return rng.integers(0, 256, (h, w, n), dtype=np.uint8)

    def words(bits_r, bits_g, bits_b, shift_r, shift_g):
        v = (rng.integers(0, 1 << bits_r, (h, w)) << shift_r) | \
            (rng.integers(0, 1 << bits_g, (h, w)) << shift_g) | rng.integers(0, 1 << bits_b, (h, w))
        return [row.astype("<u2").tobytes() for row in v]

    palette16 = rng.integers(0, 256, (16, 3))
    palette256 = rng.integers(0, 256, (256, 3))
    gray_ramp = [(i, i, i) for i in range(256)]
    cases = {
        "1bit-color": bmp_bytes(w, h, 1, packed(indices(1), 1),
                                palette=_bgrx(rng.integers(0, 256, (2, 3)))),
        "1bit-black-white": bmp_bytes(w, h, 1, packed(indices(1), 1),
                                      palette=_bgrx([(0, 0, 0), (255, 255, 255)])),
        "4bit": bmp_bytes(w, h, 4, packed(indices(4), 4), palette=_bgrx(palette16)),
        # 5 palette entries for 16 possible indices: the rest are black in Pillow.
        "4bit-short-palette": bmp_bytes(w, h, 4, packed(indices(4), 4), colors=5,
                                        palette=_bgrx(palette16[:5])),
        "8bit": bmp_bytes(w, h, 8, [bytes(r.astype(np.uint8)) for r in indices(8)],
                          palette=_bgrx(palette256)),
        "8bit-gray-ramp": bmp_bytes(w, h, 8, [bytes(r.astype(np.uint8)) for r in indices(8)],
                                    palette=_bgrx(gray_ramp)),
        "8bit-os2": bmp_bytes(w, h, 8, [bytes(r.astype(np.uint8)) for r in indices(8)],
                              header_size=12,
                              palette=b"".join(bytes([b, g, r]) for r, g, b in palette256)),
        "16bit-555": bmp_bytes(w, h, 16, words(5, 5, 5, 10, 5)),
        "16bit-565-bitfields": bmp_bytes(w, h, 16, words(5, 6, 5, 11, 5), compression=3,
                                         masks=(0xF800, 0x7E0, 0x1F)),
        "16bit-555-bitfields": bmp_bytes(w, h, 16, words(5, 5, 5, 10, 5), compression=3,
                                         masks=(0x7C00, 0x3E0, 0x1F)),
        "24bit": bmp_bytes(w, h, 24, [r.tobytes() for r in channels(3)]),
        "24bit-top-down": bmp_bytes(w, h, 24, [r.tobytes() for r in channels(3)], top_down=True),
        "24bit-os2": bmp_bytes(w, h, 24, [r.tobytes() for r in channels(3)], header_size=12),
        "32bit": bmp_bytes(w, h, 32, [r.tobytes() for r in channels(4)]),
        "32bit-v5-alpha": bmp_bytes(w, h, 32, [r.tobytes() for r in channels(4)],
                                    header_size=124, compression=3,
                                    masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000)),
        "32bit-v4-rgba": bmp_bytes(w, h, 32, [r.tobytes() for r in channels(4)],
                                   header_size=108, compression=3,
                                   masks=(0xFF, 0xFF00, 0xFF0000, 0xFF000000)),
        "32bit-xbgr": bmp_bytes(w, h, 32, [r.tobytes() for r in channels(4)], compression=3,
                                masks=(0xFF000000, 0xFF0000, 0xFF00)),
        "32bit-v3-bgxr": bmp_bytes(w, h, 32, [r.tobytes() for r in channels(4)],
                                   header_size=56, compression=3,
                                   masks=(0xFF000000, 0xFF00, 0xFF, 0)),
        "24bit-v2-bitfields": bmp_bytes(w, h, 24, [r.tobytes() for r in channels(3)],
                                        header_size=52, compression=3,
                                        masks=(0xFF0000, 0xFF00, 0xFF)),
        "rle8": bmp_bytes(w, h, 8, None, compression=1, palette=_bgrx(palette256),
                          data=bmp_rle(indices(8).tolist(), False, rng)),
        "rle4": bmp_bytes(w, h, 4, None, compression=2, palette=_bgrx(palette16),
                          data=bmp_rle(indices(4).tolist(), True, rng)),
        # With a black-and-white palette Pillow shows every nonzero RLE byte as white.
        "rle8-black-white": bmp_bytes(w, h, 8, None, compression=1, colors=2,
                                      palette=_bgrx([(0, 0, 0), (255, 255, 255)]),
                                      data=bmp_rle(rng.integers(0, 3, (h, w)).tolist(), False,
                                                   rng)),
        # A delta escape skips pixels, which Pillow fills with index 0.
        "rle8-delta": bmp_bytes(w, h, 8, None, compression=1, palette=_bgrx(palette256),
                                data=bytes([0, 2, w // 2, h // 2]) +
                                bmp_rle(indices(8).tolist(), False, rng)[:-2]
                                + b"\0\0" * h + b"\0\1"),
    }
    for name, data in cases.items():
        _check(moxin_bin, tmp_path, f"{name}.bmp", data)


# ------------------------------------------------------------------ cut after the first image

def test_files_cut_after_their_pixels(moxin_bin, seed, tmp_path):
    """Pillow stops reading once the (first) image is decoded: a PNG cut in its last CRC or
    IEND, or an animated GIF cut in a later frame, still decodes, and must match. (A PNG cut
    inside its zlib checksum decodes in Pillow too but not here: libpng reads each IDAT chunk
    whole before it hands out the last row.)"""
    rng = np.random.default_rng(seed)
    side = int(rng.integers(1, 64))
    samples = rng.integers(0, 256, (side, side, 3))
    frames = [random_image(rng, "RGB", side, side).quantize(64) for _ in range(3)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first_frame_end = len(encode(frames[0], "GIF")) - 1  # without the trailer
    cases = {}
    for interlace in (False, True):
        png = png_bytes(samples, 2, 8, interlace=interlace)
        for cut in (12, 16):  # IEND; IEND and the last IDAT's CRC
            cases[f"cut{cut}-{'adam7' if interlace else 'plain'}.png"] = png[:-cut]
    cases["cut-in-frame-2.gif"] = gif[:int(rng.integers(first_frame_end + 20, len(gif) - 1))]
    for name, data in cases.items():
        _check(moxin_bin, tmp_path, name, data)
