"""N identical greedy requests served together answer exactly as one served alone.

A decode step of N sequences runs other kernels than a step of one (the tensor-core GEMM tiles of
8/16/32/64 tokens, batch-bucketed CUDA graphs with padding rows, split-K attention at any batch),
and prefill runs beside decode: none of it may change a sequence's numbers. Reference: the same
request run alone through the same server (its logprobs say where the two best tokens are so close
that rounding may legitimately swap them: comparison stops at the first such near-tie). Devices:
MOXIN_PARITY_DEVICES (cpu in CI; the GPU machine adds cuda).
"""
import concurrent.futures

import numpy as np
import pytest

from quant_models import tiny_quant_model
from test_parity import DEVICES
from test_server import ISSUE_ORDERS, WORDS, Server, data_url, photo_png

NEAR_TIE_NATS = 0.05  # top-2 logprob gap under which the greedy pick may flip with rounding
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # The planted-bigram tiny model (quant_models.py): a trained LM's clear next-token winner
    # (median top-1 margin ~2.7 nats) instead of a random model's near-ties (~0.16 nats), so
    # most positions are comparable.
    return tiny_quant_model(tmp_path_factory, "tiny-batch")[0]


# Both of the scheduler's orders (test_server.ISSUE_ORDERS) on every device.
@pytest.fixture(params=[(device, order) for device in DEVICES for order in ISSUE_ORDERS], ids="-".join)
def served(request, moxin_bin, model):
    device, order = request.param
    server = Server(moxin_bin, model, "--device", device, "--max-batch", 32, "--max-context", 16384,
                    "--issue-ahead", ISSUE_ORDERS[order])
    yield server
    server.stop()


def complete(server, messages, **fields):
    """The OpenAI chat completion over plain HTTP (the GPU machine has no `openai` package)."""
    status, body = server.request("POST", "/v1/chat/completions",
                                  {"model": "m", "messages": messages, "max_tokens": MAX_TOKENS, **fields}, timeout=300)
    assert status == 200, body
    return body["choices"][0]


def greedy(server, messages):
    """Token strings and, per position, the gap between the two best logprobs."""
    content = complete(server, messages, temperature=0, logprobs=True, top_logprobs=2)["logprobs"]["content"]
    tokens = [c["token"] for c in content]
    gaps = [c["top_logprobs"][0]["logprob"] - c["top_logprobs"][1]["logprob"] if len(c["top_logprobs"]) > 1
            else np.inf for c in content]
    return tokens, gaps


def random_messages(rng):
    question = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))).capitalize() + "?"
    content = [{"type": "text", "text": question}]
    if rng.random() < 0.5:
        content.append({"type": "image_url", "image_url": {"url": data_url(photo_png(rng))}})
    return [{"role": "user", "content": content}]


def comparable_prefix(gaps):
    """Positions before the first near-tie of the solo run."""
    for i, gap in enumerate(gaps):
        if gap < NEAR_TIE_NATS:
            return i
    return len(gaps)


@pytest.mark.parametrize("copies", [8, 19])
def test_identical_requests_in_one_batch_match_the_solo_run(served, copies, seed):
    rng = np.random.default_rng(seed)
    messages = random_messages(rng)

    solo_tokens, solo_gaps = greedy(served, messages)
    checked = comparable_prefix(solo_gaps)
    with concurrent.futures.ThreadPoolExecutor(copies) as pool:
        together = list(pool.map(lambda _: greedy(served, messages), range(copies)))
    print(f"comparing {checked} of {len(solo_tokens)} tokens (first near-tie at {checked})")
    for i, (tokens, _) in enumerate(together):
        assert tokens[:checked] == solo_tokens[:checked], (
            f"copy {i} of {copies} diverged from the solo run before any near-tie:\n"
            f"solo  {solo_tokens[:checked]}\ncopy  {tokens[:checked]}")


def test_tokens_drawn_on_the_device_equal_the_host_samplers(served, seed):
    """Without log-probabilities the server draws each step's tokens where the logits are (on a
    GPU: the device sampler, and issued ahead the next step takes them from there before the host
    reads them); with log-probabilities the host samples from logits copied to it. Alone, the
    same greedy request runs the same kernels either way, so the answers must be identical, ties
    included (both take the lowest id). Four distinct requests, each both ways."""
    rng = np.random.default_rng(seed)
    requests = [random_messages(rng) for _ in range(4)]
    for messages in requests:
        on_host = complete(served, messages, temperature=0, logprobs=True)["message"]["content"]
        drawn = complete(served, messages, temperature=0)["message"]["content"]
        assert drawn == on_host, f"device-drawn answer {drawn!r} differs from the host sampler's {on_host!r}"
