#!/usr/bin/env python3
"""PyTorch peers for `moxin bench` on the same shapes and the same GPU run (PERF.md's method).

Measures, with random bf16 weights of the real Moxin-7B decoder shapes (the decoder's speed
does not depend on the values, but never time zeros):
  - transformers MistralForCausalLM eager: prefill of N tokens; `generate` decode tok/s with the
    dynamic cache and with the static cache (batch 1, context N);
  - a hand-written static-cache decoder (bf16, SDPA) whose one-token step is captured in a CUDA
    graph: decode tok/s at batch 1 and batch B (context N each) — the strongest simple peer —
    and the same at batch 1 with PyTorch's int8 / int4 (g64) weight-only GEMMs;
  - timm DINOv2-L/14-reg4 + SigLIP-SO400M/14 at 224 px, bf16, batch 1, eager.
Prints one JSON object (and a table to stderr).

    python bench/peer_torch.py --context 1024 --batch 32 [--skip-hf-generate]
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTER, VOCAB = 4096, 36, 32, 8, 128, 14336, 32064


def cuda_time_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def mistral_config():
    from transformers import MistralConfig
    return MistralConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, intermediate_size=INTER,
                         vocab_size=VOCAB, rms_norm_eps=1e-5, rope_theta=10000.0,
                         max_position_embeddings=32768, sliding_window=None)


def hf_model():
    from transformers import MistralForCausalLM
    with torch.device("cuda"):
        model = MistralForCausalLM(mistral_config()).to(torch.bfloat16).eval()
    for p in model.parameters():  # random, not the default init's structure
        p.data.normal_(0, 0.02)
    return model


@torch.inference_mode()
def bench_hf(model, context, new_tokens, skip_generate):
    out = {}
    ids = torch.randint(3, 32000, (1, context), device="cuda")
    out["hf_prefill_ms"] = cuda_time_ms(lambda: model(ids), warmup=2, reps=5)
    if skip_generate:
        return out
    for cache in ("dynamic", "static"):
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if cache == "static":
            kwargs["cache_implementation"] = "static"
        # The first call warms up (and, for the static cache, compiles for exactly these shapes).
        seconds = []
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, **kwargs)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
        # Remove the prefill measured above: decode steps only.
        out[f"hf_{cache}_decode_tok_s"] = (new_tokens - 1) / max(seconds[-1] - out["hf_prefill_ms"] / 1e3, 1e-9)
    return out


class Bf16Weight:
    def __init__(self, out_features, in_features, g):
        self.w = (torch.randn(out_features, in_features, device="cuda", generator=g) * 0.02).to(torch.bfloat16)

    def __call__(self, x):
        return x @ self.w.t()


class Int4Weight:
    """PyTorch's own 4-bit weight-only GEMM (tinygemm, what torchao's int4 weight-only uses):
    asymmetric groups of `group` inputs, bf16 scale and zero per group. Random codes: the
    kernel's speed does not depend on them."""
    group = 64

    def __init__(self, out_features, in_features, g):
        codes = torch.randint(0, 256, (out_features, in_features // 2), device="cuda", dtype=torch.uint8, generator=g)
        self.packed = torch.ops.aten._convert_weight_to_int4pack(codes, 8)
        self.scale_zero = (torch.rand(in_features // self.group, out_features, 2, device="cuda", generator=g) * 0.01
                           ).to(torch.bfloat16)

    def __call__(self, x):
        return torch.ops.aten._weight_int4pack_mm(x, self.packed, self.group, self.scale_zero)


class Int8Weight:
    """PyTorch's int8 weight-only GEMM (per-output-channel bf16 scales)."""

    def __init__(self, out_features, in_features, g):
        self.w = torch.randint(-128, 128, (out_features, in_features), device="cuda", dtype=torch.int8, generator=g)
        self.scales = (torch.rand(out_features, device="cuda", generator=g) * 0.01).to(torch.bfloat16)

    def __call__(self, x):
        return torch._weight_int8pack_mm(x, self.w, self.scales)


WEIGHTS = {"bf16": Bf16Weight, "int4": Int4Weight, "int8": Int8Weight}


class GraphDecoder:
    """Static-cache decoder; one step for B sequences, captured in a CUDA graph. `weight`
    makes the linear layers (bf16 or PyTorch's own weight-only quantized GEMMs)."""

    def __init__(self, batch, max_len, weight=Bf16Weight):
        g = torch.Generator(device="cuda").manual_seed(0)
        def w(*shape):
            return (torch.randn(*shape, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        def lin(out_features, in_features):
            return weight(out_features, in_features, g)
        self.layers = [dict(wqkv=lin((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN), wo=lin(HIDDEN, HEADS * HEAD_DIM),
                            wgu=lin(2 * INTER, HIDDEN), wd=lin(HIDDEN, INTER),
                            n1=torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16),
                            n2=torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16)) for _ in range(LAYERS)]
        self.embed, self.head = w(VOCAB, HIDDEN), lin(VOCAB, HIDDEN)
        self.norm = torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16)
        self.k = torch.randn(LAYERS, batch, KV_HEADS, max_len, HEAD_DIM, device="cuda").to(torch.bfloat16)
        self.v = torch.randn_like(self.k)
        inv = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM))
        self.inv_freq, self.max_len, self.batch = inv, max_len, batch
        self.tokens = torch.randint(3, 32000, (batch,), device="cuda")
        self.pos = torch.zeros((), dtype=torch.long, device="cuda")

    @staticmethod
    def rms(x, w):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w

    def rope(self, x):
        freqs = self.pos.float() * self.inv_freq
        cos, sin = torch.cat([freqs, freqs]).cos().to(x.dtype), torch.cat([freqs, freqs]).sin().to(x.dtype)
        x1, x2 = x[..., :HEAD_DIM // 2], x[..., HEAD_DIM // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def step(self):
        b = self.batch
        x = self.embed[self.tokens]
        mask = (torch.arange(self.max_len, device="cuda") <= self.pos).view(1, 1, 1, -1)
        for i, L in enumerate(self.layers):
            qkv = L["wqkv"](self.rms(x, L["n1"]))
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], -1)
            q = self.rope(q.view(b, HEADS, 1, HEAD_DIM))
            k = self.rope(k.view(b, KV_HEADS, 1, HEAD_DIM))
            self.k[i].index_copy_(2, self.pos.view(1), k)
            self.v[i].index_copy_(2, self.pos.view(1), v.view(b, KV_HEADS, 1, HEAD_DIM))
            att = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, enable_gqa=True)
            x = x + L["wo"](att.reshape(b, HEADS * HEAD_DIM))
            gate, up = L["wgu"](self.rms(x, L["n2"])).chunk(2, -1)
            x = x + L["wd"](F.silu(gate) * up)
        return self.head(self.rms(x, self.norm))


