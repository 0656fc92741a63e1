"""MLX compatibility (docs/model.md section 5): a checkpoint quantized by MLX itself loads and runs.

A fresh tiny model's decoder linears and lm_head are quantized with mlx.core.quantize (affine,
bits 4/8, group 64/128) and written as an MLX checkpoint is: `<linear>.weight` the packed U32
codes, `<linear>.scales` / `<linear>.biases` in the weights' dtype (bf16), every other tensor
as stored, config.json with "quantization": {"group_size", "bits"} and no quantize_config.json.
`moxin dump` on it is compared with the PyTorch reference run on mlx.core.dequantize'd weights
(scales and biases widened to f32 first, so the reference weights are s * q + b exactly, as
the engine computes them), to the tolerance of test_quant.py's dequantized-weights test.

Our own quantizer (`moxin quantize`, `--quantize`) writes MLX's codes bit for bit
(test_quant.py::test_codes_match_mlx); this file checks the other direction: files MLX wrote.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

import reference_vlm
from conftest import run_moxin
from quant_models import read_bf16, tiny_quant_model
from test_quant import CONFIGS, f32_checkpoint, quantized_names, random_question, rel_err

mx = pytest.importorskip("mlx.core", reason="mlx (requirements-test.txt) is not installed")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_quant_model(tmp_path_factory, "tiny-mlx-source", bigram=False)[0]


def mlx_quantize(weight_bf16, bits, group):
    """(codes uint32 numpy, scales bf16 torch, biases bf16 torch) from mlx.core.quantize."""
    w = mx.array(weight_bf16.float().numpy()).astype(mx.bfloat16)
    codes, scales, biases = mx.quantize(w, group_size=group, bits=bits, mode="affine")
    as_torch = lambda a: torch.from_numpy(np.array(a.astype(mx.float32))).to(torch.bfloat16)  # noqa: E731
    return np.array(codes), as_torch(scales), as_torch(biases)


def mlx_dequantize(codes, scales, biases, bits, group):
    f32 = lambda t: mx.array(t.float().numpy())  # noqa: E731
    return torch.from_numpy(np.array(mx.dequantize(mx.array(codes), f32(scales), f32(biases),
                                                   group_size=group, bits=bits, mode="affine")))


def write_mlx_checkpoint(source_dir, out, bits, group):
    """Returns {name: f32 tensor} of the reference weights (mlx-dequantized decoder linears)."""
    tensors = read_bf16(source_dir)
    reference = {name: t.float() for name, t in tensors.items()}
    for name in quantized_names(tensors):
        codes, scales, biases = mlx_quantize(tensors[name + ".weight"], bits, group)
        tensors[name + ".weight"] = torch.from_numpy(codes)
        tensors[name + ".scales"], tensors[name + ".biases"] = scales, biases
        reference[name + ".weight"] = mlx_dequantize(codes, scales, biases, bits, group)
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "mlx"})
    config = json.loads((source_dir / "config.json").read_text())
    config["quantization"] = {"group_size": group, "bits": bits}
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(source_dir / "tokenizer.json", out / "tokenizer.json")
    return reference


@pytest.mark.parametrize("bits,group", CONFIGS)
def test_mlx_checkpoint_matches_reference(moxin_bin, tiny_model, tmp_path, seed, bits, group):
    question = random_question(np.random.default_rng(seed))
    mlx_dir = tmp_path / "mlx"
    weights = write_mlx_checkpoint(tiny_model, mlx_dir, bits, group)
    ref_dir = f32_checkpoint(tiny_model, weights, tmp_path / "reference")
    ref = reference_vlm.run(reference_vlm.load_reference(str(ref_dir)), None, [question], 1)
    dump = tmp_path / "dump.safetensors"
    run_moxin(moxin_bin, "dump", "--model", mlx_dir, "--threads", 2, "--out", dump, "--prompt", question)
    ours = load_file(str(dump))
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
    err = rel_err(ours["logits_last"], ref["logits_last"])
    print(f"  MLX {bits}-bit g{group}: logits rel err vs reference on mlx-dequantized weights {err:.2e}")
    assert err < 1e-4
