"""`moxin serve` against slow, numerous and vanishing clients (issue 12, findings 3, 4, 5, 8).

Raw sockets, so nothing is smoothed over by a client library. Crowds come from several loopback
addresses (all of 127.0.0.0/8 is local on Linux), so the per-address cap and the total cap can
be told apart. Pillow is the reference for what a crafted image header claims.
"""
import base64
import http.client
import io
import json
import re
import signal
import socket
import struct
import threading
import time

import numpy as np
import pytest
from PIL import Image

from test_server import Server, model, question, server_built, user_message  # noqa: F401 (fixtures)

HEADER_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(moxin_bin, model):
    s = Server(moxin_bin, model, "--header-timeout", HEADER_TIMEOUT, "--max-context", 8192)
    yield s
    s.stop()


def connect(server, source="127.0.0.1", timeout=10):
    return socket.create_connection((server.host, server.port), timeout=timeout, source_address=(source, 0))


def raw_request(server, text, source="127.0.0.1", timeout=10):
    """Sends `text` (bytes) on a new connection; returns (status, headers text, body text) of the
    first response (read to its Content-Length, or to the end of the connection)."""
    with connect(server, source, timeout) as sock:
        sock.sendall(text)
        reply = b""
        while True:
            head, sep, body = reply.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head) if sep else None
            if sep and (length is None and b" 204 " in head.split(b"\r\n")[0] or
                        length is not None and len(body) >= int(length.group(1))):
                break
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
    return status, head.decode("latin-1"), body.decode("utf-8", "replace")


def timed_health(server, source="127.0.0.1"):
    start = time.monotonic()
    status, _, body = raw_request(server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", source)
    return status, json.loads(body) if status == 200 else body, time.monotonic() - start


def chat_body(rng, **fields):
    body = {"messages": [user_message(question(rng))], "max_tokens": 4, "temperature": 0}
    body.update(fields)
    return body


def post_chat(server, body, source="127.0.0.1", timeout=60):
    data = json.dumps(body).encode()
    return raw_request(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data, source, timeout)


class Slowloris:
    """`count` connections from 10 loopback addresses, each trickling one header byte per
    second and reconnecting when the server drops it (as an attacker would)."""

    def __init__(self, server, count):
        self.server, self.count = server, count
        self.dropped = 0  # connections the server ended (timeout answer or close)
        self.timeouts_answered = 0
        self.socks = [self.open(i) for i in range(count)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self, i):
        sock = connect(self.server, f"127.0.0.{2 + i % 10}")
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        sock.setblocking(False)
        return sock

    def run(self):
        while not self.stop.wait(1.0):
            for i, sock in enumerate(self.socks):
                try:
                    reply = sock.recv(4096)
                    self.timeouts_answered += reply.startswith(b"HTTP/1.1 408")
                    ended = True
                except BlockingIOError:
                    ended = False
                except OSError:
                    ended = True
                if not ended:
                    try:
                        sock.send(b"X")
                        continue
                    except OSError:
                        pass
                sock.close()
                self.dropped += 1
                self.socks[i] = self.open(i)

    def close(self):
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


def test_slowloris_crowd_cannot_stall_the_server(server, seed):
    rng = np.random.default_rng(seed)
    crowd = Slowloris(server, 320)
    try:
        latencies = []
        for _ in range(8):
            status, body, seconds = timed_health(server)
            assert (status, body) == (200, {"status": "ok"})
            latencies.append(seconds)
            time.sleep(0.25)
        print(f"/health under 320 slowloris connections: max {max(latencies) * 1000:.0f} ms")
        assert max(latencies) < 1.0
        status, _, body = post_chat(server, chat_body(rng))
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1, body
        # Each trickling connection is answered 408 and dropped once its header deadline passes.
        deadline = time.monotonic() + HEADER_TIMEOUT + 8
        while crowd.dropped < 320 and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"dropped {crowd.dropped}, answered 408: {crowd.timeouts_answered}")
        assert crowd.dropped >= 320 and crowd.timeouts_answered > 0
    finally:
        crowd.close()


