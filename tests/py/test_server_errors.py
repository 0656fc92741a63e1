"""Malformed and hostile requests to `moxin serve`: each gets the right status and OpenAI's
error shape ({"error": {"message", "type", "param", "code"}}), and the server stays healthy.
Raw HTTP (http.client / sockets), so nothing is validated on the client side."""
import base64
import http.client
import io
import json
import random
import socket
import time

import numpy as np
import pytest
from PIL import Image

from conftest import fresh_tiny_model
from test_server import Server, data_url, server_built, user_message  # noqa: F401 (autouse)

API_KEY = "k-" + "".join(random.SystemRandom().choice("0123456789abcdef") for _ in range(24))
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_PIXELS = 300 * 300
CONTEXT = 4096


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "tiny")[0]


@pytest.fixture(scope="module")
def server(moxin_bin, model):
    s = Server(moxin_bin, model, "--api-key", API_KEY, "--max-body-mb", 1, "--max-pixels", MAX_PIXELS,
               "--max-context", CONTEXT)
    yield s
    s.stop()


def png_of(width, height, rng):
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def body_with(rng, **fields):
    body = {"model": "tiny", "messages": [user_message("what is this?")], "max_tokens": 4, "temperature": 0}
    body.update(fields)
    return body


def image_body(url):
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "what?"}]}], "max_tokens": 2}


def nested(depth):
    return ('{"messages": ' + "[" * depth + "]" * depth + "}").encode()


