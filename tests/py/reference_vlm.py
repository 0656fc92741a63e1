#!/usr/bin/env python3
"""Independent PyTorch reference for the Moxin-7B VLM (docs/model.md sections 1-4), float32 throughout.

Built only from the libraries the published model is defined by: timm VisionTransformer for both
featurizers, transformers MistralForCausalLM (eager attention) for the decoder, Pillow +
torch for preprocessing, Hugging Face `tokenizers` for the prompt. The weights are the stored ones
(bf16 or f32) upcast to float32 and loaded with load_state_dict(strict=True).

As a module:
    model = load_reference("/tmp/moxin-tiny")                  # or run() with the path
    out = run(model, "cat.jpg", ["What is this?"], max_new_tokens=8)
As a script (writes the same arrays to a safetensors file):
    python tests/py/reference_vlm.py --model DIR [--image PATH] --prompt "What is this?" \
        [--turn Q A ...] --max-new-tokens 8 --out ref.safetensors [--device cpu|cuda]

Arrays (numpy): input_ids int32 [T]; image_resized uint8 [224,224,3]; dino_features f32 [256,D1];
siglip_features f32 [256,D2]; projected f32 [256,H] (the four image arrays only with an image);
logits_last f32 [vocab] (last prompt position); generated int32 [n] (greedy, KV cache, ends with
EOS id 2 if it was produced); top2_gaps f32 [n] (top-1 minus top-2 logit at the step that chose
generated[i], so a comparison can stop at a near tie).

Prompt and tokenization (mirrors Prismatic's PurePromptBuilder + the HF tokenizer):
  - turns alternate human, gpt, ..., human. Each message has "<image>" removed, then is stripped.
    Human: "In: {msg}\\nOut: "; gpt: "{msg}</s>" (an empty answer becomes " "). The whole prompt
    is right-stripped: "In: q1\\nOut: a1</s>In: q2\\nOut:".
  - The WHOLE prompt string is encoded by `tokenizers` with add_special_tokens=True (BOS prepended
    by the post-processor). As in Prismatic, where the HF tokenizer sees the same string, the
    tokenizer's added special tokens are matched ANYWHERE in the text: the multi-turn separator
    "</s>" becomes id 2, and so would "</s>", "<s>", "<unk>" or "<PAD>" typed by a user. The text
    after a special token is normalized as a new segment, so it gets the "▁" prefix again:
    "A cat.</s>In:" -> ["▁A", "▁cat", ".", "</s>", "▁In", ":"].
    Spaces around a special token stay in the neighbouring segments: "a </s> b" ->
    ["▁a", "▁", "</s>", "▁", "▁b"] (the added tokens have no lstrip/rstrip).
Sequence: [embed(BOS), projected x256, embed(rest)], positions 0..L-1, one causal mask; a
text-only prompt skips the image entirely (no vision, no placeholder).
"""
import argparse
import dataclasses
import inspect
import json
import pathlib
import re

import numpy as np
import timm
import torch
from PIL import Image
from safetensors import safe_open
from tokenizers import Tokenizer
from torch import nn
from transformers import DynamicCache, MistralConfig, MistralForCausalLM
from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding

IMAGE_SIZE = 224
PATCH = 14
EOS_ID = 2
BOS_ID = 1
DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
FEATURIZERS = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")
DEFAULT_TIMM_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
# transformers 5.24 (pinned) names the KV cache `cache`; older 5.x, e.g. on the GPU machines,
# `past_key_values`, in both the call and its output.
CACHE_ARG = "cache" if "cache" in inspect.signature(MistralForCausalLM.forward).parameters else "past_key_values"
DEFAULT_VIT_HEADS = 16  # both timm models; a checkpoint with other widths says so in config.json


class FusedGeluMlpProjector(nn.Module):
    """docs/model.md section 3: fc1 -> GELU(erf) -> fc2 -> GELU(erf) -> fc3."""

    def __init__(self, vision_dim, hidden_dim, llm_dim):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x):
        return self.fc3(nn.functional.gelu(self.fc2(nn.functional.gelu(self.fc1(x)))))


@dataclasses.dataclass
class ReferenceVLM:
    dino: nn.Module
    siglip: nn.Module
    projector: FusedGeluMlpProjector
    llm: MistralForCausalLM
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype = torch.float32


