"""Progress on stderr when it is not a terminal: one summary line per task (here quantizing the
decoder while loading, and `moxin quantize`), counted against the checkpoint's own config.json;
--quiet prints none. (Bars on a terminal and download summaries: test_hub.py.)"""
import json
import random
import re

import pytest

from conftest import run_moxin
from quant_models import tiny_quant_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_quant_model(tmp_path_factory, "progress", bigram=False)[0]  # MLP widths quantizable


def quantizable_matrices(model):
    # q, k, v, o, gate, up, down per layer, and lm_head.
    return 7 * json.loads((model / "config.json").read_text())["text_config"]["num_hidden_layers"] + 1


def test_quantize_while_loading_summary_and_quiet(moxin_bin, model, seed):
    bits = random.Random(seed).choice([4, 8])
    common = ["generate", "--model", model, "--prompt", "hi", "--max-tokens", "2", "--quantize", bits]
    out = run_moxin(moxin_bin, *common)
    lines = [l for l in out.stderr.splitlines() if l.startswith(f"quantize the decoder to {bits} bits: ")]
    assert len(lines) == 1, out.stderr
    assert re.fullmatch(rf"quantize the decoder to {bits} bits: {quantizable_matrices(model)} items in [\d.]+ s",
                        lines[0]), lines[0]
    assert "\r" not in out.stderr
    quiet = run_moxin(moxin_bin, *common, "--quiet")
    assert "quantize" not in quiet.stderr, quiet.stderr


def test_quantize_command_summary_and_quiet(moxin_bin, model, tmp_path):
    out = run_moxin(moxin_bin, "quantize", "--model", model, "--output", tmp_path / "q8", "--bits", 8)
    written = sum(p.stat().st_size for p in (tmp_path / "q8").glob("*.safetensors"))
    summary = [l for l in out.stderr.splitlines() if l.startswith(f"quantize {model}: ")]
    assert len(summary) == 1 and "\r" not in out.stderr, out.stderr
    # The reported amount is the tensor payload written: the files less their headers.
    mb = float(re.search(r": ([\d.]+) MB in ", summary[0]).group(1))
    assert 0.9 * written / 1e6 < mb <= written / 1e6 + 0.05, (summary[0], written)
    quiet = run_moxin(moxin_bin, "quantize", "--model", model, "--output", tmp_path / "q4", "--bits", 4, "--quiet")
    assert f"quantize {model}" not in quiet.stderr and "wrote" in quiet.stderr, quiet.stderr