def hostile_cases(rng):
    """(name, method, path, body, headers, expected status)."""
    good_png = png_of(32, 32, rng)
    words = " ".join(["word"] * 6000)  # about 6000 tokens: past the 4096-token context
    b64 = base64.b64encode(good_png).decode()
    cases = [
        ("bad json", "POST", "/v1/chat/completions", b'{"messages": [', AUTH, 400),
        ("body is an array", "POST", "/v1/chat/completions", b"[1, 2]", AUTH, 400),
        ("empty body", "POST", "/v1/chat/completions", b"", AUTH, 400),
        ("NaN literal", "POST", "/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', AUTH, 400),
        ("invalid utf-8", "POST", "/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', AUTH, 400),
        ("duplicate keys", "POST", "/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": "x"}], "n": 1, "n": 2}', AUTH, 400),
        ("deeply nested", "POST", "/v1/chat/completions", nested(100000), AUTH, 400),
        ("missing messages", "POST", "/v1/chat/completions", {"max_tokens": 3}, AUTH, 400),
        ("empty messages", "POST", "/v1/chat/completions", body_with(rng, messages=[]), AUTH, 400),
        ("messages not a list", "POST", "/v1/chat/completions", body_with(rng, messages="hi"), AUTH, 400),
        ("message not an object", "POST", "/v1/chat/completions", body_with(rng, messages=[1]), AUTH, 400),
        ("unknown role", "POST", "/v1/chat/completions",
         body_with(rng, messages=[{"role": "robot", "content": "x"}]), AUTH, 400),
        ("tool role", "POST", "/v1/chat/completions",
         body_with(rng, messages=[{"role": "tool", "content": "x", "tool_call_id": "a"}]), AUTH, 400),
        ("assistant first", "POST", "/v1/chat/completions",
         body_with(rng, messages=[{"role": "assistant", "content": "a"}, user_message("q")]), AUTH, 400),
        ("assistant last", "POST", "/v1/chat/completions",
         body_with(rng, messages=[user_message("q"), {"role": "assistant", "content": "a"}]), AUTH, 400),
        ("two users in a row", "POST", "/v1/chat/completions",
         body_with(rng, messages=[user_message("q"), user_message("q")]), AUTH, 400),
        ("system after user", "POST", "/v1/chat/completions",
         body_with(rng, messages=[user_message("q"), {"role": "system", "content": "s"}]), AUTH, 400),
        ("content wrong type", "POST", "/v1/chat/completions",
         body_with(rng, messages=[{"role": "user", "content": 123}]), AUTH, 400),
        ("unknown content part", "POST", "/v1/chat/completions",
         body_with(rng, messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
         AUTH, 400),
        ("temperature too high", "POST", "/v1/chat/completions", body_with(rng, temperature=2.5), AUTH, 400),
        ("temperature a string", "POST", "/v1/chat/completions", body_with(rng, temperature="hot"), AUTH, 400),
        ("temperature huge", "POST", "/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}', AUTH, 400),
        ("top_p zero", "POST", "/v1/chat/completions", body_with(rng, top_p=0), AUTH, 400),
        ("top_p above one", "POST", "/v1/chat/completions", body_with(rng, top_p=1.5), AUTH, 400),
        ("negative max_tokens", "POST", "/v1/chat/completions", body_with(rng, max_tokens=-1), AUTH, 400),
        ("fractional max_tokens", "POST", "/v1/chat/completions", body_with(rng, max_tokens=1.5), AUTH, 400),
        ("max_tokens 10^30", "POST", "/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000000000000000000000000000}',
         AUTH, 400),
        ("max_tokens past the context", "POST", "/v1/chat/completions", body_with(rng, max_tokens=CONTEXT), AUTH, 400),
        ("prompt past the context", "POST", "/v1/chat/completions",
         body_with(rng, messages=[user_message(words)]), AUTH, 400),
        ("n = 2", "POST", "/v1/chat/completions", body_with(rng, n=2), AUTH, 400),
        ("five stop strings", "POST", "/v1/chat/completions", body_with(rng, stop=list("abcde")), AUTH, 400),
        ("stop not a string", "POST", "/v1/chat/completions", body_with(rng, stop=123), AUTH, 400),
        ("empty stop string", "POST", "/v1/chat/completions", body_with(rng, stop=[""]), AUTH, 400),
        ("top_logprobs 21", "POST", "/v1/chat/completions",
         body_with(rng, logprobs=True, top_logprobs=21), AUTH, 400),
        ("top_logprobs without logprobs", "POST", "/v1/chat/completions", body_with(rng, top_logprobs=2), AUTH, 400),
        ("frequency_penalty", "POST", "/v1/chat/completions", body_with(rng, frequency_penalty=0.5), AUTH, 400),
        ("seed not an integer", "POST", "/v1/chat/completions", body_with(rng, seed="x"), AUTH, 400),
        ("stream_options without stream", "POST", "/v1/chat/completions",
         body_with(rng, stream_options={"include_usage": True}), AUTH, 400),
        ("tools", "POST", "/v1/chat/completions",
         body_with(rng, tools=[{"type": "function", "function": {"name": "f"}}]), AUTH, 400),
        ("bad base64", "POST", "/v1/chat/completions", image_body("data:image/png;base64,@@@@" + b64), AUTH, 400),
        ("base64 without padding", "POST", "/v1/chat/completions",
         image_body("data:image/png;base64," + b64.rstrip("=") + ("A" if b64.endswith("=") else "")), AUTH, 400),
        ("non-image data URL", "POST", "/v1/chat/completions",
         image_body("data:text/plain;base64," + base64.b64encode(b"hello").decode()), AUTH, 400),
        ("data URL not base64", "POST", "/v1/chat/completions", image_body("data:image/png,abc"), AUTH, 400),
        ("undecodable image", "POST", "/v1/chat/completions",
         image_body(data_url(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())), AUTH, 400),
        ("truncated png", "POST", "/v1/chat/completions", image_body(data_url(good_png[:len(good_png) // 2])),
         AUTH, 400),
        ("image over --max-pixels", "POST", "/v1/chat/completions", image_body(data_url(png_of(400, 300, rng))),
         AUTH, 400),
        ("two images", "POST", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(good_png)}},
                                                    {"type": "image_url", "image_url": {"url": data_url(good_png)}}]}]},
         AUTH, 400),
        ("remote image URL", "POST", "/v1/chat/completions", image_body("https://example.com/cat.png"), AUTH, 400),
        ("local image path", "POST", "/v1/chat/completions", image_body("/etc/passwd"), AUTH, 400),
        ("body over the limit", "POST", "/v1/chat/completions",
         image_body(data_url(bytes(1_200_000))), AUTH, 413),
        ("unknown route", "GET", "/v1/nothing", None, AUTH, 404),
        ("unknown route outside /v1", "GET", "/admin", None, {}, 404),
        ("GET chat completions", "GET", "/v1/chat/completions", None, AUTH, 405),
        ("DELETE models", "DELETE", "/v1/models", None, AUTH, 405),
        ("POST health", "POST", "/health", {}, {}, 405),
        ("missing API key", "POST", "/v1/chat/completions", body_with(rng), {}, 401),
        ("wrong API key", "POST", "/v1/chat/completions", body_with(rng), {"Authorization": "Bearer nope"}, 401),
        ("API key without Bearer", "GET", "/v1/models", None, {"Authorization": API_KEY}, 401),
        ("API key prefix", "GET", "/v1/models", None, {"Authorization": f"Bearer {API_KEY[:-1]}"}, 401),
    ]
    return cases


