"""Checks the test tools themselves: the tiny checkpoint generator and the PyTorch reference.

Each check uses a computation independent of the code under test: a hand-written ViT over the
loaded parameters (docs/model.md section 3) for timm's intermediate-layer call, torchvision's transform
(what Prismatic runs) for preprocessing, transformers' tokenizer call for tokenization, a
cache-free recompute for KV-cache decoding, and the CLI on a sharded copy for the loader.
"""
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file
from torch.nn import functional as F

import reference_vlm as ref

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import make_test_model  # noqa: E402


def write_tiny(out, seed, tokenizer, shards=1):
    return make_test_model.write_model("tiny", out, seed, shards=shards, tokenizer=tokenizer, log=lambda line: None)


def random_image(rng, path=None):
    """A noise image of random size and mode, so resize and convert("RGB") both do work."""
    h, w = rng.integers(40, 500, size=2)
    image = Image.fromarray(rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8), "RGBA")
    image = image.convert(rng.choice(["RGB", "RGBA", "L", "P"]))
    if path is not None:
        image.save(path)
    return image


def random_words(rng, count):
    words = ["cat", "sky", "Paris", "  spaced ", "über", "42", "<image>", "\n", "a,b", "tree"]
    return " ".join(rng.choice(words, size=count))


@pytest.fixture
def tiny(tmp_path, seed, tokenizer_fixture):
    write_tiny(tmp_path / "tiny", seed, tokenizer_fixture)
    return tmp_path / "tiny"


def test_checkpoint_has_published_layout_and_loads_strictly(tiny):
    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] == "prismatic" and config["pad_token_id"] == 32000
    assert config["text_config"]["model_type"] == "mistral"
    with safe_open(tiny / "model.safetensors", "pt") as f:
        names = set(f.keys())
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
        scale = f.get_tensor("vision_backbone.featurizer.blocks.0.ls1.scale_factor").float()
    assert not any(".gamma" in n or ".head." in n for n in names)
    assert "vision_backbone.fused_featurizer.attn_pool.latent" in names
    assert "vision_backbone.featurizer.norm.weight" in names
    assert scale.abs().mean() > 0.1  # not timm's 1e-5 init, which would mute the blocks
    model = ref.load_reference(tiny)  # strict: raises on any missing or unexpected tensor
    assert len(model.dino.blocks) == 4 and model.dino.num_prefix_tokens == 5
    assert model.siglip.num_prefix_tokens == 0
    assert model.llm.config.num_key_value_heads == 2 and model.llm.config._attn_implementation == "eager"


def manual_vit_patch_features(vit, pixels, keep_blocks):
    """docs/model.md section 3 written out with plain torch ops over the loaded parameters."""
    x = F.conv2d(pixels, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=ref.PATCH)
    x = x.flatten(2).transpose(1, 2) + vit.pos_embed
    prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    x = torch.cat(prefix + [x], dim=1)
    for block in vit.blocks[:keep_blocks]:
        heads = block.attn.num_heads
        h = F.layer_norm(x, x.shape[-1:], block.norm1.weight, block.norm1.bias, eps=1e-6)
        q, k, v = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        a = F.linear((att @ v).transpose(1, 2).flatten(2), block.attn.proj.weight, block.attn.proj.bias)
        x = x + (block.ls1.gamma * a if hasattr(block.ls1, "gamma") else a)
        h = F.layer_norm(x, x.shape[-1:], block.norm2.weight, block.norm2.bias, eps=1e-6)
        m = F.linear(F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight,
                     block.mlp.fc2.bias)
        x = x + (block.ls2.gamma * m if hasattr(block.ls2, "gamma") else m)
    return x[0, sum(t.shape[1] for t in prefix):]


@torch.no_grad()
def test_intermediate_layer_call_is_block_depth_minus_2_without_norm(tiny, seed):
    model = ref.load_reference(tiny)
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    for vit in (model.dino, model.siglip):
        depth = len(vit.blocks)
        got = ref.patch_features(vit, pixels)
        assert got.shape == (256, vit.embed_dim)
        torch.testing.assert_close(got, manual_vit_patch_features(vit, pixels, depth - 1), rtol=1e-4, atol=1e-4)
        # and it is not the last block's output, nor normed
        assert not torch.allclose(got, manual_vit_patch_features(vit, pixels, depth), atol=1e-2)


