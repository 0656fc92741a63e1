"""Shared helpers for the image tests (this module holds no tests).

The reference is Pillow + numpy, as docs/model.md section 2 defines the preprocessing:
    Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC), / 255, then
    (x - mean) / std for DINOv2 and SigLIP, all in float32.
The writers below build PNG, BMP and GIF files byte by byte, for the layouts Pillow cannot
write (16-bit colour PNGs, Adam7 interlacing, 4-bit and bitfield BMPs, RLE, GIF local colour
tables and frame offsets, ...). Every file is also decoded by Pillow, so a writer mistake shows
up as a mismatch or a Pillow error, never as a false pass.
"""
import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

from conftest import run_moxin

SKIMAGE_DATA = pathlib.Path(__import__("skimage.data").data.__file__).parent
# Real photographs bundled with scikit-image (no download needed).
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "retina.jpg",
          "hubble_deep_field.jpg", "motorcycle_left.png", "camera.png", "ihc.png", "coins.png",
          "moon.png", "brick.png", "grass.png", "gravel.png", "page.png"]

DINO_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
DINO_STD = np.array([0.229, 0.224, 0.225], np.float32)


def photo(name):
    return Image.open(SKIMAGE_DATA / name)


def pillow_reference(path, size=224):
    with Image.open(path) as im:
        resized = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))
    x = resized.astype(np.float32) / np.float32(255)
    dino = (x - DINO_MEAN) / DINO_STD
    siglip = (x - np.float32(0.5)) / np.float32(0.5)
    return resized, dino[None], siglip[None]


def preprocess(moxin_bin, path, out, size=None, max_pixels=None, check=True):
    args = ["preprocess", "--image", path, "--out", out]
    if size is not None:
        args += ["--size", size]
    if max_pixels is not None:
        args += ["--max-pixels", max_pixels]
    return run_moxin(moxin_bin, *args, check=check, timeout=120)


def assert_matches_pillow(moxin_bin, path, size=224, what=""):
    """`moxin preprocess` on `path` equals the Pillow reference: uint8 bit-exact, floats 1e-6.

    With a square image and size == its side the resize is skipped (as in Pillow), so this
    compares the decoded pixels themselves.
    """
    path = pathlib.Path(path)
    out = path.with_suffix(path.suffix + f".{size}.safetensors")
    preprocess(moxin_bin, path, out, size=size)
    got = load_file(str(out))
    resized, dino, siglip = pillow_reference(path, size)
    label = f"{what or path.name} at {size}x{size}"
    assert got["resized"].dtype == np.uint8 and got["resized"].shape == (size, size, 3), label
    diff = got["resized"].astype(int) != resized
    if diff.any():
        ys, xs, cs = np.nonzero(diff)
        raise AssertionError(
            f"{label}: {diff.sum()} of {diff.size} bytes differ from Pillow, first at "
            f"y={ys[0]} x={xs[0]} c={cs[0]}: ours {got['resized'][ys[0], xs[0], cs[0]]}, "
            f"Pillow {resized[ys[0], xs[0], cs[0]]}")
    for name, want in (("dino", dino), ("siglip", siglip)):
        assert got[name].dtype == np.float32 and got[name].shape == (1, size, size, 3), label
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-6, err_msg=f"{label} {name}")


def encode(im, fmt, **options):
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def random_image(rng, mode, width, height):
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
    return Image.frombytes(mode, (width, height), data.tobytes())


# ---------------------------------------------------------------------------------------- PNG

PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]  # (x0, y0, dx, dy) of the seven passes


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_rows(samples, depth):
    """(h, w, c) samples -> filter-type-0 scanlines, packed at `depth` bits."""
    h, w, c = samples.shape
    flat = samples.reshape(h, w * c).astype(np.uint32)
    if depth == 16:
        rows = flat.astype(">u2").view(np.uint8).reshape(h, -1)
    elif depth == 8:
        rows = flat.astype(np.uint8)
    else:
        bits = (flat[:, :, None] >> np.arange(depth - 1, -1, -1, dtype=np.uint32)) & 1
        rows = np.packbits(bits.reshape(h, -1).astype(np.uint8), axis=1)
    return b"".join(b"\0" + row.tobytes() for row in rows)


def png_bytes(samples, color_type, depth, palette=None, trns=None, interlace=False,
              size=None):
    """A PNG from (h, w, channels) integer samples. `size` overrides the IHDR size."""
    h, w, _ = samples.shape
    if interlace:
        raw = b"".join(_png_rows(samples[y0::dy, x0::dx], depth)
                       for x0, y0, dx, dy in ADAM7 if x0 < w and y0 < h)
    else:
        raw = _png_rows(samples, depth)
    width, height = size or (w, h)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, int(interlace)))
    if palette is not None:
        out += _png_chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).ravel()))
    if trns is not None:
        out += _png_chunk(b"tRNS", trns)
    return out + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------- BMP

