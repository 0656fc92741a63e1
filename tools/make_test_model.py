#!/usr/bin/env python3
"""Writes a random-weight Moxin-7B VLM checkpoint in the published Hugging Face layout.

    python tools/make_test_model.py --preset tiny --out /tmp/moxin-tiny [--seed N]
        [--dtype bf16|f32] [--shards N] [--tokenizer PATH]
    python tools/make_test_model.py --preset full --out /tmp/moxin-full      # ~17.8 GB, 5 shards
    python tools/make_test_model.py --preset full --layers 8 --out /tmp/moxin-w8   # ~5.6 GB

--layers N keeps every width of the preset and writes N decoder layers (config.json says N):
a full-width model whose per-layer kernels, embeddings and lm_head are the real ones but which
fits in the page cache, so CPU decode timings measure the kernels instead of the disk.

Output directory (what `Moxin-7B-VLM-hf` users have, see docs/model.md section 1):
  model.safetensors, or model-0000i-of-0000N.safetensors + model.safetensors.index.json
  ({"metadata": {"total_size": bytes}, "weight_map": {tensor: file}});
  config.json (HF Prismatic style, full text_config written out); tokenizer.json (a copy).

Where the tensor names and shapes come from: the REAL modules, instantiated on the `meta`
device (no memory, no init), so nothing here restates a layout by hand:
  - vision_backbone.featurizer.*        timm "vit_large_patch14_reg4_dinov2" (img_size 224)
  - vision_backbone.fused_featurizer.*  timm "vit_so400m_patch14_siglip_224" (img_size 224)
  - projector.fc1/fc2/fc3.*             Prismatic's fused-gelu-mlp (no library module; built here)
  - language_model.*                    transformers MistralForCausalLM (no biases, untied head)
Both featurizers are created as Prismatic and the HF conversion create them: num_classes=0, so
timm's `head` is an Identity and has no weights; everything else the modules own is kept, as the
real conversion keeps it (final `norm`, the last block, SigLIP `attn_pool.*`: unused by the
model but present in published checkpoints). timm's LayerScale `lsN.gamma` is renamed
`lsN.scale_factor` (the HF conversion renames it because transformers rewrites `gamma` keys).

The `tiny` preset keeps every structural feature (224 px, patch 14, 256 patches, DINOv2 cls + 4
registers + LayerScale, SigLIP without cls and with attn_pool, GQA, untied head, 32064 vocab so
the real tokenizer fits) with small widths. Vision head counts are not visible in tensor shapes,
so for tiny, config.json carries the extra key "timm_model_kwargs" (the kwargs passed to
timm.create_model for each featurizer); when absent, the timm defaults (16 heads each) hold.

Random weights, chosen so that every path matters and activations stay O(1) through the
depth (module default inits would hide paths, e.g. LayerScale 1e-5 mutes every ViT block):
  matrices / conv kernels  N(0, 1/fan_in)     biases        0.02 * N(0,1)
  query and key weights    2 x the above (selective attention; see QK_GAIN)
  norm weights             1 + 0.1 * N(0,1)   LayerScale    0.5 + 0.2 * N(0,1)
  token tables, cls/reg tokens, pos_embed, attn_pool.latent   N(0,1)
Each tensor draws from its own torch.Generator seeded by sha256(seed, tensor name), so a
tensor's values do not depend on sharding, order or dtype choice (bf16 is f32 rounded), and the
`full` preset streams tensor by tensor to disk without ever holding the model in memory.
"""
import argparse
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import random
import shutil
import sys
import time

import timm
import torch
from torch import nn
from transformers import MistralConfig, MistralForCausalLM

