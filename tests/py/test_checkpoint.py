"""Checkpoint loading: `moxin inspect --json` on small random checkpoints in the published layout.

Each checkpoint is written here with the `safetensors` package (the reference writer) from
shapes this file states independently of the C++ mapping (docs/model.md section 1 at small sizes),
in every supported naming variant, single-file and sharded, dense and MLX-quantized. The good
cases assert the derived configuration; the bad ones assert exit status 1 and a message that
names the problem. Fresh random weights, shard layout and variants each run (seed printed).
"""
import dataclasses
import json
import math
import random
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_moxin

DINO = "vision_backbone.featurizer."
SIGLIP = "vision_backbone.fused_featurizer."


@dataclasses.dataclass
class Spec:
    """A tiny Moxin VLM: every structural feature of the published one at small widths."""
    dino_dim: int = 32
    dino_depth: int = 4
    dino_mlp: int = 128
    siglip_dim: int = 48
    siglip_depth: int = 4
    siglip_mlp: int = 172
    hidden: int = 64
    layers: int = 3
    heads: int = 4
    head_dim: int = 16
    kv_heads: int = 1
    intermediate: int = 160
    vocab: int = 320
    # naming variants (docs/model.md section 1)
    llm_prefix: str = "language_model."
    projector_names: tuple = ("fc1", "fc2", "fc3")
    layerscale_name: str = "scale_factor"
    register_name: str = "reg_token"
    rotary_buffers: bool = False
    # MLX quantization of the decoder linears: None or (bits, group_size)
    quant: tuple = None

    @property
    def projector_in(self):
        return self.dino_dim + self.siglip_dim


def vit_shapes(prefix, dim, depth, mlp, dinov2, spec):
    s = {prefix + "patch_embed.proj.weight": (dim, 3, 14, 14), prefix + "patch_embed.proj.bias": (dim,),
         prefix + "pos_embed": (1, 256, dim), prefix + "norm.weight": (dim,), prefix + "norm.bias": (dim,)}
    if dinov2:
        s[prefix + "cls_token"] = (1, 1, dim)
        s[prefix + spec.register_name] = (1, 4, dim)
    else:  # timm's attention-pool head: present in the published checkpoint, unused
        s.update({prefix + "attn_pool.latent": (1, 1, dim), prefix + "attn_pool.q.weight": (dim, dim),
                  prefix + "attn_pool.kv.weight": (2 * dim, dim), prefix + "attn_pool.mlp.fc1.weight": (mlp, dim)})
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        s.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "norm2.weight": (dim,),
                  b + "norm2.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                  b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                  b + "mlp.fc1.weight": (mlp, dim), b + "mlp.fc1.bias": (mlp,),
                  b + "mlp.fc2.weight": (dim, mlp), b + "mlp.fc2.bias": (dim,)})
        if dinov2:
            s[b + "ls1." + spec.layerscale_name] = (dim,)
            s[b + "ls2." + spec.layerscale_name] = (dim,)
    return s


def decoder_linears(spec):
    """(name prefix, out, in) of every linear that may be quantized."""
    p = spec.llm_prefix + "model.layers."
    q_rows, kv_rows = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    out = []
    for i in range(spec.layers):
        out += [(f"{p}{i}.self_attn.q_proj", q_rows, spec.hidden), (f"{p}{i}.self_attn.k_proj", kv_rows, spec.hidden),
                (f"{p}{i}.self_attn.v_proj", kv_rows, spec.hidden), (f"{p}{i}.self_attn.o_proj", spec.hidden, q_rows),
                (f"{p}{i}.mlp.gate_proj", spec.intermediate, spec.hidden),
                (f"{p}{i}.mlp.up_proj", spec.intermediate, spec.hidden),
                (f"{p}{i}.mlp.down_proj", spec.hidden, spec.intermediate)]
    return out + [(spec.llm_prefix + "lm_head", spec.vocab, spec.hidden)]


