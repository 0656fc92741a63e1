"""moxin.Model: load a checkpoint, generate (whole or streamed), chat, tokenize."""
from __future__ import annotations

import os
from typing import Any, Literal, Mapping, Optional, Sequence, Union, overload

from . import _core
from ._chat import chat_prompt
from ._checks import int32, uint64
from ._images import DEFAULT_MAX_IMAGE_PIXELS, ImageInput, image_file


def _device(device: str) -> tuple[str, int]:
    """("cpu" | "cuda", GPU ordinal) from "cpu", "cuda" or "cuda:N"."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string (\"cpu\", \"cuda\" or \"cuda:N\"), got {type(device).__name__}")
    kind, _, ordinal = device.partition(":")
    if kind == "cuda" and ordinal:
        if not ordinal.isdigit():
            raise _core.Error(f"[load] device \"{device}\": the GPU after \"cuda:\" must be a number")
        return kind, int(ordinal)
    return device, 0


def _quantize_bits(quantize: Union[int, str, None]) -> int:
    if quantize is None or quantize == "fp8":
        return 0
    if isinstance(quantize, bool) or quantize not in (4, 8):
        raise _core.Error(f"[load] quantize must be None, 4, 8 or \"fp8\", got {quantize!r}")
    return quantize


def _kv_cache_fp8(kv_cache: str) -> bool:
    if kv_cache not in ("auto", "fp8"):
        raise _core.Error(f"[load] kv_cache must be \"auto\" or \"fp8\", got {kv_cache!r}")
    return kv_cache == "fp8"


def _stop_list(stop: Union[str, Sequence[str], None]) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


class Model:
    """A loaded Moxin VLM. Load with Model.load(); any number of threads may generate at once
    (their engine steps take turns)."""

    def __init__(self, core: _core.Model) -> None:
        self._core = core

    @classmethod
    def load(cls, path_or_id: Union[str, "os.PathLike[str]"], device: str = "cpu",
             quantize: Union[int, str, None] = None, *, group_size: int = 64, threads: int = 0,
             max_context: int = 4096, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
             kv_cache: str = "auto") -> "Model":
        """Loads a checkpoint directory (or whatever the engine's loader accepts, passed as is).

        device: "cpu", "cuda" or "cuda:N". quantize: None (as stored), 8 or 4 bits for the
        decoder, in groups of group_size (32, 64 or 128), or "fp8" (E4M3, a scale per output
        channel). threads: CPU threads (0 = all cores). max_context: KV cache capacity in
        tokens. max_image_pixels: larger images are refused. kv_cache: "auto" (f32 on the CPU,
        bf16 on CUDA) or "fp8" (E4M3, half of bf16's memory).
        """
        kind, gpu = _device(device)
        return cls(_core.Model.load(os.fspath(path_or_id), kind, int32("gpu", gpu), int32("threads", threads),
                                    int32("max_context", max_context),
                                    uint64("max_image_pixels", max_image_pixels), _quantize_bits(quantize),
                                    int32("group_size", group_size), quantize == "fp8", _kv_cache_fp8(kv_cache)))

    @overload
    def generate(self, prompt: str, image: ImageInput = None, *, max_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 seed: int = 0, stop: Union[str, Sequence[str], None] = None, stream: Literal[False] = False) -> str: ...

    @overload
    def generate(self, prompt: str, image: ImageInput = None, *, max_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 seed: int = 0, stop: Union[str, Sequence[str], None] = None,
                 stream: Literal[True]) -> _core.Generation: ...

    def generate(self, prompt: str, image: ImageInput = None, *, max_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 seed: int = 0, stop: Union[str, Sequence[str], None] = None,
                 stream: bool = False) -> Union[str, _core.Generation]:
        """Answers `prompt` about `image` (a path, bytes, PIL image or HxWx3 uint8 array; None
        for text only). temperature 0 is greedy; top_k 0, top_p 1, min_p 0 and
        repetition_penalty 1 are off; the same seed gives the same sample. Generation ends at EOS,
        after max_tokens, or before any `stop` string. Returns the text, or with stream=True a
        moxin.Generation yielding text pieces as they are decoded (then .tokens, .text,
        .finish_reason and .timings)."""
        return self._run([(prompt, "")], image_file(image), max_tokens, temperature, top_k, top_p, min_p,
                         repetition_penalty, seed, stop, stream)

    @overload
    def chat(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int = 0,
             stop: Union[str, Sequence[str], None] = None, stream: Literal[False] = False) -> str: ...

    @overload
    def chat(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int = 0,
             stop: Union[str, Sequence[str], None] = None, stream: Literal[True]) -> _core.Generation: ...

    def chat(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int = 0,
             stop: Union[str, Sequence[str], None] = None, stream: bool = False) -> Union[str, _core.Generation]:
        """The assistant's answer to an OpenAI-style conversation: [{"role": "system" | "user" |
        "assistant", "content": str or parts}], parts {"type": "text", "text"}, {"type":
        "image_url", "image_url": {"url": "data:..."}} or {"type": "image", "image": any image
        input}; one image per conversation. Options as generate()."""
        turns, image = chat_prompt(messages)
        return self._run(turns, image, max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop,
                         stream)

    def _run(self, turns: list[tuple[str, str]], image: bytes, max_tokens: int, temperature: float, top_k: int,
             top_p: float, min_p: float, repetition_penalty: float, seed: int,
             stop: Union[str, Sequence[str], None], stream: bool) -> Union[str, _core.Generation]:
        generation = self._core.generate(turns, image, int32("max_tokens", max_tokens), temperature,
                                         int32("top_k", top_k), top_p, min_p, repetition_penalty,
                                         uint64("seed", seed), _stop_list(stop))
        return generation if stream else generation.finish()

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """The token ids of `text` (with the BOS id first unless add_bos=False)."""
        return self._core.tokenize(text, add_bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids."""
        return self._core.detokenize(list(ids))

    @property
    def info(self) -> dict[str, Any]:
        """vocab_size, hidden_size, layers, image_tokens, device, load_ms."""
        return self._core.info
