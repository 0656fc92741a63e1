#!/usr/bin/env python3
"""Prints moxin's GPU numbers next to the PyTorch peers of the same run and PERF.md's targets.

    python bench/compare.py bench_b1.json bench_bN.json peer.json
"""
import json
import sys

TARGETS = {"decode_b1": 170.0, "decode_bN": 3800.0, "prefill_ms": 28.0, "vision_ms": 3.0, "ttft_ms": 15.0}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"(missing {path}: {e})")
        return {}


def main():
    b1, bn, peer = (load(p) for p in sys.argv[1:4])
    n = bn.get("batch", 0)
    rows = [
        ("decode batch 1, tok/s", b1.get("decode_tok_s_per_seq"), peer.get("graph_decode_tok_s_b1"),
         "torch graph", TARGETS["decode_b1"], True),
        ("decode batch 1 vs HF static", b1.get("decode_tok_s_per_seq"), peer.get("hf_static_decode_tok_s"),
         "HF static", TARGETS["decode_b1"], True),
        (f"decode batch {n}, tok/s total", bn.get("decode_tok_s_total"),
         peer.get(f"graph_decode_tok_s_total_b{n}"), "torch graph", TARGETS["decode_bN"], True),
        (f"prefill {b1.get('prefill_tokens')} tokens, ms", b1.get("prefill_ms"), peer.get("hf_prefill_ms"),
         "HF eager", TARGETS["prefill_ms"], False),
        ("vision (both encoders), ms", b1.get("vision_ms"), peer.get("vision_ms"), "timm eager",
         TARGETS["vision_ms"], False),
        ("first token from JPEG, ms", b1.get("ttft_ms"), None, "", TARGETS["ttft_ms"], False),
    ]
    print(f"device: {b1.get('device')} | peer: {peer.get('device')} torch {peer.get('torch')}")
    print(f"bandwidth ceiling (copy, this run): {b1.get('bandwidth_ceiling_gbps', 0):.0f} GB/s")
    print(f"{'metric':34s} {'moxin':>10s} {'peer':>10s} {'peer is':>12s} {'speedup':>8s} {'target':>8s}")
    for name, ours, theirs, who, target, higher_better in rows:
        if ours is None:
            continue
        speed = (ours / theirs if higher_better else theirs / ours) if theirs else float("nan")
        met = (ours >= target) if higher_better else (ours <= target)
        print(f"{name:34s} {ours:10.2f} {theirs or float('nan'):10.2f} {who:>12s} {speed:7.2f}x "
              f"{target:7.1f} {'met' if met else 'MISSED'}")
    for label, r in (("batch 1", b1), (f"batch {n}", bn)):
        if r:
            print(f"{label}: {r['decode_gbps']:.0f} GB/s = {100 * r['decode_share_of_ceiling']:.1f}% of the ceiling; "
                  f"prefill {r['prefill_tflops']:.0f} TFLOP/s; GPU memory {r['device_memory_mb']:.0f} MB; "
                  f"host RSS after load {r.get('rss_after_load_mb', 0):.0f} MB (peak {r['peak_rss_mb']:.0f}); "
                  f"load {r['load_ms']:.0f} ms")


if __name__ == "__main__":
    main()
