"""FP8 E4M3 decoder weights with per-output-channel scales (docs/model.md section 5) through the
CLI, against PyTorch:

(a) `moxin quantize --bits fp8`: every code equals PyTorch's torch.float8_e4m3fn conversion of
    w / scale and every scale equals amax(|row|) / 448 computed in float32 (1 for an all-zero
    row), on the tiny bf16 model and on an f32 copy with outliers, zero rows and tiny rows;
    the format is recorded in quantize_config.json and config.json.
(b) `moxin dump` on that checkpoint vs the PyTorch reference run in float32 on the fp8-rounded
    weights (codes x scales), on each of MOXIN_PARITY_DEVICES with test_parity.py's tolerance (on
    CUDA the reference rounds the decoder linears' inputs per token to E4M3 in the prefill of the
    long prompt, as the FP8 tensor cores do);
    `--quantize fp8` at load gives the checkpoint's very logits (on the CPU bit for bit).
Plus refusals: metadata missing or contradicting the tensors, malformed scales, re-quantizing.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch, save_file

import reference_vlm
from conftest import run_moxin
from quant_models import tiny_quant_model
from test_parity import DEVICES, needs_bf16_reference, rel_tol_for
from test_quant import f32_checkpoint, quantized_names, random_question, rel_err

FP8_CONFIG = {"quant_method": "fp8", "weight_scale": "per_channel"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_quant_model(tmp_path_factory, "tiny-bf16-fp8", bigram=False)[0]


@pytest.fixture(scope="module")
def fp8_model(moxin_bin, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-fp8")
    shutil.rmtree(out)
    run_moxin(moxin_bin, "quantize", "--model", tiny_model, "--output", out, "--bits", "fp8", "--threads", 2)
    return out


def torch_fp8(w):
    """(codes as uint8, scales): PyTorch's E4M3 conversion with per-row float32 scales."""
    w = w.float()
    scale = w.abs().amax(dim=1) / 448.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (w / scale[:, None]).to(torch.float8_e4m3fn).view(torch.uint8), scale


def stored_tensors(model_dir):
    """Every tensor of a checkpoint in its stored dtype (F8_E4M3 stays torch.float8_e4m3fn)."""
    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_torch(str(file)))
    return tensors


def check_codes(model_dir, source):
    stored = stored_tensors(model_dir)
    for name in quantized_names(source):
        codes, scale = stored[name + ".weight"], stored[name + ".weight_scale"]
        assert codes.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32, name
        ref_codes, ref_scale = torch_fp8(source[name + ".weight"])
        assert torch.equal(scale, ref_scale), name
        mismatch = (codes.view(torch.uint8) != ref_codes).sum().item()
        assert mismatch == 0, f"{name}: {mismatch} of {codes.numel()} codes differ from torch.float8_e4m3fn"
    for name, t in source.items():  # everything else is copied as stored
        if not any(name == q + ".weight" for q in quantized_names(source)):
            assert torch.equal(stored[name].float(), t.float()), name


def test_codes_match_torch_bf16_input(moxin_bin, tiny_model, fp8_model):
    source = stored_tensors(tiny_model)
    check_codes(fp8_model, source)
    for path in (fp8_model / "quantize_config.json", fp8_model / "config.json"):
        meta = json.loads(path.read_text())
        assert (meta if path.name == "quantize_config.json" else meta["quantization"]) == FP8_CONFIG, path
    inspect = json.loads(run_moxin(moxin_bin, "inspect", "--model", fp8_model, "--json").stdout)
    assert inspect["decoder"]["quantization"] == [{"format": "fp8_e4m3", "linears": len(quantized_names(source))}]


