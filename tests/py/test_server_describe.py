"""POST /v1/describe, the seed crate's route, on a fresh random tiny model: the description is
`moxin generate --temp 0`'s answer token for token (default prompt "Describe this image.", default
256 tokens, greedy by default), with the seed's response shape; bad requests get the server's
usual JSON errors naming the field. Seeds are printed."""
import base64
import json

import numpy as np
import pytest

from conftest import fresh_tiny_model
from test_server import Server, cli_generate, photo_png, server_built  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "describe")[0]


@pytest.fixture(scope="module")
def server(moxin_bin, model):
    s = Server(moxin_bin, model, "--max-context", 4096)
    yield s
    s.stop()


def describe(server, body):
    return server.request("POST", "/v1/describe", body, timeout=300)


def check_shape(answer):
    assert set(answer) == {"description", "tokens", "prefill_ms", "tokens_per_second"}
    assert answer["prefill_ms"] > 0 and answer["tokens_per_second"] >= 0


def test_defaults_match_the_cli_greedy_answer(server, moxin_bin, model, tmp_path, seed):
    png = photo_png(np.random.default_rng(seed))
    status, answer = describe(server, {"image": base64.b64encode(png).decode()})
    assert status == 200, answer
    check_shape(answer)
    ref = cli_generate(moxin_bin, model, tmp_path, ["Describe this image."], png=png, max_tokens=256, temp=0)
    assert answer["description"] == ref["text"]
    assert answer["tokens"] == ref["timings"]["generated_tokens"] == len(ref["tokens"])


def test_prompt_max_tokens_and_temperature(server, moxin_bin, model, tmp_path, seed):
    rng = np.random.default_rng(seed)
    png = photo_png(rng)
    max_tokens = int(rng.integers(1, 20))
    body = {"image": base64.b64encode(png).decode(), "prompt": "What is the colour of the sky?",
            "max_tokens": max_tokens, "temperature": 0}
    status, answer = describe(server, body)
    assert status == 200, answer
    check_shape(answer)
    ref = cli_generate(moxin_bin, model, tmp_path, [body["prompt"]], png=png, max_tokens=max_tokens, temp=0)
    assert answer["description"] == ref["text"] and answer["tokens"] == len(ref["tokens"])
    # Sampling at a temperature runs and respects max_tokens.
    status, sampled = describe(server, dict(body, temperature=1.5))
    assert status == 200 and sampled["tokens"] <= max_tokens, sampled


@pytest.mark.parametrize("body,param", [
    ({}, "image"),
    ({"image": 5}, "image"),
    ({"image": "not base64!"}, "image"),
    ({"image": ""}, "image"),
    ({"image": base64.b64encode(b"GIF89a but not really an image").decode()}, None),
    ({"image": base64.b64encode(b"x").decode(), "prompt": 3}, "prompt"),
    ({"image": base64.b64encode(b"x").decode(), "max_tokens": 0}, "max_tokens"),
    ({"image": base64.b64encode(b"x").decode(), "temperature": -1}, "temperature"),
    ({"image": base64.b64encode(b"x").decode(), "stream": True}, "stream"),
    ([1, 2], None),
])
def test_bad_requests_get_json_errors(server, body, param):
    status, answer = describe(server, body)
    assert status == 400, answer
    assert set(answer) == {"error"} and answer["error"]["type"] == "invalid_request_error", answer
    assert answer["error"]["message"]
    if param:
        assert answer["error"]["param"] == param, answer


def test_invalid_json_and_wrong_method(server):
    status, answer = describe(server, b'{"image": ')
    assert status == 400 and "error" in answer
    status, answer = server.request("GET", "/v1/describe")
    assert status == 405 and answer["error"]["code"] == "method_not_allowed"
