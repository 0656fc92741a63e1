#!/usr/bin/env python3
"""The FP8 KV cache against the bf16 one, same run (issue #11): decode tok/s per batch at the
bench's context, the bytes a cached token takes, and how many sequences of that context fit in the
memory the card has left after loading the model.

    python bench/compare_kv.py bench_kv_auto.json bench_kv_fp8.json [free_mb]

free_mb: device memory free after loading the model and before the KV cache (default: the card's
total minus the bf16 run's resident memory without its KV cache, as the JSON reports them).
"""
import json
import sys

TARGET_SPEEDUP = 1.4  # batch 32 at 4k context


def main():
    auto, fp8 = (json.load(open(p)) for p in sys.argv[1:3])
    context = auto["context"]
    print(f"device: {auto.get('device')} | context {context} | bandwidth ceiling {auto['bandwidth_ceiling_gbps']:.0f} GB/s")
    print(f"{'batch':>5s} {'bf16 tok/s':>11s} {'fp8 tok/s':>10s} {'ratio':>6s} {'fp8 share of floor':>19s}")
    fp8_runs = {d["batch"]: d for d in fp8["decode"]}
    for d in auto["decode"]:
        f = fp8_runs.get(d["batch"])
        if not f:
            continue
        ratio = f["decode_tok_s_total"] / d["decode_tok_s_total"]
        verdict = ""
        if d["batch"] == 32:
            verdict = f"  target >= {TARGET_SPEEDUP}x {'met' if ratio >= TARGET_SPEEDUP else 'MISSED'}"
        print(f"{d['batch']:5d} {d['decode_tok_s_total']:11.1f} {f['decode_tok_s_total']:10.1f} {ratio:5.2f}x"
              f" {100 * f['decode_share_of_ceiling']:18.1f}%{verdict}")
    per_token = {name: r["kv_bytes_per_token"] for name, r in (("bf16", auto), ("fp8", fp8))}
    print(f"KV bytes per token: bf16 {per_token['bf16']:.0f}, fp8 {per_token['fp8']:.0f} "
          f"({per_token['bf16'] / per_token['fp8']:.2f}x as many tokens in the same memory)")
    if len(sys.argv) > 3:
        free_mb = float(sys.argv[3])
        for name, b in per_token.items():
            print(f"  {name}: {free_mb:.0f} MB free holds {free_mb * 1e6 / (b * context):.0f} sequences of {context} tokens")


if __name__ == "__main__":
    main()