def read_checkpoint(model_dir):
    """All tensors of model.safetensors or of the shards the index names, upcast to float32."""
    model_dir = pathlib.Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        weight_map, files = None, ["model.safetensors"]
    tensors = {}
    for file in files:
        with safe_open(model_dir / file, framework="pt") as f:
            for name in f.keys():
                if weight_map is not None and weight_map.get(name) != file:
                    raise ValueError(f"{file} holds {name}, which the index puts in {weight_map.get(name)}")
                tensors[name] = f.get_tensor(name).float()
    if weight_map is not None and set(weight_map) != set(tensors):
        raise ValueError(f"index and shards disagree on {sorted(set(weight_map) ^ set(tensors))[:5]}")
    return tensors


def take_prefix(tensors, prefix):
    return {name[len(prefix):]: tensors.pop(name) for name in list(tensors) if name.startswith(prefix)}


def load_strict(module, state_dict, what):
    """Loads by assignment (modules live on `meta`), strict, then checks nothing stayed on meta."""
    module.load_state_dict(state_dict, strict=True, assign=True)
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_meta:
            raise ValueError(f"{what}: {name} was not loaded")


def block_count(state_dict):
    return 1 + max(int(m.group(1)) for name in state_dict if (m := re.match(r"blocks\.(\d+)\.", name)))


def build_featurizer(timm_id, state_dict, num_heads, img_size):
    """timm ViT sized from the checkpoint's own shapes; LayerScale renamed back to timm's `gamma`."""
    state_dict = {re.sub(r"\.(ls[12])\.scale_factor$", r".\1.gamma", k): v for k, v in state_dict.items()}
    embed_dim, _, patch, _ = state_dict["patch_embed.proj.weight"].shape
    if patch != PATCH:
        raise ValueError(f"{timm_id}: patch size {patch}, expected {PATCH}")
    mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    with torch.device("meta"):
        model = timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=img_size,
                                  embed_dim=embed_dim, depth=block_count(state_dict), num_heads=num_heads,
                                  mlp_ratio=(mlp_hidden + 0.5) / embed_dim)
    load_strict(model, state_dict, timm_id)
    return model.eval()


def build_llm(state_dict, text_config):
    """MistralForCausalLM with dimensions from the tensors; heads and constants from text_config."""
    vocab, hidden = state_dict["model.embed_tokens.weight"].shape
    heads = text_config.get("num_attention_heads", 32)
    head_dim = hidden // heads
    kv_heads = state_dict["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim
    if kv_heads != text_config.get("num_key_value_heads", kv_heads):
        raise ValueError(f"k_proj says {kv_heads} kv heads, config says {text_config['num_key_value_heads']}")
    config = MistralConfig(
        vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
        num_hidden_layers=1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"model\.layers\.(\d+)\.", k))),
        intermediate_size=state_dict["model.layers.0.mlp.gate_proj.weight"].shape[0],
        rms_norm_eps=text_config.get("rms_norm_eps", 1e-5), rope_theta=text_config.get("rope_theta", 10000.0),
        max_position_embeddings=text_config.get("max_position_embeddings", 32768), sliding_window=None,
        tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=32000)
    with torch.device("meta"):
        llm = MistralForCausalLM._from_config(config, attn_implementation="eager")
    # The rotary tables are non-persistent buffers (not in any checkpoint): build them for real.
    llm.model.rotary_emb = MistralRotaryEmbedding(config)
    load_strict(llm, state_dict, "language_model")
    return llm.eval()


