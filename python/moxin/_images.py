"""Every image input kind the package takes, turned into the encoded file the engine decodes.

Paths and bytes pass through as they are (the engine sniffs JPEG, PNG, WebP, GIF, BMP).
Decoded pixels (a PIL image, a numpy HxWx3 uint8 array) are wrapped losslessly in an
uncompressed BMP, which the engine's built-in reader always decodes: the engine then sees
exactly those pixels. A PIL image goes through .convert("RGB") first, as the engine itself
decodes files (Pillow's Image.open(path).convert("RGB")).
"""
from __future__ import annotations

import os
import struct
import sys
from typing import Any, Union

import numpy as np

from . import _core
from ._checks import int32, uint64

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, Any]
"""A path, encoded image bytes, a PIL.Image.Image or a numpy HxWx3 uint8 array (RGB)."""

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's decompression-bomb limit, as the engine's
_BMP_HEADER_BYTES = 14 + 40  # BITMAPFILEHEADER + BITMAPINFOHEADER


def _bmp_from_rgb(pixels: np.ndarray) -> bytes:
    """A 24-bit BMP of an HxWx3 uint8 RGB array: rows bottom-up, BGR, each padded to 4 bytes."""
    height, width, _ = pixels.shape
    row_bytes = (width * 3 + 3) & ~3
    rows = np.zeros((height, row_bytes), dtype=np.uint8)
    rows[:, : width * 3] = pixels[::-1, :, ::-1].reshape(height, width * 3)
    data = rows.tobytes()
    file_header = struct.pack("<2sIHHI", b"BM", _BMP_HEADER_BYTES + len(data), 0, 0, _BMP_HEADER_BYTES)
    info_header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(data), 2835, 2835, 0, 0)
    return file_header + info_header + data


def _rgb_array_file(array: np.ndarray) -> bytes:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise _core.Error(
            f"[image] a numpy image must be an HxWx3 uint8 RGB array, got shape {array.shape} dtype {array.dtype} "
            "(convert it first, e.g. np.asarray(pil_image.convert('RGB')))")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise _core.Error(f"[image] the numpy image is empty (shape {array.shape})")
    if array.shape[0] * ((array.shape[1] * 3 + 3) & ~3) + _BMP_HEADER_BYTES > 2**32 - 1:
        raise _core.Error(f"[image] the numpy image is too large (shape {array.shape}): at most 4 GiB of pixels")
    return _bmp_from_rgb(array)


def _is_pil_image(image: Any) -> bool:
    pil = sys.modules.get("PIL.Image")  # only loaded if the caller uses Pillow
    return pil is not None and isinstance(image, pil.Image)


def _non_empty(encoded: bytes, what: str) -> bytes:
    # An empty image is a mistake, never "no image" (that is None): refuse it rather than
    # answer a text-only prompt.
    if not encoded:
        raise _core.Error(f"[image] {what} is empty (0 bytes); pass image=None for a text-only prompt")
    return encoded


def image_file(image: ImageInput) -> bytes:
    """The encoded image file for any accepted input kind; b"" for None (a text-only prompt)."""
    if image is None:
        return b""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _non_empty(bytes(image), "the image (bytes)")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        return _non_empty(_core.read_file(path), f"the image file '{path}'")
    if isinstance(image, np.ndarray):
        return _rgb_array_file(image)
    if _is_pil_image(image):
        return _rgb_array_file(np.asarray(image.convert("RGB")))
    raise TypeError(
        f"image must be a path, bytes, a PIL.Image.Image or a numpy HxWx3 uint8 array, got {type(image).__name__}")


def preprocess(image: ImageInput, size: int = 224, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict[str, np.ndarray]:
    """The vision inputs of an image exactly as the engine computes them, as `moxin preprocess`
    writes them: "resized" (uint8 [size, size, 3]), "dino" and "siglip" (float32
    [1, size, size, 3], NHWC)."""
    if image is None:
        raise TypeError("preprocess needs an image, got None")
    return _core.preprocess(image_file(image), int32("size", size), uint64("max_pixels", max_pixels))