@torch.inference_mode()
def bench_graph_decoder(batch, context, weight="bf16"):
    dec = GraphDecoder(batch, context + 64, WEIGHTS[weight])
    dec.pos.fill_(context)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            dec.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.step()
    ms = cuda_time_ms(graph.replay, warmup=5, reps=50)
    del graph, dec
    torch.cuda.empty_cache()
    return 1000.0 / ms


@torch.inference_mode()
def bench_vision():
    import timm
    dino = timm.create_model("vit_large_patch14_reg4_dinov2", pretrained=False, img_size=224, num_classes=0)
    siglip = timm.create_model("vit_so400m_patch14_siglip_224", pretrained=False, num_classes=0)
    dino, siglip = (m.to("cuda", torch.bfloat16).eval() for m in (dino, siglip))
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    def both():
        dino.get_intermediate_layers(x, n={len(dino.blocks) - 2})
        siglip.get_intermediate_layers(x, n={len(siglip.blocks) - 2})
    return cuda_time_ms(both, warmup=3, reps=20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--skip-hf-generate", action="store_true")
    ap.add_argument("--quantized", nargs="*", default=["int8", "int4"], choices=["int8", "int4"],
                    help="also time the graph decoder with PyTorch's weight-only quantized GEMMs")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "context": args.context}
    result["vision_ms"] = bench_vision()
    model = hf_model()
    result.update(bench_hf(model, args.context, args.new_tokens, args.skip_hf_generate))
    del model
    torch.cuda.empty_cache()
    result["graph_decode_tok_s_b1"] = bench_graph_decoder(1, args.context)
    result[f"graph_decode_tok_s_total_b{args.batch}"] = bench_graph_decoder(args.batch, args.context) * args.batch
    for weight in args.quantized:
        try:
            result[f"graph_decode_tok_s_b1_{weight}"] = bench_graph_decoder(1, args.context, weight)
        except (RuntimeError, NotImplementedError) as e:  # not every build has every kernel
            result[f"graph_decode_{weight}_error"] = str(e).splitlines()[0][:200]
    for k, v in result.items():
        print(f"{k:34s} {v if isinstance(v, str) else round(v, 2)}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