def test_codes_match_torch_edge_cases(moxin_bin, tiny_model, tmp_path, seed):
    """f32 weights with outliers (1% x 30), an all-zero row, a row of one tiny value (subnormal
    codes), rows at the E4M3 rounding ties and a row of negative zeros."""
    rng = np.random.default_rng(seed)
    tensors = reference_vlm.read_checkpoint(tiny_model)
    for name in quantized_names(tensors):
        w = tensors[name + ".weight"].numpy().copy()
        w[rng.random(w.shape) < 0.01] *= 30
        w[0] = 0.0
        w[1] = -0.0
        # With amax 1 the scale is 1/448: |w| < 2^-6 / 448 ~ 3.5e-5 lands in E4M3's subnormals.
        w[2] = rng.uniform(-3.5e-5, 3.5e-5, w.shape[1]).astype(np.float32)
        w[2, 0] = 1.0
        # Halfway between neighbouring E4M3 values after scaling by amax / 448 = 1: ties to even.
        w[3] = rng.choice(np.array([448, 1.0625, 1.1875, 0.0087890625, -3.25, 0.001953125 * 1.5], np.float32),
                          w.shape[1])
        w[3, 0] = 448.0
        tensors[name + ".weight"] = torch.from_numpy(w)
    src = f32_checkpoint(tiny_model, tensors, tmp_path / "f32")
    out = tmp_path / "fp8"
    run_moxin(moxin_bin, "quantize", "--model", src, "--output", out, "--bits", "fp8", "--threads", 2)
    check_codes(out, tensors)


def fp8_rounded_checkpoint(tiny_model, fp8_dir, out):
    """An f32 checkpoint whose decoder linears hold codes x scales (the reference's input)."""
    tensors = reference_vlm.read_checkpoint(fp8_dir)  # F8_E4M3 codes upcast exactly
    for name in quantized_names(tensors):
        tensors[name + ".weight"] = tensors[name + ".weight"] * tensors.pop(name + ".weight_scale")[:, None]
    return f32_checkpoint(tiny_model, tensors, out)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def test_engine_matches_reference_on_fp8_weights(moxin_bin, tiny_model, fp8_model, tmp_path, seed, device,
                                                 monkeypatch):
    # More than 64 prompt tokens, so that a CUDA prefill runs on the FP8 tensor cores by default.
    rng = np.random.default_rng(seed)
    question = " ".join(random_question(rng) for _ in range(20))
    ref_dir = fp8_rounded_checkpoint(tiny_model, fp8_model, tmp_path / "rounded")

    def reference_run(dtype, e4m3_prefill=False):
        reference = reference_vlm.load_reference(str(ref_dir), dtype=dtype)
        if e4m3_prefill:
            reference_vlm.quantize_prefill_activations(reference.llm, min_rows=65)
        return reference_vlm.run(reference, None, [question], 1)

    def dump(name, model=fp8_model, *extra):
        out = tmp_path / f"{name}.safetensors"
        run_moxin(moxin_bin, "dump", "--model", model, "--device", device, "--threads", 2, "--out", out,
                  "--prompt", question, *extra)
        return load_file(str(out))

    ref = reference_run(torch.float32)
    bf16_ref = None if not needs_bf16_reference(device) else reference_run(torch.bfloat16)
    rel_tol = rel_tol_for(device, "logits_last", ref, bf16_ref)
    with monkeypatch.context() as env:
        env.setenv("MOXIN_CUDA_FP8_TENSOR_CORES", "0")  # CUDA: exact activations at every row count
        ours = dump("stored")
        loaded = dump("loaded", tiny_model, "--quantize", "fp8")
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
    err = rel_err(ours["logits_last"], ref["logits_last"])
    print(f"  fp8 on {device}: logits rel err vs reference on fp8-rounded weights {err:.2e} (tolerance {rel_tol:.2e})")
    assert err < rel_tol
    if device == "cpu":
        np.testing.assert_array_equal(loaded["logits_last"], ours["logits_last"])
    else:
        assert rel_err(loaded["logits_last"], ours["logits_last"]) < rel_tol
    if device != "cuda":
        return
    # The default CUDA prefill: the FP8 tensor cores on activations rounded to E4M3 per token,
    # against a reference that rounds them the same way. Which side of an E4M3 rounding boundary
    # a value falls on moves with any rounding before it (on this random model a bf16 rounding of
    # the attention output alone moves the logits by ~10%), so the yardstick is PyTorch's bf16 run
    # of the same scheme, and the check catches gross errors (a wrong scale or row: ~100%); the
    # per-linear tests (tests/cuda/test_cuda_fp8.cpp) hold the kernel to 5e-4.
    ref_e4m3 = reference_run(torch.float32, e4m3_prefill=True)
    tol_e4m3 = rel_tol_for(device, "logits_last", ref_e4m3, reference_run(torch.bfloat16, e4m3_prefill=True))
    tensor_cores = dump("tensor-cores")["logits_last"]
    err_e4m3 = rel_err(tensor_cores, ref_e4m3["logits_last"])
    print(f"  fp8 tensor cores: logits rel err vs the E4M3-activation reference {err_e4m3:.2e} "
          f"(vs the exact one {rel_err(tensor_cores, ref['logits_last']):.2e}; tolerance {tol_e4m3:.2e})")
    assert err_e4m3 < tol_e4m3


