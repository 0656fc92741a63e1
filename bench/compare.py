#!/usr/bin/env python3
"""Prints moxin's GPU numbers next to the PyTorch peers of the same run and the serving targets
(issue #10, H200).

    python bench/compare.py bench.json peer.json

bench.json: `moxin bench --batch 1,2,4,...` with vision, prefill and first token; its "decode"
list holds one run per batch size.
"""
import json
import sys

TARGETS = {"prefill_ms": 23.0, "vision_ms": 2.5, "ttft_ms": 12.0}
# decode: batch -> tok/s total; batch 1 also >= 85% of the copy ceiling.
DECODE_TARGETS = {1: 220.0, 32: 5300.0, 128: 10000.0}
SMALL_BATCH_STEP_LIMIT = 1.15  # step at batch 2..16 <= 1.15 x the batch-1 step


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"(missing {path}: {e})")
        return {}


def main():
    bench, peer = (load(p) for p in sys.argv[1:3])
    runs = {d["batch"]: d for d in bench.get("decode", [])}
    print(f"device: {bench.get('device')} | peer: {peer.get('device')} torch {peer.get('torch')}")
    ceiling = bench.get("bandwidth_ceiling_gbps", 0)
    print(f"bandwidth ceiling (copy, this run): {ceiling:.0f} GB/s")
    print(f"{'metric':34s} {'moxin':>10s} {'peer':>10s} {'peer is':>12s} {'speedup':>8s} {'target':>8s}")
    rows = []
    for batch, d in sorted(runs.items()):
        theirs = peer.get("graph_decode_tok_s_b1") if batch == 1 else peer.get(f"graph_decode_tok_s_total_b{batch}")
        rows.append((f"decode batch {batch}, tok/s total", d["decode_tok_s_total"], theirs, "torch graph",
                     DECODE_TARGETS.get(batch), True))
    rows += [
        (f"prefill {bench.get('prefill_tokens')} tokens, ms", bench.get("prefill_ms"), peer.get("hf_prefill_ms"),
         "HF eager", TARGETS["prefill_ms"], False),
        ("vision (both encoders), ms", bench.get("vision_ms"), peer.get("vision_ms"), "timm eager",
         TARGETS["vision_ms"], False),
        ("first token from JPEG, ms", bench.get("ttft_ms"), None, "", TARGETS["ttft_ms"], False),
    ]
    for name, ours, theirs, who, target, higher_better in rows:
        if not ours:
            continue
        speed = (ours / theirs if higher_better else theirs / ours) if theirs else float("nan")
        verdict = "" if target is None else ("met" if (ours >= target if higher_better else ours <= target)
                                             else "MISSED")
        print(f"{name:34s} {ours:10.2f} {theirs or float('nan'):10.2f} {who:>12s} {speed:7.2f}x "
              f"{target or float('nan'):8.1f} {verdict}")
    if bench.get("ttft_image_ms"):
        image, prefill = bench["ttft_image_ms"], bench["ttft_prefill_ms"]
        print(f"first token = image decode + encoders {image:.2f} ms + prefill {prefill:.2f} ms "
              f"+ the rest {bench['ttft_ms'] - image - prefill:.2f} ms (medians)")
    if 1 in runs:
        b1 = runs[1]
        print(f"batch 1: {100 * b1['decode_share_of_ceiling']:.1f}% of the copy ceiling (target 85%)")
        for batch in (2, 4, 8, 16):
            if batch in runs:
                ratio = runs[batch]["decode_step_ms"] / b1["decode_step_ms"]
                print(f"batch {batch} step = {ratio:.2f}x batch 1 (target <= {SMALL_BATCH_STEP_LIMIT}) "
                      f"{'met' if ratio <= SMALL_BATCH_STEP_LIMIT else 'MISSED'}")
    for batch, d in sorted(runs.items()):
        if d.get("costlier_than_batch"):
            print(f"CLIFF: batch {batch} costs more per token than batch {d['costlier_than_batch']}")
    if bench:
        if "device_weights_mb" in bench:
            rest = bench["device_memory_mb"] - bench["device_weights_mb"] - bench["device_kv_cache_mb"]
            print(f"GPU memory: weights {bench['device_weights_mb']:.0f} MB, KV cache {bench['device_kv_cache_mb']:.0f} MB, "
                  f"the rest {rest:.0f} MB")
        print(f"GPU memory {bench['device_memory_mb']:.0f} MB; host RSS after load "
              f"{bench.get('rss_after_load_mb', 0):.0f} MB (peak {bench['peak_rss_mb']:.0f}); "
              f"load {bench['load_ms']:.0f} ms; prefill {bench['prefill_tflops']:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
