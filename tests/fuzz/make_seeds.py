"""Writes the small seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/), made with
the reference writers (safetensors, Pillow, json). Run once; the seeds are committed:
    python3 tests/fuzz/make_seeds.py
Layouts of multi-part inputs (the targets split at the first NUL byte):
  checkpoint_config: config.json NUL model.safetensors.index.json
  tokenizer:         tokenizer.json NUL text (the text's bytes also decode as little-endian ids)
  sse_stop:          stop strings separated by LF, NUL, text pieces separated by 0x01
"""
import io
import json
import pathlib
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save

HERE = pathlib.Path(__file__).parent
CORPUS = HERE / "corpus"
SHARED_TOKENIZER = HERE.parents[2] / "shared" / "fixtures" / "tokenizer" / "moxin-vlm.tokenizer.json"


def write(target, name, data):
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def small_tokenizer():
    """The Moxin tokenizer's pipeline (normalizer, decoder, template, byte fallback) over a
    300-piece vocabulary, so seeds stay small."""
    from tokenizers import Tokenizer
    base = json.loads(SHARED_TOKENIZER.read_text(encoding="utf-8"))
    words = ["▁the", "▁a", "▁cat", "▁is", "▁on", "▁what", "In", ":", "Out", "▁", "t", "h", "e", "a", "c", "i",
             "s", "o", "n", "w", "I", "O", "u", "▁t", "he", "▁th", "▁c", "at", "▁ca", "▁i", "▁o", "▁w", "ha",
             "▁wh", "▁wha", "ut", "Ou", "\n", "日", "本"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for w in words:
        vocab.setdefault(w, len(vocab))
    merges = []
    for w in words:
        split = next((k for k in range(1, len(w)) if w[:k] in vocab and w[k:] in vocab), None)
        if split:
            merges.append(f"{w[:split]} {w[split:]}")
    base["model"].update(vocab=vocab, merges=merges)
    base["added_tokens"] = base["added_tokens"][:3] + [dict(base["added_tokens"][3], id=len(vocab))]
    text = json.dumps(base, ensure_ascii=False)
    Tokenizer.from_str(text).encode("what is the cat on? 日本")  # the reference accepts it
    return text


def main():
    gen = torch.Generator().manual_seed(0)
    write("safetensors", "bf16_f32", save({"a": torch.randn(3, 4, generator=gen).bfloat16(),
                                           "b": torch.randn(5, generator=gen)}, metadata={"format": "pt"}))
    write("safetensors", "ints_empty", save({"i": torch.arange(6, dtype=torch.int32).reshape(2, 3),
                                             "u": torch.zeros(0, 2, dtype=torch.uint8)}))
    config = {"text_config": {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                              "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                              "max_position_embeddings": 32768, "sliding_window": None, "bos_token_id": 1,
                              "eos_token_id": [2]},
              "timm_model_kwargs": [{"embed_dim": 32, "depth": 4, "num_heads": 4, "mlp_ratio": 4.0}, None],
              "quantization": {"bits": 4, "group_size": 64}}
    index = {"metadata": {"total_size": 8}, "weight_map": {"t": "model-00001-of-00001.safetensors"}}
    write("checkpoint_config", "prismatic", json.dumps(config) + "\0" + json.dumps(index))
    write("checkpoint_config", "flat", json.dumps({"hidden_size": 32, "rope_scaling": None}) + "\0{}")
    # A shard name past the OS's file-name limit (once an uncaught std::filesystem error).
    long_index = {"weight_map": {"t": "model-" + "a" * 300 + ".safetensors"}}
    write("checkpoint_config", "long_shard_name", json.dumps({"hidden_size": 32}) + "\0" + json.dumps(long_index))
    tokenizer = small_tokenizer()
    write("tokenizer", "small", tokenizer + "\0In: what is the cat on?\nOut: 日本 </s><s>")
    write("tokenizer", "bytes", tokenizer + "\0\xff\x01\x02 \xe2\x82")
    write("chat_request", "image_and_text", json.dumps({
        "model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "image_url",
                                                                 "image_url": {"url": "data:image/png;base64,AAAA"}},
                                                                {"type": "text", "text": "What is it?"}]},
                                   {"role": "assistant", "content": "A cat."},
                                   {"role": "user", "content": "Sure?"}],
        "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "stop": ["\n", "</s>"], "stream": True,
        "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2, "seed": 7}))
    write("chat_request", "plain", json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    write("sse_stop", "two_stops", "Out:\n\n\0In: what\x01 is\x01 Ou\x01t:\x01 the cat")
    write("sse_stop", "utf8", "日本\0\xe6\x97\x01\xa5\xe6\x9c\xac\x01!")
    rng = np.random.default_rng(0)
    for fmt, options in (("png", {}), ("jpeg", {"quality": 80}), ("gif", {}), ("webp", {"quality": 70}),
                         ("bmp", {})):
        for size in ((7, 5), (16, 16)):
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(out, format=fmt,
                                                                                            **options)
            write("image_" + fmt, f"{size[0]}x{size[1]}", out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
