#!/usr/bin/env python3
"""Quantization quality of the engine itself: bf16 vs --quantize bits/group, fp8 and the fp8 KV cache on the same prompts.

    python bench/quant_quality.py --model DIR [--prompt TEXT ...] [--device cuda] [--out FILE]
    python bench/quant_quality.py --make-tiny DIR [--bigram] ...   # a fresh tiny model first
    flock /tmp/fullmodel.lock python bench/quant_quality.py --model /tmp/moxin-full ...

For each prompt, `moxin dump --hidden-states` runs the bf16 model and the model quantized at
load time for (8,32), (8,64), (8,128), (4,32), (4,64), (4,128) and fp8 (E4M3, per-channel scales) (the same
weights `moxin quantize` writes: the tests check the two are bit-identical), then the bf16
weights with the FP8 KV cache (`--kv-cache fp8`) and fp8 weights with it. With --device cuda
also "fp8 exact x": fp8 weights with MOXIN_CUDA_FP8_TENSOR_CORES=0, beside the default "fp8",
whose prefill rows (more than 64, so the default prompt is longer than that) run on the FP8
tensor cores with per-token E4M3 activations (docs/model.md section 5). Reported per
configuration, over all prompt positions
(teacher forcing on the prompt's own tokens):
  - each decoder layer's output (the residual stream): ||h_q - h_bf16|| / ||h_bf16||
  - the logits likewise, the mean KL(bf16 || q) of the next-token distributions, and the
    fraction of positions whose top-1 token is the same.
The bf16 model's own next-token statistics are printed too: top-1 agreement depends on how
decisive the distributions are (tests/py/quant_models.py).

--make-tiny writes tools/make_test_model.py's tiny preset with a fresh seed, its MLP widened
to a multiple of 128 (the tiny preset's 344 cannot be grouped), and with --bigram the planted
bigram that gives it a trained LM's decisive next-token distributions.
"""
import argparse
import datetime
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "py"))
# name -> the `moxin dump` options that load the model so
CONFIGS = {f"q{bits} g{group}": ["--quantize", str(bits), "--group-size", str(group)]
           for bits, group in [(8, 32), (8, 64), (8, 128), (4, 32), (4, 64), (4, 128)]}
CONFIGS["fp8"] = ["--quantize", "fp8"]
CONFIGS["kv fp8"] = ["--kv-cache", "fp8"]
CONFIGS["fp8 + kv fp8"] = ["--quantize", "fp8", "--kv-cache", "fp8"]
# CUDA only: the fp8 prefill with exact activations, set through the environment.
CUDA_CONFIGS = {"fp8 exact x": ["--quantize", "fp8"]}
CONFIG_ENV = {"fp8 exact x": {"MOXIN_CUDA_FP8_TENSOR_CORES": "0"}}


DEFAULT_PROMPT = ("Describe the picture in detail: what is in the foreground, what is in the background, "
                  "which colors stand out, and how many people or animals can you see? Then say what the "
                  "weather and the time of day seem to be, which objects look old or new, what the people "
                  "might be doing or saying, and whether anything in the scene looks out of place.")


def make_tiny(out, bigram):
    import quant_models
    seed = random.SystemRandom().randrange(2**31)
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_test_model.py"), "--preset", "tiny", "--out",
                    str(out), "--seed", str(seed)], check=True, capture_output=True)
    quant_models.widen_mlp(out, quant_models.INTERMEDIATE, seed)
    note = f"fresh tiny model, seed {seed}, MLP widened to {quant_models.INTERMEDIATE}"
    if bigram:
        alpha, _ = quant_models.plant_bigram(out, seed)
        note += f", bigram planted (alpha {alpha:.3f})"
    return note


def dump(binary, model, prompt, threads, device, out, options=(), env=None):
    args = [str(binary), "dump", "--model", str(model), "--threads", str(threads), "--device", device,
            "--hidden-states", "--prompt", prompt, "--out", str(out), *options]
    start = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"moxin dump failed ({proc.returncode}): {proc.stderr}")
    return load_file(str(out)), time.time() - start