def check_error_shape(payload, status):
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if status >= 500:
        assert error["type"] == "server_error"


def test_hostile_requests_get_openai_errors(server, seed):
    rng = np.random.default_rng(seed)
    cases = hostile_cases(rng)
    assert len(cases) >= 25
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    for i in order:
        name, method, path, body, headers, expected = cases[i]
        status, payload = server.request(method, path, body, headers)
        assert status == expected, f"{name}: {status} {payload}"
        check_error_shape(payload, status)
        print(f"{name}: {status} {payload['error']['message'][:100]}")
    # Still healthy, and still answering.
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    status, payload = server.request("POST", "/v1/chat/completions", body_with(rng), AUTH)
    assert status == 200 and payload["usage"]["completion_tokens"] >= 1
    deadline = time.monotonic() + 1  # the gauge is published after the step that finished it
    while server.metrics()["moxin_running_sequences"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_error_messages_name_the_cause(server, seed):
    rng = np.random.default_rng(seed)
    checks = [
        (body_with(rng, temperature=3), "temperature", "temperature"),
        (body_with(rng, n=3), "n", "'n' must be 1"),
        (image_body("http://example.com/a.png"), "messages", "not implemented"),
        (image_body("/tmp/x.png"), "messages", "--allow-local-images"),
        (image_body(data_url(png_of(400, 300, rng))), "messages", "pixels"),
        (body_with(rng, max_tokens=CONTEXT), "max_tokens", "context"),
    ]
    for body, param, words in checks:
        status, payload = server.request("POST", "/v1/chat/completions", body, AUTH)
        assert status == 400 and payload["error"]["param"] == param, payload
        assert words in payload["error"]["message"], payload


def test_raw_socket_garbage_and_slow_headers(server):
    for garbage in (b"\x00\x01\x02 not http\r\n\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 20000
                    + b"\r\n\r\n"):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(garbage)
            reply = sock.recv(65536)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:80]
    assert server.request("GET", "/health")[0] == 200


def test_queue_full_answers_503(moxin_bin, model):
    s = Server(moxin_bin, model, "--max-batch", 1, "--max-queue", 1, "--max-context", 32768)
    try:
        holders = []

        def wait_for(running, queued):
            deadline = time.monotonic() + 30
            while True:
                metrics = s.metrics()
                if (metrics["moxin_running_sequences"], metrics["moxin_queue_depth"]) == (running, queued):
                    return
                assert time.monotonic() < deadline, metrics
                time.sleep(0.02)

        # One runs (for seconds: 30000 tokens), then one waits in the queue (a request counts as
        # queued until the scheduler admits it, so the second goes in once the first runs).
        for running, queued in ((1, 0), (1, 1)):
            conn = http.client.HTTPConnection(s.host, s.port, timeout=30)
            conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                         body=json.dumps({"messages": [user_message("q")], "max_tokens": 30000, "stream": True,
                                          "ignore_eos": True}))
            holders.append(conn)
            wait_for(running, queued)
        status, payload = s.request("POST", "/v1/chat/completions", {"messages": [user_message("q")], "max_tokens": 2})
        assert status == 503 and payload["error"]["code"] == "server_overloaded"
        check_error_shape(payload, status)
        for conn in holders:
            conn.close()
    finally:
        s.stop()