def bmp_bytes(width, height, bits, rows, header_size=40, compression=0, colors=0,
              palette=b"", masks=None, top_down=False, data=None):
    """A BMP. `rows` are the unpadded pixel rows in file order (or `data`, pre-encoded)."""
    if data is None:
        stride = ((width * bits + 31) >> 3) & ~3
        data = b"".join(r + b"\0" * (stride - len(r)) for r in rows)
    if header_size == 12:
        header = struct.pack("<IHHHH", 12, width, height, 1, bits)
    else:
        header = struct.pack("<IiiHHIIiiII", header_size, width, -height if top_down else height,
                             1, bits, compression, len(data), 2835, 2835, colors, 0)
        extra = b""
        if masks is not None and header_size >= 52:
            extra = struct.pack("<4I", *(list(masks) + [0] * (4 - len(masks))))
        header += (extra + b"\0" * header_size)[:header_size - 40]
    after_header = struct.pack("<3I", *masks[:3]) if masks is not None and header_size == 40 \
        else b""
    offset = 14 + len(header) + len(after_header) + len(palette)
    file_header = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    return file_header + header + after_header + palette + data


def bmp_rle(indices, rle4, rng):
    """RLE8/RLE4 data for rows of palette indices (file order), mixing encoded runs, absolute
    runs, deltas and end-of-line markers, and ending with end-of-bitmap."""
    out = bytearray()
    for row in indices:
        x, w = 0, len(row)
        while x < w:
            run = 1
            while x + run < w and run < 255 and row[x + run] == row[x]:
                run += 1
            choice = rng.integers(0, 4)
            if run >= 2 or choice == 0 or w - x < 3:
                n = run if run >= 2 else 1
                value = (row[x] << 4 | row[x]) if rle4 else row[x]
                out += bytes([n, value])
                x += n
            else:
                n = int(min(w - x, rng.integers(3, 40)))
                lits = row[x:x + n]
                if rle4:
                    packed = [(lits[i] << 4) | (lits[i + 1] if i + 1 < n else 0)
                              for i in range(0, n, 2)]
                else:
                    packed = list(lits)
                out += bytes([0, n] + packed)
                if len(packed) % 2:
                    out += b"\0"  # absolute runs are padded to 16 bits
                x += n
        out += b"\0\0"  # end of line
    return bytes(out + b"\0\1")  # end of bitmap


# ---------------------------------------------------------------------------------------- GIF

def lzw_gif(indices, min_code_size):
    """GIF LZW data (with its sub-block framing) for a flat sequence of pixel indices."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    codes = []  # (code, width in bits)

    def reset():
        return {bytes([i]): i for i in range(clear)}, end + 1, min_code_size + 1

    table, next_code, width = reset()
    codes.append((clear, width))
    word = bytes(indices[:1])
    for k in indices[1:]:
        candidate = word + bytes([k])
        if candidate in table:
            word = candidate
            continue
        codes.append((table[word], width))
        if next_code < 4096:
            table[candidate] = next_code
            next_code += 1
            if next_code > (1 << width) and width < 12:
                width += 1
        else:
            codes.append((clear, width))
            table, next_code, width = reset()
        word = bytes([k])
    if word:  # (a frame without pixels has none to emit)
        codes.append((table[word], width))
    codes.append((end, width))
    bits, nbits, data = 0, 0, bytearray()
    for code, size in codes:
        bits |= code << nbits
        nbits += size
        while nbits >= 8:
            data.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits:
        data.append(bits)
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                      for i in range(0, len(data), 255))
    return bytes([min_code_size]) + blocks + b"\0"


def _color_table(colors):
    """(flags bits, table bytes) for a colour table of 2..256 RGB entries."""
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    bits = max(1, int(np.ceil(np.log2(len(colors)))))
    table = np.zeros((1 << bits, 3), np.uint8)
    table[:len(colors)] = colors
    return bits - 1, table.tobytes()


def gif_bytes(screen, frame_box, indices, global_colors=None, local_colors=None,
              transparent=None, interlace=False, min_code_size=8):
    """A one-frame GIF89a: `indices` (h, w) placed at frame_box = (left, top) on a screen of
    `screen` = (width, height)."""
    h, w = indices.shape
    flags = 0
    table = b""
    if global_colors is not None:
        size_bits, table = _color_table(global_colors)
        flags = 0x80 | size_bits
    out = b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], flags, 0, 0) + table
    if transparent is not None:
        out += b"\x21\xf9\x04" + struct.pack("<BHB", 1, 0, transparent) + b"\0"
    local_flags, local_table = 0, b""
    if local_colors is not None:
        size_bits, local_table = _color_table(local_colors)
        local_flags = 0x80 | size_bits
    if interlace:
        local_flags |= 0x40
        order = [y for start, step in ((0, 8), (4, 8), (2, 4), (1, 2)) for y in range(start, h, step)]
        indices = indices[order]
    out += b"\x2c" + struct.pack("<HHHHB", frame_box[0], frame_box[1], w, h, local_flags)
    out += local_table + lzw_gif(indices.ravel().tolist(), min_code_size)
    return out + b"\x3b"