def load_reference(model_dir, device="cpu", dtype=torch.float32):
    """float32 is the reference; bfloat16 gives PyTorch's own bf16 inference of the same
    weights (every module and activation in bf16), the yardstick for reduced-precision engines."""
    model_dir = pathlib.Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    device = torch.device(device)
    # A float32 reference on a GPU must not silently drop to TF32 (cuDNN convs default to it).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    tensors = read_checkpoint(model_dir)
    timm_ids = config.get("timm_model_ids", DEFAULT_TIMM_IDS)
    timm_kwargs = config.get("timm_model_kwargs", [{}, {}])
    img_size = config.get("image_sizes", [IMAGE_SIZE, IMAGE_SIZE])
    dino, siglip = (build_featurizer(timm_ids[i], take_prefix(tensors, FEATURIZERS[i]),
                                     timm_kwargs[i].get("num_heads", DEFAULT_VIT_HEADS), img_size[i])
                    for i in range(2))
    projector_sd = take_prefix(tensors, "projector.")
    hidden_dim, vision_dim = projector_sd["fc1.weight"].shape
    with torch.device("meta"):
        projector = FusedGeluMlpProjector(vision_dim, hidden_dim, projector_sd["fc3.weight"].shape[0])
    load_strict(projector, projector_sd, "projector")
    llm = build_llm(take_prefix(tensors, "language_model."), config.get("text_config", {}))
    if tensors:
        raise ValueError(f"checkpoint tensors nobody loaded: {sorted(tensors)[:5]}")
    # RoPE frequencies stay float32 at any dtype (transformers computes the rotary tables in f32).
    rotary = {k: v.clone() for k, v in llm.model.rotary_emb.__dict__.items() if torch.is_tensor(v)}
    rotary.update({k: v.clone() for k, v in llm.model.rotary_emb.named_buffers()})
    modules = [m.to(device, dtype) for m in (dino, siglip, projector.eval(), llm)]
    for name, value in rotary.items():
        setattr(llm.model.rotary_emb, name, value.to(device))
    return ReferenceVLM(*modules, Tokenizer.from_file(str(model_dir / "tokenizer.json")), device, dtype)


def resize_image(image):
    """docs/model.md section 2: any Pillow input -> RGB -> 224x224 BICUBIC, ignoring aspect ratio."""
    if not isinstance(image, Image.Image):
        image = Image.open(image)
    return image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)


def normalize(resized, mean, std):
    """/255 then (x - mean) / std per channel, as torchvision ToTensor + Normalize do: [1,3,H,W]."""
    x = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    x = x.sub(torch.tensor(mean).view(3, 1, 1)).div(torch.tensor(std).view(3, 1, 1))
    return x.unsqueeze(0)


def patch_features(featurizer, pixels):
    """Output of block depth-2, no final norm, prefix tokens dropped: [256, D].

    The same call Prismatic makes: get_intermediate_layers(n={depth - 2}) (a set = block indices).
    """
    (features,) = featurizer.get_intermediate_layers(pixels, n={len(featurizer.blocks) - 2})
    return features[0]


def build_prompt(turns):
    """Prismatic PurePromptBuilder: turns = [human, gpt, human, ..., human]."""
    if isinstance(turns, str):
        turns = [turns]
    if len(turns) % 2 != 1:
        raise ValueError("turns must alternate human/gpt and end with a human message")
    prompt = ""
    for i, message in enumerate(turns):
        message = message.replace("<image>", "").strip()
        prompt += f"In: {message}\nOut: " if i % 2 == 0 else f"{message if message else ' '}</s>"
    return prompt.rstrip()


def tokenize(tokenizer, prompt):
    ids = tokenizer.encode(prompt, add_special_tokens=True).ids
    if not ids or ids[0] != BOS_ID:
        raise ValueError("tokenizer.json did not prepend BOS (<s> = 1)")
    return ids


def assemble_inputs(model, input_ids, projected):
    """[embed(BOS), projected, embed(rest)] as [1, L, H]; text only when projected is None."""
    embeds = model.llm.get_input_embeddings()(torch.tensor([input_ids], device=model.device))
    if projected is None:
        return embeds
    return torch.cat([embeds[:, :1], projected.unsqueeze(0), embeds[:, 1:]], dim=1)


