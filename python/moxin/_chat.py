"""OpenAI-style chat messages to the engine's prompt: the rules of `moxin serve`'s
/v1/chat/completions (src/server/chat_request.cpp). System messages first (joined into the
first user turn), then user and assistant alternating, starting and ending with user; one image
in the whole conversation, in a user message.

A message's content is a string or a list of parts: {"type": "text", "text": ...},
{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}, or, Python-only,
{"type": "image", "image": <any moxin.ImageInput>}.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping, Optional, Sequence

from . import _core
from ._images import ImageInput, image_file


def _data_url_bytes(url: Any, where: str) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise _core.Error(f"{where}: image_url.url must be a data: URL with base64 content (for a file or an "
                          "array, use a part {\"type\": \"image\", \"image\": path_or_array})")
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except binascii.Error as e:
        raise _core.Error(f"{where}: the data: URL is not valid base64 ({e})") from None


def _parse_content(content: Any, role: str, where: str) -> tuple[str, Optional[ImageInput]]:
    """(text, image or None) of one message's content."""
    if isinstance(content, str):
        return content, None
    if not isinstance(content, Sequence):
        raise _core.Error(f"{where}.content must be a string or a list of content parts, got {type(content).__name__}")
    texts: list[str] = []
    image: Optional[ImageInput] = None
    for p, part in enumerate(content):
        pwhere = f"{where}.content[{p}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _core.Error(f"{pwhere}.text must be a string")
            texts.append(part["text"])
            continue
        if kind not in ("image_url", "image"):
            raise _core.Error(f"{pwhere} must be a part of type 'text', 'image_url' or 'image', got {part!r:.80}")
        if role != "user":
            raise _core.Error(f"{pwhere}: only user messages may carry an image")
        if image is not None:
            raise _core.Error(f"{where} has more than one image; the model takes one image per conversation")
        if kind == "image":
            image = part.get("image")
            if image is None:
                raise _core.Error(f"{pwhere} has no 'image'")
        else:
            url = part.get("image_url")
            image = _data_url_bytes(url.get("url") if isinstance(url, Mapping) else None, pwhere)
    return "\n".join(texts), image


def chat_prompt(messages: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[str, str]], bytes]:
    """The (user, assistant) turns, the last one to answer, and the conversation's image file."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise _core.Error("messages must be a non-empty list of {\"role\", \"content\"} dicts")
    parsed = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping) or "content" not in m:
            raise _core.Error(f"{where} must be a dict with 'role' and 'content'")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _core.Error(f"{where}.role must be system, user or assistant, got {role!r}")
        parsed.append((role, *_parse_content(m["content"], role, where)))

    first = 0
    while first < len(parsed) and parsed[first][0] in ("system", "developer"):
        first += 1
    if first == len(parsed):
        raise _core.Error("messages has no user message")
    system = "\n\n".join(text for _, text, _ in parsed[:first])
    turns: list[tuple[str, str]] = []
    image: Optional[ImageInput] = None
    for j in range(first, len(parsed)):
        role, text, part_image = parsed[j]
        expected = "user" if (j - first) % 2 == 0 else "assistant"
        if role != expected:
            raise _core.Error(f"messages[{j}] is a {role} message where a {expected} message belongs: after any "
                              "system messages, user and assistant must alternate, starting and ending with user")
        if part_image is not None:
            if image is not None:
                raise _core.Error(f"messages[{j}] has a second image; the model takes one image per conversation")
            image = part_image
        if role == "user":
            turns.append((text, ""))
        else:
            turns[-1] = (turns[-1][0], text)
    if parsed[-1][0] != "user":
        raise _core.Error("the last message must be the user's (the one to answer)")
    if system:
        turns[0] = (system + "\n\n" + turns[0][0], turns[0][1])
    return turns, image_file(image)