def test_preprocessing_matches_prismatic_torchvision_transform(seed):
    from torchvision import transforms

    rng = np.random.default_rng(seed)
    for _ in range(3):
        image = random_image(rng)
        resized = ref.resize_image(image)
        for mean, std in ((ref.DINO_MEAN, ref.DINO_STD), (ref.SIGLIP_MEAN, ref.SIGLIP_STD)):
            expected = transforms.Compose([
                transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.ToTensor(), transforms.Normalize(mean, std)])(image.convert("RGB"))
            assert torch.equal(ref.normalize(resized, mean, std)[0], expected)


def test_prompt_and_tokenization_follow_prismatic(tiny, seed):
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(seed)
    q1, a1, q2 = (random_words(rng, rng.integers(1, 6)) for _ in range(3))
    prompt = ref.build_prompt([q1, a1, q2])
    clean = [m.replace("<image>", "").strip() for m in (q1, a1, q2)]
    assert prompt == f"In: {clean[0]}\nOut: {clean[1] or ' '}</s>In: {clean[2]}\nOut:".rstrip()
    assert ref.build_prompt(" <image> hi ") == "In: hi\nOut:"
    model = ref.load_reference(tiny)
    ids = ref.tokenize(model.tokenizer, prompt)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny / "tokenizer.json"))
    assert ids == hf(prompt).input_ids
    # The separator is the EOS control token; the next turn starts a new "▁"-prefixed segment.
    assert ids[0] == ref.BOS_ID and ids.count(ref.EOS_ID) == 1
    assert ids[ids.index(ref.EOS_ID) + 1] == model.tokenizer.token_to_id("▁In")


@torch.no_grad()
def test_sequence_assembly_and_cached_decoding(tiny, seed):
    rng = np.random.default_rng(seed)
    model = ref.load_reference(tiny)
    ids = ref.tokenize(model.tokenizer, ref.build_prompt(random_words(rng, 5)))
    projected = torch.randn(256, model.llm.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    table = model.llm.get_input_embeddings().weight
    seq = ref.assemble_inputs(model, ids, projected)[0]
    assert seq.shape[0] == 256 + len(ids)
    assert torch.equal(seq[0], table[ids[0]]) and torch.equal(seq[1:257], projected)
    assert torch.equal(seq[257:], table[ids[1:]])
    assert ref.assemble_inputs(model, ids, None).shape[1] == len(ids)

    logits_last, generated, gaps = ref.greedy_decode(model.llm, seq[None], 6)
    assert len(generated) == len(gaps) and 1 <= len(generated) <= 6
    # Without any cache: recompute the whole sequence for every step.
    inputs = seq[None]
    for step, token in enumerate(generated):
        logits = model.llm(inputs_embeds=inputs, use_cache=False, logits_to_keep=1).logits[0, -1]
        if step == 0:
            torch.testing.assert_close(logits, logits_last, rtol=1e-4, atol=1e-4)
        top2 = torch.topk(logits, 2).values
        assert abs(float(top2[0] - top2[1]) - gaps[step]) < 1e-3
        if gaps[step] > 1e-3:
            assert int(logits.argmax()) == token
        inputs = torch.cat([inputs, table[[token]][None]], dim=1)


def test_sharded_checkpoint_and_script_match_single_file(tmp_path, seed, tokenizer_fixture):
    rng = np.random.default_rng(seed)
    files = write_tiny(tmp_path / "sharded", seed, tokenizer_fixture, shards=3)
    write_tiny(tmp_path / "single", seed, tokenizer_fixture, shards=1)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == files and len(files) == 3
    with safe_open(tmp_path / "single" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(index["weight_map"])
        assert index["metadata"]["total_size"] == sum(2 * math.prod(f.get_slice(n).get_shape()) for n in f.keys())

    image_path = tmp_path / "image.png"
    random_image(rng, image_path)
    question, answer, prompt = (random_words(rng, 3) for _ in range(3))
    expected = ref.run(tmp_path / "single", image_path, [question, answer, prompt], 4)
    out = tmp_path / "ref.safetensors"
    subprocess.run([sys.executable, str(pathlib.Path(ref.__file__)), "--model", str(tmp_path / "sharded"),
                    "--image", str(image_path), "--prompt", prompt, "--turn", question, answer,
                    "--max-new-tokens", "4", "--out", str(out)], check=True, timeout=300)
    got = load_file(str(out))
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
    assert expected["dino_features"].shape == (256, 64) and expected["siglip_features"].shape == (256, 72)
    assert expected["projected"].shape == (256, 128) and expected["logits_last"].shape == (32064,)
