"""The C++ library's concurrent generations (Model::submit, the server's scheduler core) against
the same requests run one at a time (Model::generate, the single-sequence path): each of N
generations submitted together from N threads must give exactly the tokens, text and finish
reason it gives alone, greedy and seeded-sampled alike.

tests/tools/generation_probe runs both on a fresh random tiny model (tools/make_test_model.py).
"""
import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import find_test_tool, fresh_tiny_model

WORDS = ["cat", "dog", "red", "blue", "what", "is", "the", "picture", "show", "where", "a", "sky",
         "über", "naïve", "日本", "🙂", "tree", "car", "two", "count", "colour", "left"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "library-concurrency")[0]


@pytest.fixture(scope="module")
def probe():
    return find_test_tool("generation_probe", "MOXIN_GENERATION_PROBE")


def random_png(rng, path):
    pixels = rng.integers(0, 256, size=(int(rng.integers(20, 200)), int(rng.integers(20, 200)), 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    path.write_bytes(out.getvalue())
    return str(path)


def random_request(rng, tmp_path, i, sampled):
    turns = [{"user": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 8)))) + "?"}]
    if rng.random() < 0.3:  # an earlier turn with its answer
        turns.insert(0, {"user": str(rng.choice(WORDS)), "assistant": " ".join(rng.choice(WORDS, size=3))})
    request = {"turns": turns, "max_tokens": int(rng.integers(4, 25))}
    if rng.random() < 0.5:
        request["image"] = random_png(rng, tmp_path / f"image{i}.png")
    if sampled:
        request.update(temperature=float(rng.uniform(0.6, 1.2)), top_k=int(rng.integers(0, 50)),
                       top_p=float(rng.uniform(0.7, 1.0)), repetition_penalty=float(rng.uniform(1.0, 1.3)),
                       seed=int(rng.integers(2**31)))
    if rng.random() < 0.3:
        request["stop"] = [str(rng.choice(["e", "a", " ", "o"]))]
    return request


def run_probe(probe, model, requests):
    payload = {"model": str(model), "threads": 2, "requests": requests}
    proc = subprocess.run([str(probe)], input=json.dumps(payload).encode(), capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_concurrent_generations_equal_sequential_ones(probe, model, tmp_path, seed):
    rng = np.random.default_rng(seed)
    requests = [random_request(rng, tmp_path, i, sampled=i % 2 == 1) for i in range(8)]
    requests.append({"turns": [{"user": "nothing to say"}], "max_tokens": 0})
    out = run_probe(probe, model, requests)

    sequential, concurrent = out["sequential"], out["concurrent"]
    for i, (alone, together) in enumerate(zip(sequential, concurrent)):
        assert "error" not in alone and "error" not in together, (i, alone, together)
        assert together == alone, (i, requests[i])
        assert alone["pieces_text"] == alone["text"]  # the pieces add up to the text
    assert sequential[-1] == {"tokens": [], "text": "", "pieces_text": "", "finish": "length"}
    # Not vacuous: the random model does generate (greedy on its own tokens, so no EOS-only runs).
    assert sum(len(r["tokens"]) for r in sequential) >= len(requests)
    assert all(len(r["tokens"]) <= q["max_tokens"] for r, q in zip(sequential, requests))

    # Once submit() has run, generate() goes through the scheduler (same answer) and the
    # low-level Conversation, which would race with the scheduler's thread, is refused.
    assert out["generate_after_submit"] == sequential[0]
    assert "submit()" in out["conversation_after_submit"]