class Accumulator:
    """Sums over prompts: squared errors and norms per layer and of the logits, KL, agreement."""

    def __init__(self):
        self.layer_err = self.layer_norm = 0.0
        self.logit_err = self.logit_norm = self.kl = 0.0
        self.agree = self.positions = 0

    def add(self, base, quant):
        diff = quant["hidden_states"].astype(np.float64) - base["hidden_states"]
        self.layer_err = self.layer_err + (diff ** 2).sum(axis=(1, 2))
        self.layer_norm = self.layer_norm + (base["hidden_states"].astype(np.float64) ** 2).sum(axis=(1, 2))
        b, q = torch.from_numpy(base["logits_all"]).double(), torch.from_numpy(quant["logits_all"]).double()
        self.logit_err += float(((q - b) ** 2).sum())
        self.logit_norm += float((b ** 2).sum())
        p, lq = torch.log_softmax(b, -1), torch.log_softmax(q, -1)
        self.kl += float((p.exp() * (p - lq)).sum())
        self.agree += int((b.argmax(-1) == q.argmax(-1)).sum())
        self.positions += b.shape[0]


def bf16_stats(logits):
    import quant_models
    return quant_models.logit_stats(torch.from_numpy(np.concatenate(logits)).double())


def report(header, results, stats):
    lines = header + [
        f"bf16 next-token distributions: mean top-1 prob {stats['top1_prob']:.3f}, mean entropy "
        f"{stats['entropy']:.2f} nats, median top-1/top-2 margin {stats['median_margin']:.2f} nats", ""]
    names = list(CONFIGS)
    lines.append("summary            " + "".join(f"{n:>14}" for n in names))
    acc = [results[c] for c in CONFIGS]
    lines.append("logits rel err     " + "".join(f"{(a.logit_err / a.logit_norm) ** 0.5:14.3e}" for a in acc))
    lines.append("mean KL(bf16||q)   " + "".join(f"{a.kl / a.positions:14.3e}" for a in acc))
    lines.append("top-1 agreement    " + "".join(f"{a.agree / a.positions:14.4f}" for a in acc))
    lines += ["", "layer output rel err" + "".join(f"{n:>14}" for n in names)]
    for i in range(len(acc[0].layer_err)):
        lines.append(f"  layer {i:3d}         " + "".join(f"{(a.layer_err[i] / a.layer_norm[i]) ** 0.5:14.3e}"
                                                       for a in acc))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=pathlib.Path)
    source.add_argument("--make-tiny", type=pathlib.Path, help="write a fresh tiny model here and use it")
    parser.add_argument("--bigram", action="store_true", help="with --make-tiny: plant the bigram")
    parser.add_argument("--prompt", action="append", help=f"repeatable (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--binary", type=pathlib.Path, default=ROOT / "build" / "src" / "cli" / "moxin")
    parser.add_argument("--out", type=pathlib.Path, help="also write the table here")
    args = parser.parse_args()
    prompts = args.prompt or [DEFAULT_PROMPT]
    model = args.model or args.make_tiny
    note = make_tiny(args.make_tiny, args.bigram) if args.make_tiny else "checkpoint as stored"
    if args.device == "cuda":
        CONFIGS.update(CUDA_CONFIGS)

    header = [f"# bench/quant_quality.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
              f"model: {model} ({note}); moxin: {args.binary}, --threads {args.threads}, --device {args.device}",
              f"{len(prompts)} prompt(s), teacher-forced over all their positions:"]
    results = {c: Accumulator() for c in CONFIGS}
    base_logits = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, prompt in enumerate(prompts):
            base, seconds = dump(args.binary, model, prompt, args.threads, args.device,
                                 pathlib.Path(tmp) / "bf16.safetensors")
            base_logits.append(base["logits_all"])
            times = [f"bf16 {seconds:.0f} s"]
            for name, options in CONFIGS.items():
                quant, seconds = dump(args.binary, model, prompt, args.threads, args.device,
                                      pathlib.Path(tmp) / "q.safetensors", options, CONFIG_ENV.get(name))
                results[name].add(base, quant)
                times.append(f"{name} {seconds:.0f} s")
            header.append(f"  [{k}] {len(base['input_ids'])} tokens: {prompt[:60]!r}{'...' if len(prompt) > 60 else ''}"
                          f" (dump wall time: {', '.join(times)})")
            print(header[-1], flush=True)
    text = report(header, results, bf16_stats(base_logits))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