def generate_error(moxin_bin, model_dir):
    out = run_moxin(moxin_bin, "generate", "--model", model_dir, "--prompt", "Hi?", "--max-tokens", 1, check=False)
    assert out.returncode == 1 and "[checkpoint]" in out.stderr, out.stderr
    return out.stderr


def test_metadata_must_say_fp8(moxin_bin, fp8_model, tmp_path):
    bad = tmp_path / "no-meta"
    shutil.copytree(fp8_model, bad)
    (bad / "quantize_config.json").unlink()
    config = json.loads((bad / "config.json").read_text())
    del config["quantization"]
    (bad / "config.json").write_text(json.dumps(config))
    assert "weight_scale' marks" in generate_error(moxin_bin, bad)
    (bad / "quantize_config.json").write_text(json.dumps({"bits": 8, "group_size": 64}))
    assert "bits 8, group_size 64" in generate_error(moxin_bin, bad)
    (bad / "quantize_config.json").write_text(json.dumps({"quant_method": "fp8", "weight_scale": "per_tensor"}))
    assert "weight_scale" in generate_error(moxin_bin, bad)
    (bad / "quantize_config.json").write_text(json.dumps({"quant_method": "fp8", "bits": 8}))
    assert "drop bits and group_size" in generate_error(moxin_bin, bad)


def test_malformed_scales_are_refused(moxin_bin, fp8_model, tmp_path):
    name = "language_model.model.layers.0.self_attn.q_proj"
    for label, change, message in [
        ("bf16-scale", lambda t: t[name + ".weight_scale"].to(torch.bfloat16), "expected F32"),
        ("short-scale", lambda t: t[name + ".weight_scale"][:-1].contiguous(), "one scale per output channel"),
        ("missing-scale", None, ".weight_scale' (F32 [out]) is missing"),
    ]:
        bad = tmp_path / label
        shutil.copytree(fp8_model, bad)
        files = sorted(bad.glob("*.safetensors"))
        assert len(files) == 1
        tensors = load_torch(str(files[0]))
        if change is None:
            del tensors[name + ".weight_scale"]
        else:
            tensors[name + ".weight_scale"] = change(tensors)
        save_file(tensors, str(files[0]), metadata={"format": "pt"})
        index = bad / "model.safetensors.index.json"
        weight_map = json.loads(index.read_text())
        weight_map["weight_map"] = {k: v for k, v in weight_map["weight_map"].items() if k in tensors}
        index.write_text(json.dumps(weight_map))
        assert message in generate_error(moxin_bin, bad), label


def test_fp8_input_is_refused(moxin_bin, fp8_model, tmp_path):
    out = run_moxin(moxin_bin, "quantize", "--model", fp8_model, "--output", tmp_path / "again", "--bits", "fp8",
                    check=False)
    assert out.returncode == 1 and "already quantized" in out.stderr and "fp8" in out.stderr, out.stderr
    out = run_moxin(moxin_bin, "dump", "--model", fp8_model, "--quantize", "fp8", "--prompt", "Hi?", "--out",
                    tmp_path / "x.safetensors", check=False)
    assert out.returncode == 1 and "already fp8 quantized" in out.stderr, out.stderr
