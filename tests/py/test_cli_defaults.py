"""The seed crate's CLI defaults: `moxin generate --image F` without --prompt asks "Describe this
image." (the same tokens as asking it explicitly); with neither image nor prompt, a clear error."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import fresh_tiny_model, run_moxin


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "cli-defaults")[0]


def random_png(rng):
    pixels = rng.integers(0, 256, size=(int(rng.integers(20, 120)), int(rng.integers(20, 120)), 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_image_without_prompt_asks_describe_this_image(moxin_bin, model, tmp_path, seed):
    rng = np.random.default_rng(seed)
    image = tmp_path / "image.png"
    image.write_bytes(random_png(rng))
    common = ["generate", "--model", model, "--image", image, "--temp", "0", "--max-tokens", "12", "--json"]
    explicit = json.loads(run_moxin(moxin_bin, *common, "--prompt", "Describe this image.").stdout)
    default = json.loads(run_moxin(moxin_bin, *common).stdout)
    assert default["tokens"] == explicit["tokens"]
    assert default["timings"]["prompt_tokens"] == explicit["timings"]["prompt_tokens"]
    # A different question changes the prompt, so the comparison above can tell them apart.
    other = json.loads(run_moxin(moxin_bin, *common, "--prompt", "What is in this picture, and what colour is the sky above it?").stdout)
    assert other["timings"]["prompt_tokens"] != default["timings"]["prompt_tokens"]


def test_neither_image_nor_prompt_is_a_clear_error(moxin_bin, model):
    out = run_moxin(moxin_bin, "generate", "--model", model, "--max-tokens", "4", check=False)
    assert out.returncode == 1, out.stderr
    assert "--prompt" in out.stderr and "--image" in out.stderr and "Describe this image." in out.stderr
    assert out.stdout == ""