# The repository's fixture (tests/fixtures/tokenizer/README.md says what it is);
# MOXIN_TOKENIZER_FIXTURE points at another copy.
DEFAULT_TOKENIZER = pathlib.Path(os.environ.get(
    "MOXIN_TOKENIZER_FIXTURE",
    pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tokenizer" / "moxin-vlm.tokenizer.json"))
TIMM_MODEL_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
IMAGE_SIZE = 224
SHARD_TARGET_BYTES = 4 * 10**9
# Query/key weights are scaled up so attention is selective: with plain 1/fan_in scores, softmax
# over ~270 positions averages everything, and the image tokens' shared component then fixes the
# next token whatever the prompt (greedy output repeats one id, hiding decode bugs).
QK_GAIN = 2.0
DTYPES = {"bf16": (torch.bfloat16, "BF16"), "f32": (torch.float32, "F32")}


@dataclasses.dataclass(frozen=True)
class VitShape:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int

    def timm_kwargs(self):
        # timm sizes the MLP as int(embed_dim * mlp_ratio); the +0.5 makes that land exactly.
        return {"embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads,
                "mlp_ratio": (self.mlp_hidden + 0.5) / self.embed_dim}


@dataclasses.dataclass(frozen=True)
class LlmShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int = 32064


@dataclasses.dataclass(frozen=True)
class Preset:
    dino: VitShape
    siglip: VitShape
    llm: LlmShape
    default_dtype: str
    default_shards: int
    writes_timm_kwargs: bool  # the real sizes are timm's defaults; tiny must say its own


PRESETS = {
    "tiny": Preset(VitShape(64, 4, 4, 256), VitShape(72, 4, 4, 172),
                   LlmShape(hidden=128, layers=4, heads=8, kv_heads=2, intermediate=344),
                   default_dtype="bf16", default_shards=1, writes_timm_kwargs=True),
    "full": Preset(VitShape(1024, 24, 16, 4096), VitShape(1152, 27, 16, 4304),
                   LlmShape(hidden=4096, layers=36, heads=32, kv_heads=8, intermediate=14336),
                   default_dtype="bf16", default_shards=0, writes_timm_kwargs=False),
}


class FusedGeluMlpProjector(nn.Module):
    """Prismatic "fused-gelu-mlp": fc1 -> GELU -> fc2 -> GELU -> fc3 (names as the HF conversion)."""

    def __init__(self, vision_dim, llm_dim):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)


def mistral_config(llm: LlmShape):
    return MistralConfig(hidden_size=llm.hidden, num_hidden_layers=llm.layers,
                         num_attention_heads=llm.heads, num_key_value_heads=llm.kv_heads,
                         intermediate_size=llm.intermediate, vocab_size=llm.vocab, rms_norm_eps=1e-5,
                         rope_theta=10000.0, max_position_embeddings=32768, sliding_window=None,
                         tie_word_embeddings=False, pad_token_id=32000)


def hf_vision_name(timm_name):
    return timm_name.replace(".ls1.gamma", ".ls1.scale_factor").replace(".ls2.gamma", ".ls2.scale_factor")


def tensor_layout(preset: Preset):
    """[(checkpoint name, shape)] in module order, read off the real modules built on `meta`."""
    with torch.device("meta"):
        parts = [
            ("vision_backbone.featurizer.", timm.create_model(
                TIMM_MODEL_IDS[0], pretrained=False, num_classes=0, img_size=IMAGE_SIZE,
                **preset.dino.timm_kwargs())),
            ("vision_backbone.fused_featurizer.", timm.create_model(
                TIMM_MODEL_IDS[1], pretrained=False, num_classes=0, img_size=IMAGE_SIZE,
                **preset.siglip.timm_kwargs())),
            ("projector.", FusedGeluMlpProjector(preset.dino.embed_dim + preset.siglip.embed_dim,
                                                 preset.llm.hidden)),
            ("language_model.", MistralForCausalLM(mistral_config(preset.llm))),
        ]
    layout = []
    for prefix, module in parts:
        for name, tensor in module.state_dict().items():
            layout.append((prefix + hf_vision_name(name), tuple(tensor.shape)))
    check_layout(preset, dict(layout))
    return layout


def check_layout(preset, shapes):
    """Guards the overrides: a timm/transformers change must not silently alter the layout."""
    d, s, llm = preset.dino, preset.siglip, preset.llm
    expected = {
        "vision_backbone.featurizer.pos_embed": (1, 256, d.embed_dim),
        "vision_backbone.featurizer.reg_token": (1, 4, d.embed_dim),
        f"vision_backbone.featurizer.blocks.{d.depth - 1}.mlp.fc1.weight": (d.mlp_hidden, d.embed_dim),
        f"vision_backbone.featurizer.blocks.{d.depth - 1}.ls2.scale_factor": (d.embed_dim,),
        "vision_backbone.fused_featurizer.pos_embed": (1, 256, s.embed_dim),
        f"vision_backbone.fused_featurizer.blocks.{s.depth - 1}.mlp.fc1.weight": (s.mlp_hidden, s.embed_dim),
        "vision_backbone.fused_featurizer.attn_pool.latent": (1, 1, s.embed_dim),
        "projector.fc1.weight": (4 * (d.embed_dim + s.embed_dim), d.embed_dim + s.embed_dim),
        f"language_model.model.layers.{llm.layers - 1}.self_attn.k_proj.weight":
            (llm.kv_heads * llm.hidden // llm.heads, llm.hidden),
        "language_model.lm_head.weight": (llm.vocab, llm.hidden),
    }
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            raise ValueError(f"[make_test_model] layout changed: {name} is {shapes.get(name)}, expected {shape}")
    for name in shapes:
        if ".head." in name or (name.endswith(".cls_token") and "fused_featurizer" in name):
            raise ValueError(f"[make_test_model] unexpected tensor {name}: check the timm overrides")


def tensor_seed(seed, name):
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def random_tensor(name, shape, seed, dtype):
    """Draws one tensor per the scheme in the module docstring (f32, then rounded to dtype)."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    x = torch.randn(shape, generator=gen)
    leaf = name.rsplit(".", 1)[-1]
    is_table = leaf in ("cls_token", "reg_token", "pos_embed", "latent") or name.endswith("embed_tokens.weight")
    if leaf == "bias":
        x.mul_(0.02)
    elif leaf == "scale_factor":
        x.mul_(0.2).add_(0.5)
    elif is_table:
        pass
    elif len(shape) == 1:  # LayerNorm / RMSNorm weight
        x.mul_(0.1).add_(1.0)
    else:  # Linear [out, in] or Conv [O, I, kH, kW]
        x.mul_(1.0 / math.sqrt(math.prod(shape[1:])))
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            x.mul_(QK_GAIN)
        elif name.endswith("attn.qkv.weight"):  # rows: q, k, v
            x[: 2 * shape[0] // 3].mul_(QK_GAIN)
    return x.to(dtype)


def split_into_shards(layout, itemsize, count):
    """Contiguous groups of tensors of roughly equal byte size, none empty."""
    if not 1 <= count <= len(layout):
        raise ValueError(f"[make_test_model] --shards must be 1..{len(layout)}, got {count}")
    sizes = [math.prod(shape) * itemsize for _, shape in layout]
    total = sum(sizes)
    shards, filled = [[]], 0
    for i, (tensor, size) in enumerate(zip(layout, sizes)):
        shards_to_open = count - len(shards)
        # A tensor opens the next shard when most of it would spill past this shard's share, or
        # when every remaining tensor is needed to give each remaining shard one.
        if shards[-1] and shards_to_open and (filled + size / 2 > len(shards) * total / count
                                              or len(layout) - i == shards_to_open):
            shards.append([])
        shards[-1].append(tensor)
        filled += size
    return shards, total


def write_safetensors(path, tensors, seed, dtype_name):
    """Streams one safetensors file: header first (all sizes are known), then tensor by tensor."""
    dtype, tag = DTYPES[dtype_name]
    itemsize = torch.tensor([], dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        size = math.prod(shape) * itemsize
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # tensor data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape in tensors:
            f.write(random_tensor(name, shape, seed, dtype).reshape(-1).view(torch.uint8).numpy())


def config_json(preset: Preset, dtype_name):
    llm = preset.llm
    config = {
        "architectures": ["PrismaticForConditionalGeneration"],
        "model_type": "prismatic",
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "llm_backbone_id": "moxin-7b-pure",
        "hf_llm_id": "moxin-org/moxin-llm-7b",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive",
        "timm_model_ids": TIMM_MODEL_IDS,
        "timm_override_act_layers": [None, None],
        "image_sizes": [IMAGE_SIZE, IMAGE_SIZE],
        "llm_max_length": 2048,
        "pad_token_id": 32000,
        "pad_to_multiple_of": 64,
        "output_projector_states": False,
        "torch_dtype": "bfloat16" if dtype_name == "bf16" else "float32",
        "text_config": {
            "model_type": "mistral",
            "architectures": ["MistralForCausalLM"],
            "hidden_size": llm.hidden,
            "num_hidden_layers": llm.layers,
            "num_attention_heads": llm.heads,
            "num_key_value_heads": llm.kv_heads,
            "intermediate_size": llm.intermediate,
            "vocab_size": llm.vocab,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 32768,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 32000,
            "torch_dtype": "bfloat16" if dtype_name == "bf16" else "float32",
        },
    }
    if preset.writes_timm_kwargs:
        config["timm_model_kwargs"] = [preset.dino.timm_kwargs(), preset.siglip.timm_kwargs()]
    return config


def write_model(preset_name, out, seed, dtype_name=None, shards=None, tokenizer=DEFAULT_TOKENIZER, log=print,
                layers=None):
    """Writes the checkpoint directory `out`; returns the list of safetensors files written.
    `layers` overrides the preset's decoder depth (None: the preset's)."""
    preset = PRESETS[preset_name]
    if layers is not None:
        if layers < 1:
            raise ValueError(f"[make_test_model] --layers must be >= 1, got {layers}")
        preset = dataclasses.replace(preset, llm=dataclasses.replace(preset.llm, layers=layers))
    dtype_name = dtype_name or preset.default_dtype
    out, tokenizer = pathlib.Path(out), pathlib.Path(tokenizer)
    if not tokenizer.is_file():
        raise ValueError(f"[make_test_model] tokenizer not found: {tokenizer} (pass --tokenizer PATH)")
    log(f"[make_test_model] preset={preset_name} layers={preset.llm.layers} seed={seed} dtype={dtype_name} out={out}")

    start = time.time()
    layout = tensor_layout(preset)
    itemsize = torch.tensor([], dtype=DTYPES[dtype_name][0]).element_size()
    total = sum(math.prod(shape) for _, shape in layout) * itemsize
    count = shards or preset.default_shards or math.ceil(total / SHARD_TARGET_BYTES)
    groups, total = split_into_shards(layout, itemsize, count)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        stale.unlink()

    files = ["model.safetensors"] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors"
                                                      for i in range(count)]
    for file, tensors in zip(files, groups):
        write_safetensors(out / file, tensors, seed, dtype_name)
        log(f"[make_test_model] wrote {file} ({len(tensors)} tensors, "
            f"{(out / file).stat().st_size / 1e9:.2f} GB, {time.time() - start:.1f} s)")
    if count > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {name: file for file, tensors in zip(files, groups) for name, _ in tensors}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config_json(preset, dtype_name), indent=2) + "\n")
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    params = sum(math.prod(shape) for _, shape in layout)
    log(f"[make_test_model] done: {len(layout)} tensors, {params / 1e9:.3f} B parameters, "
        f"{total / 1e9:.2f} GB in {count} file(s), {time.time() - start:.1f} s")
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16")
    parser.add_argument("--shards", type=int, default=None,
                        help="number of safetensors files (default: tiny 1, full ~4 GB each)")
    parser.add_argument("--tokenizer", type=pathlib.Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers (default: the preset's); widths stay the preset's")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        write_model(args.preset, args.out, seed, args.dtype, args.shards, args.tokenizer,
                    log=lambda line: print(line, flush=True), layers=args.layers)
    except ValueError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
