"""The checkpoint layouts of the seed crate (OminiX moxin-vlm-mlx) answer token for token as the
Hugging Face layout they were made from. Each variant is written here from a fresh random tiny
model with safetensors + torch, independently of the engine's loader:

- numbered encoders: vision_backbone.featurizer.0.* / .1.* instead of featurizer / fused_featurizer;
- split vision attention: attn.q_proj/k_proj/v_proj + attn.out_proj instead of attn.qkv + attn.proj;
- its save_quantized output: quantized linears as <name>.inner.weight + .scales + .biases and
  quantize_config.json as {"quantization": {"group_size": G, "bits": B}} (made from `moxin quantize`
  output, and compared with it).
"""
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import run_moxin
from quant_models import tiny_quant_model

DINO, SIGLIP = "vision_backbone.featurizer.", "vision_backbone.fused_featurizer."
QKV = re.compile(r"^(vision_backbone\..*\.blocks\.\d+\.attn\.)qkv\.(weight|bias)$")
PROJ = re.compile(r"^(vision_backbone\..*\.blocks\.\d+\.attn\.)proj\.(weight|bias)$")


def read_tensors(model_dir):
    out = {}
    for file in sorted(pathlib.Path(model_dir).glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


def write_variant(source, dest, tensors):
    """`source`'s non-weight files plus `tensors` as one model.safetensors."""
    dest.mkdir()
    for file in pathlib.Path(source).iterdir():
        if file.suffix != ".safetensors" and file.name != "model.safetensors.index.json":
            shutil.copy(file, dest / file.name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, dest / "model.safetensors")
    return dest


def numbered_encoders(tensors):
    renamed = {}
    for name, t in tensors.items():
        if name.startswith(SIGLIP):
            name = "vision_backbone.featurizer.1." + name[len(SIGLIP):]
        elif name.startswith(DINO):
            name = "vision_backbone.featurizer.0." + name[len(DINO):]
        renamed[name] = t
    assert any(n.startswith("vision_backbone.featurizer.1.blocks.") for n in renamed)
    return renamed


def split_attention(tensors):
    out = {}
    for name, t in tensors.items():
        if m := QKV.match(name):
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), torch.chunk(t, 3, dim=0)):
                out[f"{m[1]}{part}.{m[2]}"] = chunk.clone()
        elif m := PROJ.match(name):
            out[f"{m[1]}out_proj.{m[2]}"] = t
        else:
            out[name] = t
    assert any(n.endswith("attn.k_proj.bias") for n in out) and not any(QKV.match(n) for n in out)
    return out


def inner_quantized_weights(tensors):
    scaled = {name[:-len(".scales")] for name in tensors if name.endswith(".scales")}
    assert scaled, "the quantized model has no quantized linears"
    def seed_name(name):
        prefix = name.removesuffix(".weight")
        return prefix + ".inner.weight" if name.endswith(".weight") and prefix in scaled else name
    renamed = {seed_name(name): t for name, t in tensors.items()}
    assert len(renamed) == len(tensors) and sum(n.endswith(".inner.weight") for n in renamed) == len(scaled)
    return renamed


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # The tiny preset with its MLP widened to a multiple of 64, so `moxin quantize` accepts it.
    return tiny_quant_model(tmp_path_factory, "seed-layouts", bigram=False)[0]


@pytest.fixture
def image(tmp_path, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(int(rng.integers(30, 160)), int(rng.integers(30, 160)), 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    return path


def greedy_tokens(moxin_bin, model_dir, image, *extra):
    out = run_moxin(moxin_bin, "generate", "--model", model_dir, "--image", image, "--prompt",
                    "What is in this picture?", "--max-tokens", "16", "--temp", "0", "--json", *extra)
    return json.loads(out.stdout)["tokens"]


@pytest.mark.parametrize("variant", ["numbered_encoders", "split_attention", "both"])
def test_seed_vision_layouts_answer_as_the_hf_layout(variant, moxin_bin, model, image, tmp_path):
    tensors = read_tensors(model)
    if variant in ("numbered_encoders", "both"):
        tensors = numbered_encoders(tensors)
    if variant in ("split_attention", "both"):
        tensors = split_attention(tensors)
    seed_dir = write_variant(model, tmp_path / variant, tensors)
    expected = greedy_tokens(moxin_bin, model, image)
    assert len(expected) == 16
    assert greedy_tokens(moxin_bin, seed_dir, image) == expected


@pytest.mark.parametrize("bits,group", [(4, 64), (8, 128)])
def test_seed_save_quantized_layout_answers_as_moxin_quantize(bits, group, moxin_bin, model, image, tmp_path):
    quantized = tmp_path / "quantized"
    run_moxin(moxin_bin, "quantize", "--model", model, "--output", quantized, "--bits", bits,
              "--group-size", group, "--threads", 2)
    tensors = split_attention(numbered_encoders(inner_quantized_weights(read_tensors(quantized))))
    seed_dir = write_variant(quantized, tmp_path / "seed", tensors)
    # The seed keeps the parameters only in its nested quantize_config.json.
    config = json.loads((seed_dir / "config.json").read_text())
    config.pop("quantization", None)
    (seed_dir / "config.json").write_text(json.dumps(config))
    (seed_dir / "quantize_config.json").write_text(json.dumps({"quantization": {"group_size": group, "bits": bits}}))
    expected = greedy_tokens(moxin_bin, quantized, image)
    assert len(expected) == 16
    assert greedy_tokens(moxin_bin, seed_dir, image) == expected


def test_quantize_config_in_both_forms_at_once_is_refused(moxin_bin, model, tmp_path):
    seed_dir = write_variant(model, tmp_path / "both-forms", read_tensors(model))
    (seed_dir / "quantize_config.json").write_text(
        json.dumps({"bits": 4, "group_size": 64, "quantization": {"group_size": 64, "bits": 4}}))
    out = run_moxin(moxin_bin, "inspect", "--model", seed_dir, check=False)
    assert out.returncode == 1 and "keep one of the two forms" in out.stderr, out.stderr


def test_both_encoder_namings_at_once_are_refused(moxin_bin, model, tmp_path):
    tensors = read_tensors(model)
    tensors.update({k: v.clone() for k, v in numbered_encoders(tensors).items()
                    if k.startswith("vision_backbone.featurizer.0.")})
    seed_dir = write_variant(model, tmp_path / "mixed", tensors)
    out = run_moxin(moxin_bin, "inspect", "--model", seed_dir, check=False)
    assert out.returncode == 1, out.stderr
    assert "vision_backbone.featurizer.0.patch_embed.proj.weight" in out.stderr and "one naming" in out.stderr


def test_split_attention_parts_of_different_dtypes_are_refused(moxin_bin, model, tmp_path):
    tensors = split_attention(read_tensors(model))
    name = "vision_backbone.featurizer.blocks.0.attn.k_proj.weight"
    tensors[name] = tensors[name].float()
    seed_dir = write_variant(model, tmp_path / "mixed-dtypes", tensors)
    out = run_moxin(moxin_bin, "inspect", "--model", seed_dir, check=False)
    assert out.returncode == 1, out.stderr
    assert name in out.stderr and "cannot be stacked" in out.stderr and "F32" in out.stderr, out.stderr
