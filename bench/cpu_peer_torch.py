#!/usr/bin/env python3
"""PyTorch CPU peers for the CPU backend, on the same shapes and the same machine as
bench/cpu_ops_bench.cpp (run them back to back: the cores may be shared, so only numbers of one
run can be compared).

  - f32 GEMM y = x W^T for the prefill and vision shapes of BM_Gemm (x [M, K], W [N, K]), as
    FLOP per wall-clock second and per second of the process's CPU time (the rate that still
    means something on shared cores; BM_Gemm reports both too);
  - timm DINOv2-L/14-reg4 + SigLIP-SO400M/14 at 224 px in f32, batch 1, eager: the time
    `moxin bench` reports as "vision (2 enc.)".

    python3 bench/cpu_peer_torch.py --threads 2 [--skip-vision]
"""
import argparse
import json
import sys
import time

import torch

# (M, N, K), as BM_Gemm: decoder prefill of 256 tokens (MLP up/gate, down), the DINOv2-L and
# SigLIP-SO400M MLPs on one image's patch rows.
GEMM_SHAPES = [(256, 14336, 4096), (256, 4096, 14336), (257, 4096, 1024), (256, 4304, 1152)]


def best_seconds(fn, reps):
    """The fastest of `reps` calls: (wall-clock seconds, process CPU seconds)."""
    fn()  # warm-up: first-touch of buffers, oneDNN/OpenMP start
    times = []
    for _ in range(reps):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return min(times)


@torch.inference_mode()
def bench_gemm(reps):
    rows = []
    for m, n, k in GEMM_SHAPES:
        x = torch.rand(m, k) * 2 - 1
        w = torch.rand(n, k) * 2 - 1
        seconds, cpu_seconds = best_seconds(lambda: torch.nn.functional.linear(x, w), reps)
        flop = 2.0 * m * n * k
        rows.append({"M": m, "N": n, "K": k, "gflops": flop / seconds / 1e9,
                     "gflops_per_cpu_s": flop / cpu_seconds / 1e9})
    return rows


@torch.inference_mode()
def bench_vision(reps):
    import timm
    dino = timm.create_model("vit_large_patch14_reg4_dinov2", pretrained=False, img_size=224,
                             num_classes=0).eval()
    siglip = timm.create_model("vit_so400m_patch14_siglip_224", pretrained=False, num_classes=0).eval()
    x = torch.randn(1, 3, 224, 224)

    def both():
        dino.get_intermediate_layers(x, n={len(dino.blocks) - 2})
        siglip.get_intermediate_layers(x, n={len(siglip.blocks) - 2})
    return 1000.0 * best_seconds(both, reps)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-vision", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"torch": torch.__version__, "threads": args.threads, "gemm_f32": bench_gemm(args.reps)}
    if not args.skip_vision:
        result["vision_f32_ms"] = bench_vision(max(1, args.reps // 2))
    for row in result["gemm_f32"]:
        print(f"torch f32 GEMM M={row['M']:4d} N={row['N']:5d} K={row['K']:5d}: {row['gflops']:7.1f} GFLOP/s, "
              f"{row['gflops_per_cpu_s']:7.1f} GFLOP/cpu-s", file=sys.stderr)
    if "vision_f32_ms" in result:
        print(f"timm f32 both encoders: {result['vision_f32_ms']:.0f} ms", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