def fp8_kv_round(x):
    """The engine's FP8 KV cache (docs/model.md section 5) on states [..., D]: per row of D, the
    smallest e with amax <= 448 * 2^e (clamped to -126..126, so -126 for an all-zero row), and
    x -> e4m3(x / 2^e) * 2^e with PyTorch's float8_e4m3fn conversion."""
    amax = x.float().abs().amax(dim=-1, keepdim=True)
    mantissa, exponent = torch.frexp(amax)
    e = torch.where(amax == 0, -126, exponent - 9 + (mantissa > 0.875).int()).clamp(-126, 126)
    scale = torch.ldexp(torch.ones_like(amax), e)
    return ((x.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def e4m3_per_token(x):
    """Rows of x [..., K] as the CUDA engine's FP8 tensor-core prefill multiplies them
    (docs/model.md section 5): each value rounded to bfloat16 first (as every prefill GEMM's input),
    s = amax(|row|) / 448 in float32 (1 for an all-zero row), then e4m3(row / s) * s with PyTorch's
    float8_e4m3fn conversion."""
    rows = x.to(torch.bfloat16).float()
    scale = rows.abs().amax(dim=-1, keepdim=True) / 448.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return ((rows / scale).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def quantize_prefill_activations(llm, min_rows):
    """Every decoder-layer linear of `llm` sees its input rounded per token by e4m3_per_token in
    forwards of at least min_rows tokens (a prefill on the FP8 tensor cores); shorter forwards (the
    decode steps) keep their activations as they are."""
    def round_input(module, args):
        x = args[0]
        if x.numel() // x.shape[-1] < min_rows:
            return None
        return (e4m3_per_token(x),) + tuple(args[1:])

    for module in llm.model.layers.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_pre_hook(round_input)


class Fp8KvCache(DynamicCache):
    """transformers' cache holding K and V as the engine's FP8 KV cache does: every new key and
    value row is rounded before it is stored, so the token's own attention reads it rounded too."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(fp8_kv_round(key_states), fp8_kv_round(value_states), layer_idx, *args, **kwargs)


def greedy_decode(llm, inputs_embeds, max_new_tokens):
    """Prefill on embeddings, then one token at a time through transformers' KV cache."""
    out = llm(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1)
    logits = out.logits[0, -1]
    logits_last = logits.clone()
    generated, gaps = [], []
    while len(generated) < max_new_tokens:
        top2 = torch.topk(logits, 2).values
        token = int(torch.argmax(logits))
        generated.append(token)
        gaps.append(float(top2[0] - top2[1]))
        if token == EOS_ID or len(generated) == max_new_tokens:
            break
        out = llm(input_ids=torch.tensor([[token]], device=logits.device),
                  **{CACHE_ARG: getattr(out, CACHE_ARG)}, use_cache=True)
        logits = out.logits[0, -1]
    return logits_last, generated, gaps


@torch.no_grad()
def run(model, image, turns, max_new_tokens):
    """model: a ReferenceVLM or a checkpoint directory; image: path, PIL image or None."""
    if not isinstance(model, ReferenceVLM):
        model = load_reference(model)
    result = {}
    input_ids = tokenize(model.tokenizer, build_prompt(turns))
    projected = None
    if image is not None:
        resized = resize_image(image)
        dino = patch_features(model.dino, normalize(resized, DINO_MEAN, DINO_STD).to(model.device, model.dtype))
        siglip = patch_features(model.siglip, normalize(resized, SIGLIP_MEAN, SIGLIP_STD).to(model.device, model.dtype))
        projected = model.projector(torch.cat([dino, siglip], dim=-1))
        result.update(image_resized=np.asarray(resized, dtype=np.uint8), dino_features=dino,
                      siglip_features=siglip, projected=projected)
    logits_last, generated, gaps = greedy_decode(model.llm, assemble_inputs(model, input_ids, projected),
                                                 max_new_tokens)
    result.update(input_ids=np.array(input_ids, dtype=np.int32), logits_last=logits_last,
                  generated=np.array(generated, dtype=np.int32), top2_gaps=np.array(gaps, dtype=np.float32))
    return {k: v.float().cpu().numpy() if torch.is_tensor(v) else v for k, v in result.items()}


def main():
    from safetensors.numpy import save_file

    parser = argparse.ArgumentParser(description="Moxin VLM PyTorch reference: writes its arrays to safetensors")
    parser.add_argument("--model", required=True, type=pathlib.Path)
    parser.add_argument("--image", type=pathlib.Path, default=None)
    parser.add_argument("--prompt", required=True, help="the (last) human message")
    parser.add_argument("--turn", nargs=2, action="append", default=[], metavar=("Q", "A"),
                        help="an earlier question and answer (repeat for more turns)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    turns = [message for pair in args.turn for message in pair] + [args.prompt]
    out = run(load_reference(args.model, args.device), args.image, turns, args.max_new_tokens)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(args.out))
    print(f"[reference] {len(out['input_ids'])} prompt tokens, generated {out['generated'].tolist()}, "
          f"min top-2 gap {out['top2_gaps'].min() if len(out['top2_gaps']) else float('nan'):.4g} -> {args.out}")


if __name__ == "__main__":
    main()