def test_connection_caps_refuse_clearly_but_monitoring_still_answers(moxin_bin, model, seed):
    rng = np.random.default_rng(seed)
    s = Server(moxin_bin, model, "--max-connections", 6, "--max-connections-per-client", 3)
    held = []
    try:
        held += [connect(s, "127.0.0.2") for _ in range(3)]
        time.sleep(0.3)  # the server admits them on its worker threads
        status, _, body = post_chat(s, chat_body(rng), "127.0.0.2")
        assert status == 503 and "--max-connections-per-client" in body and "127.0.0.2" in body, body
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert timed_health(s, "127.0.0.2")[:2] == (200, {"status": "ok"})
        assert post_chat(s, chat_body(rng), "127.0.0.3")[0] == 200  # another address is not limited
        held += [connect(s, "127.0.0.3") for _ in range(3)]
        time.sleep(0.3)
        status, _, body = post_chat(s, chat_body(rng), "127.0.0.4")
        assert status == 503 and "maximum of 6 open connections (--max-connections)" in body, body
        status, metrics, _ = raw_request(s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.4")
        assert status == 200
        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + 2
        while post_chat(s, chat_body(rng), "127.0.0.4")[0] != 200:
            assert time.monotonic() < deadline, "closed connections were not given back"
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        s.stop()


def test_abandoned_non_streamed_request_frees_its_sequence(server, seed):
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    body = chat_body(rng, max_tokens=6000, ignore_eos=True)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + 30
    while server.metrics()["moxin_running_sequences"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    gone = time.monotonic()
    while server.metrics()["moxin_running_sequences"] != 0:
        assert time.monotonic() < gone + 1.0, "the abandoned request still runs after 1 s"
        time.sleep(0.02)
    print(f"sequence freed {1000 * (time.monotonic() - gone):.0f} ms after the client left")


def test_http_edge_cases(server, seed):
    rng = np.random.default_rng(seed)
    status, _, body = raw_request(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Type: application/json\r\nContent-Length: -1\r\n\r\n{}")
    assert status == 400 and "Content-Length '-1' is not a byte count" in body, body
    many = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(int(rng.integers(101, 3000))))
    status, _, body = raw_request(server, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status == 431 and "at most 100 are accepted" in body, body
    huge = b"X-Big: " + b"a" * 8000 + b"\r\n"
    status, _, body = raw_request(server, b"GET /health HTTP/1.1\r\n" + huge * 10 + b"\r\n")
    assert status == 431 and "larger than 65536 bytes" in body, body
    status, head, _ = raw_request(server, b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                  b"Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n")
    assert status == 204 and "Access-Control-Allow-Origin" not in head, head  # CORS is off by default
    status, _, body = post_chat(server, chat_body(rng, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.png"}}, {"type": "text", "text": "?"}]}]))
    assert status == 400 and "scheme 'ftp' are not supported" in body, body
    # A body that never completes gets 408 once the body deadline passes (headers arrived).
    with connect(server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert timed_health(server)[0] == 200


def test_cors_origin_allows_a_browser_client(moxin_bin, model):
    s = Server(moxin_bin, model, "--cors-origin", "https://app.example", "--api-key", "secret")
    try:
        status, head, _ = raw_request(s, b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                      b"Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n"
                                      b"Access-Control-Request-Headers: authorization, content-type\r\n\r\n")
        assert status == 204, head  # a preflight carries no API key
        for header in ("Access-Control-Allow-Origin: https://app.example",
                       "Access-Control-Allow-Headers: Authorization, Content-Type", "Access-Control-Allow-Methods: "):
            assert header in head, head
        status, head, _ = raw_request(s, b"GET /health HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
                                      b"Connection: close\r\n\r\n")
        assert status == 200 and "Access-Control-Allow-Origin: https://app.example" in head, head
    finally:
        s.stop()


def gif_claiming(width, height):
    """A tiny GIF whose screen and frame claim width x height: header, screen descriptor, one
    image descriptor, a minimal LZW block, trailer."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def test_cheap_image_with_a_huge_header_is_refused_before_decoding(server, seed):
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(5001, 9500)), int(rng.integers(5001, 9500))
    gif = gif_claiming(width, height)
    assert Image.open(io.BytesIO(gif)).size == (width, height)  # Pillow reads the same claim
    url = "data:image/gif;base64," + base64.b64encode(gif).decode()
    start = time.monotonic()
    status, _, body = post_chat(server, chat_body(rng, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}]))
    seconds = time.monotonic() - start
    print(f"{len(gif)}-byte GIF claiming {width}x{height}: {status} in {seconds * 1000:.0f} ms")
    assert status == 400 and f"{width}x{height} = {width * height} pixels, over the limit of 25000000" in body, body
    assert "--max-pixels" in body
    assert seconds < 1.0  # decoding 9000x9000 takes seconds; the header check takes microseconds


def test_sigterm_under_load_ends_every_stream(moxin_bin, model, seed):
    """SIGTERM with streams running and queued: each stream still ends with a finish (or an
    error) event and [DONE], and the process exits 0."""
    rng = np.random.default_rng(seed)
    s = Server(moxin_bin, model, "--max-batch", 4)
    clients = int(rng.integers(8, 16))
    results = [None] * clients

    def stream(i):
        conn = http.client.HTTPConnection(s.host, s.port, timeout=120)
        body = chat_body(rng, max_tokens=int(rng.integers(50, 300)), stream=True, ignore_eos=True)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
        results[i] = (response.status, events)

    try:
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while s.metrics()["moxin_running_sequences"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        assert s.proc.wait(timeout=60) == 0
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    for status, events in results:
        assert status == 200 and events[-1] == "[DONE]", (status, events[-3:])
        last = json.loads(events[-2])
        finished = any(c.get("finish_reason") for c in last.get("choices", [])) or "error" in last
        assert finished, events[-3:]