def checkpoint_shapes(spec):
    """name -> (shape, kind) with kind "float" or "u32" (packed quantized codes)."""
    s = {}
    s.update(vit_shapes(DINO, spec.dino_dim, spec.dino_depth, spec.dino_mlp, True, spec))
    s.update(vit_shapes(SIGLIP, spec.siglip_dim, spec.siglip_depth, spec.siglip_mlp, False, spec))
    fc1, fc2, fc3 = spec.projector_names
    ph = 4 * spec.projector_in
    s.update({f"projector.{fc1}.weight": (ph, spec.projector_in), f"projector.{fc1}.bias": (ph,),
              f"projector.{fc2}.weight": (spec.hidden, ph), f"projector.{fc2}.bias": (spec.hidden,),
              f"projector.{fc3}.weight": (spec.hidden, spec.hidden), f"projector.{fc3}.bias": (spec.hidden,)})
    p = spec.llm_prefix
    s[p + "model.embed_tokens.weight"] = (spec.vocab, spec.hidden)
    s[p + "model.norm.weight"] = (spec.hidden,)
    for i in range(spec.layers):
        s[f"{p}model.layers.{i}.input_layernorm.weight"] = (spec.hidden,)
        s[f"{p}model.layers.{i}.post_attention_layernorm.weight"] = (spec.hidden,)
        if spec.rotary_buffers:
            s[f"{p}model.layers.{i}.self_attn.rotary_emb.inv_freq"] = (spec.head_dim // 2,)
    shapes = {name: (shape, "float") for name, shape in s.items()}
    for name, out, inp in decoder_linears(spec):
        if spec.quant:
            bits, group = spec.quant
            shapes[name + ".weight"] = ((out, inp * bits // 32), "u32")
            shapes[name + ".scales"] = ((out, inp // group), "float")
            shapes[name + ".biases"] = ((out, inp // group), "float")
        else:
            shapes[name + ".weight"] = ((out, inp), "float")
    return shapes


def make_tensors(shapes, dtype_of, rng):
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    out = {}
    for name, (shape, kind) in shapes.items():
        if kind == "u32":
            codes = np.frombuffer(torch.randint(0, 256, (math.prod(shape) * 4,), generator=gen,
                                                dtype=torch.uint8).numpy().tobytes(), dtype=np.uint32)
            out[name] = torch.from_numpy(codes.reshape(shape).copy())
        else:
            out[name] = torch.randn(shape, generator=gen).to(dtype_of(name))
    return out


def config_json(spec, flat=False, **overrides):
    text = {"model_type": "mistral", "hidden_size": spec.hidden, "num_hidden_layers": spec.layers,
            "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads,
            "intermediate_size": spec.intermediate, "vocab_size": spec.vocab, "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 32768,
            "sliding_window": None, "bos_token_id": 1, "eos_token_id": 2, "head_dim": None}
    text.update(overrides)
    if flat:
        return text
    return {"architectures": ["PrismaticForConditionalGeneration"], "model_type": "prismatic",
            "vision_backbone_id": "dinosiglip-vit-so-224px", "arch_specifier": "no-align+fused-gelu-mlp",
            "use_fused_vision_backbone": True, "image_resize_strategy": "resize-naive",
            "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
            "image_sizes": [224, 224], "pad_token_id": 32000, "pad_to_multiple_of": 64, "text_config": text}


def shard_name(i, n):
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_checkpoint(d, tensors, rng, shards=1, config=None):
    """Writes model.safetensors, or `shards` files + index (tensors dealt randomly over shards)."""
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config, indent=2))
    if shards == 1:
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
        return
    names = list(tensors)
    rng.shuffle(names)
    weight_map = {name: shard_name(k % shards, shards) for k, name in enumerate(names)}
    for i in range(shards):
        part = {n: tensors[n] for n in names if weight_map[n] == shard_name(i, shards)}
        save_file(part, d / shard_name(i, shards), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))


def expected_config(spec):
    def vit(dim, depth, mlp, dinov2, heads=16):
        return {"dim": dim, "depth": depth, "heads": heads, "head_dim": dim // heads, "mlp_dim": mlp,
                "patch": 14, "image_size": 224, "num_patches": 256, "has_cls": dinov2,
                "num_registers": 4 if dinov2 else 0, "layerscale": dinov2, "feature_layer": depth - 2}
    return {"dino": vit(spec.dino_dim, spec.dino_depth, spec.dino_mlp, True),
            "siglip": vit(spec.siglip_dim, spec.siglip_depth, spec.siglip_mlp, False),
            "projector": {"in": spec.projector_in, "hidden": 4 * spec.projector_in, "out": spec.hidden},
            "decoder": {"hidden": spec.hidden, "layers": spec.layers, "heads": spec.heads,
                        "kv_heads": spec.kv_heads, "head_dim": spec.head_dim, "intermediate": spec.intermediate,
                        "vocab": spec.vocab}}


def inspect(moxin_bin, d):
    return json.loads(run_moxin(moxin_bin, "inspect", "--model", d, "--json").stdout)


def assert_derived(got, spec):
    want = expected_config(spec)
    for part in ("dino", "siglip", "projector", "decoder"):
        for key, value in want[part].items():
            assert got[part][key] == value, f"{part}.{key}: got {got[part][key]}, want {value}"


def inspect_fails(moxin_bin, d, *parts):
    out = run_moxin(moxin_bin, "inspect", "--model", d, "--json", check=False)
    assert out.returncode == 1, f"expected exit 1, got {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}"
    assert out.stdout == ""
    for part in parts:
        assert part in out.stderr, f"{part!r} not in: {out.stderr}"
    return out.stderr


def random_variant(rng):
    return dict(llm_prefix=rng.choice(["language_model.", "llm_backbone.llm."]),
                projector_names=rng.choice([("fc1", "fc2", "fc3"), ("0", "2", "4")]),
                layerscale_name=rng.choice(["scale_factor", "gamma"]),
                register_name=rng.choice(["reg_token", "register_tokens"]))


# ----------------------------------------------------------------------------- good checkpoints

@pytest.mark.parametrize("dtype,shards", [("bf16", 1), ("f32", 1), ("bf16", 3), ("f32", 2)])
def test_published_names(moxin_bin, tmp_path, seed, dtype, shards):
    rng = random.Random(seed)
    spec = Spec()
    torch_dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    tensors = make_tensors(checkpoint_shapes(spec), lambda n: torch_dtype, rng)
    write_checkpoint(tmp_path, tensors, rng, shards, config_json(spec))
    got = inspect(moxin_bin, tmp_path)
    assert_derived(got, spec)
    assert got["tensors"] == len(tensors)
    assert got["total_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert got["dtypes"] == {dtype.upper(): len(tensors)}
    assert len(got["files"]) == shards
    dec = got["decoder"]
    assert (dec["rms_eps"], dec["rope_theta"], dec["max_position"], dec["bos_id"], dec["eos_id"]) == \
        (pytest.approx(1e-5), 10000.0, 32768, 1, 2)
    assert dec["quantization"] == []


@pytest.mark.parametrize("case", range(4))
def test_name_variants_and_mixed_dtypes(moxin_bin, tmp_path, seed, case):
    rng = random.Random(seed * 7 + case)
    spec = Spec(**random_variant(rng), rotary_buffers=rng.random() < 0.5)
    print("variant:", spec)
    dtypes = [torch.bfloat16, torch.float16, torch.float32]
    tensors = make_tensors(checkpoint_shapes(spec), lambda n: rng.choice(dtypes), rng)
    write_checkpoint(tmp_path, tensors, rng, rng.choice([1, 2, 4]), config_json(spec))
    got = inspect(moxin_bin, tmp_path)
    assert_derived(got, spec)
    assert sum(got["dtypes"].values()) == len(tensors)


def test_full_vocab_flat_config_and_token_ids(moxin_bin, tmp_path, seed):
    rng = random.Random(seed)
    spec = Spec(vocab=32064)
    tensors = make_tensors(checkpoint_shapes(spec), lambda n: torch.bfloat16, rng)
    config = config_json(spec, flat=True, rms_norm_eps=1e-6, rope_theta=500000.0, max_position_embeddings=4096,
                         bos_token_id=5, eos_token_id=[7, 9])
    write_checkpoint(tmp_path, tensors, rng, 1, config)
    got = inspect(moxin_bin, tmp_path)
    assert_derived(got, spec)
    dec = got["decoder"]
    assert (dec["rms_eps"], dec["rope_theta"], dec["max_position"], dec["bos_id"], dec["eos_id"]) == \
        (pytest.approx(1e-6), 500000.0, 4096, 5, 7)


def test_minimal_config_takes_dimensions_from_tensors(moxin_bin, tmp_path, seed):
    """A config written as a diff against Mistral defaults: only what tensors cannot say."""
    rng = random.Random(seed)
    spec = Spec(layers=2, kv_heads=2, intermediate=96)
    write_checkpoint(tmp_path, make_tensors(checkpoint_shapes(spec), lambda n: torch.bfloat16, rng), rng, 1,
                     {"text_config": {"num_attention_heads": spec.heads}})
    assert_derived(inspect(moxin_bin, tmp_path), spec)


def test_timm_kwargs_give_vision_heads(moxin_bin, tmp_path, seed):
    rng = random.Random(seed)
    spec = Spec()
    config = config_json(spec)
    config["timm_model_kwargs"] = [
        {"embed_dim": spec.dino_dim, "depth": spec.dino_depth, "num_heads": 4,
         "mlp_ratio": (spec.dino_mlp + 0.5) / spec.dino_dim},
        {"embed_dim": spec.siglip_dim, "depth": spec.siglip_depth, "num_heads": 6,
         "mlp_ratio": (spec.siglip_mlp + 0.5) / spec.siglip_dim}]
    write_checkpoint(tmp_path, make_tensors(checkpoint_shapes(spec), lambda n: torch.bfloat16, rng), rng, 1, config)
    got = inspect(moxin_bin, tmp_path)
    assert (got["dino"]["heads"], got["dino"]["head_dim"]) == (4, 8)
    assert (got["siglip"]["heads"], got["siglip"]["head_dim"]) == (6, 8)


def quant_spec(rng):
    bits, group = rng.choice([4, 8]), rng.choice([64, 128])
    return Spec(hidden=128, heads=8, head_dim=16, kv_heads=2, intermediate=256, quant=(bits, group))


@pytest.mark.parametrize("where", ["quantize_config.json", "config.json", "both"])
def test_quantized_decoder(moxin_bin, tmp_path, seed, where):
    rng = random.Random(seed)
    spec = quant_spec(rng)
    bits, group = spec.quant
    config = config_json(spec)
    if where in ("config.json", "both"):
        config["quantization"] = {"bits": bits, "group_size": group}
    tensors = make_tensors(checkpoint_shapes(spec), lambda n: torch.bfloat16, rng)
    write_checkpoint(tmp_path, tensors, rng, rng.choice([1, 2]), config)
    if where in ("quantize_config.json", "both"):
        (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": bits, "group_size": group}))
    got = inspect(moxin_bin, tmp_path)
    assert_derived(got, spec)
    assert got["decoder"]["quantization"] == [{"bits": bits, "group_size": group, "linears": 7 * spec.layers + 1}]
    assert got["dtypes"]["U32"] == 7 * spec.layers + 1


# ------------------------------------------------------------------------------ bad checkpoints

def good_checkpoint(d, seed, shards=1, spec=None, dtype=torch.bfloat16):
    rng = random.Random(seed)
    spec = spec or Spec()
    tensors = make_tensors(checkpoint_shapes(spec), lambda n: dtype, rng)
    write_checkpoint(d, tensors, rng, shards, config_json(spec))
    return spec, tensors


def read_raw(path):
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def write_raw(path, header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def shard_of(d, name):
    index = json.loads((d / "model.safetensors.index.json").read_text())
    return d / index["weight_map"][name]


def test_missing_tensor(moxin_bin, tmp_path, seed):
    spec, tensors = good_checkpoint(tmp_path, seed)
    name = f"language_model.model.layers.{spec.layers - 1}.mlp.up_proj.weight"
    del tensors[name]
    save_file(tensors, tmp_path / "model.safetensors")
    inspect_fails(moxin_bin, tmp_path, f"missing tensor '{name}'",
                  f"expected shape [{spec.intermediate}, {spec.hidden}]", str(tmp_path))


def test_missing_block_in_the_middle(moxin_bin, tmp_path, seed):
    _, tensors = good_checkpoint(tmp_path, seed)
    tensors = {n: t for n, t in tensors.items() if not n.startswith(SIGLIP + "blocks.1.")}
    save_file(tensors, tmp_path / "model.safetensors")
    inspect_fails(moxin_bin, tmp_path, f"missing tensors '{SIGLIP}blocks.1.*'")


@pytest.mark.parametrize("extra", [DINO + "blocks.0.attn.q_norm.weight", "language_model.model.layers.0.self_attn.q_proj.bias",
                                   "vision_backbone.extra_featurizer.pos_embed", "image_newline"])
def test_unexpected_tensor(moxin_bin, tmp_path, seed, extra):
    _, tensors = good_checkpoint(tmp_path, seed)
    tensors[extra] = torch.zeros(4, dtype=torch.bfloat16)
    save_file(tensors, tmp_path / "model.safetensors")
    inspect_fails(moxin_bin, tmp_path, "1 unexpected tensor", f"'{extra}' [4]", "Moxin-7B VLM checkpoint")


def test_wrong_shape(moxin_bin, tmp_path, seed):
    spec, tensors = good_checkpoint(tmp_path, seed)
    name = "language_model.model.layers.2.self_attn.q_proj.weight"
    tensors[name] = torch.zeros(spec.hidden, spec.hidden + 2, dtype=torch.bfloat16)
    save_file(tensors, tmp_path / "model.safetensors")
    inspect_fails(moxin_bin, tmp_path, f"tensor '{name}' has shape [{spec.hidden}, {spec.hidden + 2}], "
                  f"expected [{spec.hidden}, {spec.hidden}]", "model.safetensors")


def test_wrong_vision_shape(moxin_bin, tmp_path, seed):
    spec, tensors = good_checkpoint(tmp_path, seed)
    name = DINO + "blocks.1.mlp.fc2.weight"
    tensors[name] = torch.zeros(spec.dino_dim, spec.dino_mlp - 1, dtype=torch.bfloat16)
    save_file(tensors, tmp_path / "model.safetensors")
    inspect_fails(moxin_bin, tmp_path, f"tensor '{name}' has shape [{spec.dino_dim}, {spec.dino_mlp - 1}], "
                  f"expected [{spec.dino_dim}, {spec.dino_mlp}]")


def test_wrong_dtype(moxin_bin, tmp_path, seed):
    spec, tensors = good_checkpoint(tmp_path, seed)
    name = "language_model.model.norm.weight"
    tensors[name] = torch.zeros(spec.hidden, dtype=torch.int32)
    save_file(tensors, tmp_path / "model.safetensors")
    inspect_fails(moxin_bin, tmp_path, f"tensor '{name}' has dtype I32, expected F32, F16 or BF16")


def test_truncated_shard(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed, shards=3)
    shard = tmp_path / shard_name(1, 3)
    blob = shard.read_bytes()
    shard.write_bytes(blob[:len(blob) - 1 - random.Random(seed).randrange(64)])
    inspect_fails(moxin_bin, tmp_path, str(shard), "but the data section has", "truncated download")


def test_header_length_beyond_file(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed)
    path = tmp_path / "model.safetensors"
    blob = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob[8:])
    inspect_fails(moxin_bin, tmp_path, str(path), f"header length {len(blob)} runs past the end of the file")
    path.write_bytes(struct.pack("<Q", 2**40) + blob[8:])
    inspect_fails(moxin_bin, tmp_path, "header length 1099511627776 exceeds the limit")
    path.write_bytes(blob[:5])
    inspect_fails(moxin_bin, tmp_path, "too few for the 8-byte header length")


def test_overlapping_offsets(moxin_bin, tmp_path, seed):
    spec, _ = good_checkpoint(tmp_path, seed)
    path = tmp_path / "model.safetensors"
    header, data = read_raw(path)
    a, b = "language_model.model.layers.0.input_layernorm.weight", "language_model.model.norm.weight"
    begin = header[a]["data_offsets"][0] + 2  # same byte count, shifted into `a`
    header[b]["data_offsets"] = [begin, begin + 2 * spec.hidden]
    write_raw(path, header, data)
    inspect_fails(moxin_bin, tmp_path, "overlap", f"'{b}'")


def test_byte_count_mismatch(moxin_bin, tmp_path, seed):
    spec, _ = good_checkpoint(tmp_path, seed)
    path = tmp_path / "model.safetensors"
    header, data = read_raw(path)
    name = "projector.fc3.bias"
    header[name]["shape"] = [spec.hidden - 1]
    write_raw(path, header, data)
    inspect_fails(moxin_bin, tmp_path, f"tensor '{name}' holds {2 * spec.hidden} bytes",
                  f"BF16 [{spec.hidden - 1}] needs {2 * (spec.hidden - 1)} bytes")


def test_bad_json_header(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed)
    path = tmp_path / "model.safetensors"
    _, data = read_raw(path)
    text = b'{"a": {"dtype": "F32", '
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    inspect_fails(moxin_bin, tmp_path, str(path), "header is not valid JSON")


def test_duplicate_tensor_in_header(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed)
    path = tmp_path / "model.safetensors"
    header, data = read_raw(path)
    name = "language_model.model.norm.weight"
    entry = json.dumps(header[name])
    text = json.dumps(header)[:-1] + f', "{name}": {entry}}}'
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + data)
    inspect_fails(moxin_bin, tmp_path, f"has the key '{name}' twice")


@pytest.mark.parametrize("dtype", ["F64", "F8_E5M2", "BOOL"])  # F8_E4M3 holds fp8 weights (test_quant_fp8.py)
def test_unknown_dtype(moxin_bin, tmp_path, seed, dtype):
    good_checkpoint(tmp_path, seed)
    path = tmp_path / "model.safetensors"
    header, data = read_raw(path)
    name = DINO + "pos_embed"
    header[name]["dtype"] = dtype
    write_raw(path, header, data)
    inspect_fails(moxin_bin, tmp_path, f"tensor '{name}' has dtype {dtype}", "does not support", str(path))


def test_index_names_missing_shard(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed, shards=3)
    (tmp_path / shard_name(2, 3)).unlink()
    inspect_fails(moxin_bin, tmp_path, "model.safetensors.index.json", f"shard '{shard_name(2, 3)}'", "does not exist")


def test_index_names_a_shard_the_os_cannot_name(moxin_bin, tmp_path, seed):
    # A file name past the OS's limit (255 bytes on Linux): stat() fails with ENAMETOOLONG, which
    # once escaped as an uncaught std::filesystem error (found by the checkpoint-config fuzzer).
    good_checkpoint(tmp_path, seed, shards=2)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = random.Random(seed).choice(sorted(index["weight_map"]))
    long_name = "model-" + "a" * 300 + ".safetensors"
    index["weight_map"][name] = long_name
    index_path.write_text(json.dumps(index))
    inspect_fails(moxin_bin, tmp_path, f"shard '{long_name}'", "cannot be opened: File name too long")


def test_index_names_wrong_shard(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed, shards=3)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = random.Random(seed).choice(sorted(index["weight_map"]))
    actual = index["weight_map"][name]
    wrong = next(shard_name(i, 3) for i in range(3) if shard_name(i, 3) != actual)
    index["weight_map"][name] = wrong
    index_path.write_text(json.dumps(index))
    inspect_fails(moxin_bin, tmp_path, f"lists tensor '{name}' in '{wrong}', but it is in", actual)


def test_index_lists_tensor_absent_from_shard(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed, shards=2)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["language_model.model.ghost.weight"] = shard_name(0, 2)
    index_path.write_text(json.dumps(index))
    inspect_fails(moxin_bin, tmp_path, "lists tensor 'language_model.model.ghost.weight'",
                  "that shard does not contain it")


def test_shard_tensor_not_in_index(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed, shards=2)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "projector.fc2.weight"
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    inspect_fails(moxin_bin, tmp_path, f"tensor '{name}' is not listed in", "model.safetensors.index.json")


def test_tensor_in_two_shards(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed, shards=2)
    name = "projector.fc1.bias"
    home = shard_of(tmp_path, name)
    other = next(tmp_path / shard_name(i, 2) for i in range(2) if tmp_path / shard_name(i, 2) != home)
    tensors = load_file(other)
    tensors[name] = load_file(home)[name]
    save_file(tensors, other)
    inspect_fails(moxin_bin, tmp_path, f"tensor '{name}' is in two shards")


@pytest.mark.parametrize("key,value,derived", [("hidden_size", 128, 64), ("num_hidden_layers", 36, 3),
                                               ("num_key_value_heads", 8, 1), ("intermediate_size", 14336, 160),
                                               ("vocab_size", 32064, 320)])
def test_config_contradicts_tensors(moxin_bin, tmp_path, seed, key, value, derived):
    spec, _ = good_checkpoint(tmp_path, seed)
    (tmp_path / "config.json").write_text(json.dumps(config_json(spec, **{key: value})))
    inspect_fails(moxin_bin, tmp_path, f"says text_config.{key} = {value}, but the tensors say {derived}")


def test_timm_kwargs_contradict_tensors(moxin_bin, tmp_path, seed):
    spec, _ = good_checkpoint(tmp_path, seed)
    config = config_json(spec)
    config["timm_model_kwargs"] = [{"embed_dim": spec.dino_dim, "depth": 24}, None]
    (tmp_path / "config.json").write_text(json.dumps(config))
    inspect_fails(moxin_bin, tmp_path, f"timm_model_kwargs[0].depth = 24, but the tensors say {spec.dino_depth}")


def test_missing_config(moxin_bin, tmp_path, seed):
    good_checkpoint(tmp_path, seed)
    (tmp_path / "config.json").unlink()
    inspect_fails(moxin_bin, tmp_path, "config.json not found", "Moxin-7B-VLM-hf")


@pytest.mark.parametrize("text,message", [('{"text_config": {"hidden_size": 64,}}', "is not valid JSON"),
                                          ('{"text_config": {"hidden_size": "64"}}', 'text_config.hidden_size is "64"'),
                                          ('{"text_config": []}', "text_config is an array"),
                                          ('{"text_config": {"rope_scaling": {"type": "linear"}}}', "rope_scaling"),
                                          ('{"a": 1, "a": 2}', "has the key 'a' twice"),
                                          ("[]", "expected a JSON object")])
def test_broken_config(moxin_bin, tmp_path, seed, text, message):
    good_checkpoint(tmp_path, seed)
    (tmp_path / "config.json").write_text(text)
    inspect_fails(moxin_bin, tmp_path, "config.json", message)


@pytest.mark.parametrize("key,value,message", [
    ("rope_theta", 1e-300, "text_config.rope_theta is 1e-300, expected a number in [1, 1e+10]"),
    ("rms_norm_eps", 1e300, "text_config.rms_norm_eps is 1e+300, expected a number in [1e-12, 0.1]"),
    ("rms_norm_eps", 0.0, "text_config.rms_norm_eps is 0.0, expected a number in [1e-12, 0.1]"),
    ("hidden_size", 2**40, "text_config.hidden_size is 1099511627776, expected an integer in [1, 1048576]"),
    ("max_position_embeddings", 0, "text_config.max_position_embeddings is 0, expected an integer in [1, 16777216]"),
    ("vocab_size", 2**31, "text_config.vocab_size is 2147483648, expected an integer in [1, 16777216]"),
    ("bos_token_id", 2**24, "text_config.bos_token_id is 16777216, expected a token id (an integer in [0, 16777215])"),
    ("eos_token_id", [-1], "text_config.eos_token_id is an array, expected a token id (an integer in [0, 16777215])"),
    ("sliding_window", 4096, "text_config.sliding_window is 4096: moxin does not implement sliding-window attention"),
])
def test_config_values_out_of_range(moxin_bin, tmp_path, seed, key, value, message):
    spec, _ = good_checkpoint(tmp_path, seed)
    (tmp_path / "config.json").write_text(json.dumps(config_json(spec, **{key: value})))
    inspect_fails(moxin_bin, tmp_path, "config.json", message)


@pytest.mark.parametrize("ratio,message", [(1e300, "mlp_ratio is 1e+300, expected a number in [0.001, 64]"),
                                           (-4.0, "mlp_ratio is -4.0, expected a number in [0.001, 64]"),
                                           (0.01, "embed_dim 32 x mlp_ratio must give an MLP of at least one unit")])
def test_vision_mlp_ratio_out_of_range(moxin_bin, tmp_path, seed, ratio, message):
    spec, _ = good_checkpoint(tmp_path, seed)
    config = config_json(spec)
    config["timm_model_kwargs"] = [{"embed_dim": spec.dino_dim, "mlp_ratio": ratio}, None]
    (tmp_path / "config.json").write_text(json.dumps(config))
    inspect_fails(moxin_bin, tmp_path, "timm_model_kwargs[0].", message)


def test_sliding_window_that_never_slides_is_accepted(moxin_bin, tmp_path, seed):
    spec, _ = good_checkpoint(tmp_path, seed)
    rng = random.Random(seed)
    context = rng.choice([4096, 32768])
    (tmp_path / "config.json").write_text(json.dumps(
        config_json(spec, max_position_embeddings=context, sliding_window=context + rng.choice([0, 1, 10**6]))))
    assert inspect(moxin_bin, tmp_path)["decoder"]["max_position"] == context


def test_directory_without_weights(moxin_bin, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    inspect_fails(moxin_bin, tmp_path, "no model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    inspect_fails(moxin_bin, tmp_path / "nowhere", "does not exist")
    # A name past the OS's limit is named as such, not as a crash or a missing directory.
    inspect_fails(moxin_bin, tmp_path / ("a" * 300), "cannot be read: File name too long")


def test_quantized_without_metadata(moxin_bin, tmp_path, seed):
    rng = random.Random(seed)
    spec = quant_spec(rng)
    write_checkpoint(tmp_path, make_tensors(checkpoint_shapes(spec), lambda n: torch.bfloat16, rng), rng, 1,
                     config_json(spec))
    inspect_fails(moxin_bin, tmp_path, ".scales' marks", "quantize_config.json")


def test_quantized_metadata_contradicts_shapes(moxin_bin, tmp_path, seed):
    rng = random.Random(seed)
    spec = quant_spec(rng)
    bits, group = spec.quant
    write_checkpoint(tmp_path, make_tensors(checkpoint_shapes(spec), lambda n: torch.bfloat16, rng), rng, 1,
                     config_json(spec))
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 12 - bits, "group_size": group}))
    inspect_fails(moxin_bin, tmp_path, "has shape", f"{12 - bits}-bit codes", "quantize_config.json says bits")
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": bits, "group_size": 192 - group}))
    inspect_fails(moxin_bin, tmp_path, "has shape", "one per group of", "group_size")
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 3, "group_size": group}))
    inspect_fails(moxin_bin, tmp_path, "bits must be 4 or 8")
    config = config_json(spec)
    config["quantization"] = {"bits": 12 - bits, "group_size": group}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": bits, "group_size": group}))
    inspect_fails(moxin_bin, tmp_path, "contradicts")


def test_quantized_embedding_is_refused(moxin_bin, tmp_path, seed):
    rng = random.Random(seed)
    spec = quant_spec(rng)
    tensors = make_tensors(checkpoint_shapes(spec), lambda n: torch.bfloat16, rng)
    for suffix in ("scales", "biases"):
        tensors[f"language_model.model.embed_tokens.{suffix}"] = torch.zeros(spec.vocab, 2, dtype=torch.bfloat16)
    write_checkpoint(tmp_path, tensors, rng, 1, config_json(spec))
    (tmp_path / "quantize_config.json").write_text(json.dumps(dict(zip(("bits", "group_size"), spec.quant))))
    inspect_fails(moxin_bin, tmp_path, "embed_tokens.biases", "Only the decoder's q/k/v/o/gate/up/down")


def test_generator_names_match_timm_and_transformers():
    """The names and shapes written above are those of the real modules (docs/model.md section 6)."""
    import timm
    from transformers import MistralConfig, MistralForCausalLM

    spec = Spec()
    mine = {name: shape for name, (shape, _) in checkpoint_shapes(spec).items()}
    real = {}
    with torch.device("meta"):
        for prefix, model_id, dim, depth, mlp in [
                (DINO, "vit_large_patch14_reg4_dinov2", spec.dino_dim, spec.dino_depth, spec.dino_mlp),
                (SIGLIP, "vit_so400m_patch14_siglip_224", spec.siglip_dim, spec.siglip_depth, spec.siglip_mlp)]:
            vit = timm.create_model(model_id, pretrained=False, num_classes=0, img_size=224, embed_dim=dim,
                                    depth=depth, num_heads=16, mlp_ratio=(mlp + 0.5) / dim)
            for name, t in vit.state_dict().items():  # the HF conversion renames LayerScale gamma
                real[prefix + name.replace(".gamma", ".scale_factor")] = tuple(t.shape)
        llm = MistralForCausalLM(MistralConfig(
            hidden_size=spec.hidden, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim, intermediate_size=spec.intermediate,
            vocab_size=spec.vocab, tie_word_embeddings=False))
        real.update({"language_model." + n: tuple(t.shape) for n, t in llm.state_dict().items()})
    for name, shape in mine.items():
        if name.startswith("projector."):
            continue  # Prismatic's projector has no library module; docs/model.md gives its shapes
        assert real.get(name) == shape, f"{name}: generator {shape}, real module {real.get(name)}"
    # What the real modules have beyond the generator is only the unused SigLIP pooling head.
    assert all(n.startswith(SIGLIP + "attn_pool.") for n in set(real) - set(mine)), set(real) - set(mine)
