#!/usr/bin/env python3
"""Soak test for `moxin serve`: many streaming clients with random hang-ups, bad requests mixed
in, and a slowloris crowd, for a given duration; then the server must be back to idle.

    python3 bench/soak.py --moxin build/src/cli/moxin --duration 600 [--model DIR] [--json out.json]

Starts the server itself (a fresh tiny random model from tools/make_test_model.py unless --model
is given; CPU). Reports requests done, errors by kind, the server's RSS over time, and at the
end the KV blocks not given back (free + prefix-cached blocks against those free at the start).
Then SIGTERM: the exit status must be 0. Exits 1 if the server crashed, its RSS grew more than
--max-rss-growth from minute 2 to the end, a block leaked, a stream ended without a finish or
error event, or the exit status was not 0. Standard library only.
"""
import argparse
import collections
import http.client
import json
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = "what is this picture the cat dog sky tree red green blue left right how many where why".split()
BAD_BODIES = [
    b'{"messages": [',                                                      # invalid JSON
    b'{"messages": [{"role": "user", "content": "x"}], "n": 3}',            # unsupported value
    b'{"messages": [{"role": "robot", "content": "x"}]}',                   # unknown role
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 10000000}',  # past the context
    b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": '
    b'{"url": "data:image/png;base64,AAAA"}}]}]}',                          # undecodable image
]


class Server:
    def __init__(self, moxin, model, extra):
        self.proc = subprocess.Popen([moxin, "serve", "--model", model, "--port", "0", "--threads", "2", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        match = re.search(r"http://([\d.]+):(\d+)", self.proc.stdout.readline())
        if not match:
            raise SystemExit("the server did not start")
        self.host, self.port = match.group(1), int(match.group(2))

    def rss_mb(self):
        status = pathlib.Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def metrics(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return {name: float(value) for name, value in
                (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))}


class Soak:
    def __init__(self, server, args):
        self.server, self.args = server, args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def count(self, kind):
        with self.lock:
            self.counts[kind] += 1

    def streaming_client(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            # Eight source addresses: 64 clients from one would meet the per-address connection cap.
            conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=120,
                                              source_address=(f"127.0.1.{1 + seed % 8}", 0))
            try:
                if rng.random() < self.args.bad_fraction:
                    conn.request("POST", "/v1/chat/completions", body=rng.choice(BAD_BODIES),
                                 headers={"Content-Type": "application/json"})
                    status = conn.getresponse().status
                    self.count("bad request refused" if 400 <= status < 500 else f"bad request got {status}")
                    continue
                body = {"messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=6)) + "?"}],
                        "max_tokens": rng.randint(8, 96), "stream": True, "ignore_eos": rng.random() < 0.5}
                conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                if response.status != 200:
                    self.count(f"status {response.status}")
                    continue
                hang_up_after = rng.randint(1, 20) if rng.random() < self.args.hang_up_fraction else None
                events = 0
                last = None
                for line in response:
                    if line.startswith(b"data: "):
                        events += 1
                        last = line[6:].strip()
                        if hang_up_after is not None and events >= hang_up_after:
                            break
                if hang_up_after is not None and events >= hang_up_after:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                    self.count("hung up mid-stream")
                elif last == b"[DONE]":
                    self.count("completed")
                else:
                    self.count("stream ended without [DONE]")
            except (OSError, http.client.HTTPException) as e:
                self.count(f"client error {type(e).__name__}")
            finally:
                conn.close()

    def slowloris(self, count):
        """`count` connections from 10 loopback addresses trickling header bytes, reconnecting."""
        def open_one(i):
            sock = socket.create_connection((self.server.host, self.server.port), timeout=10,
                                            source_address=(f"127.0.0.{2 + i % 10}", 0))
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            sock.setblocking(False)
            return sock
        socks = [open_one(i) for i in range(count)]
        while not self.stop.wait(2.0):
            for i, sock in enumerate(socks):
                try:
                    sock.send(b"X")
                    sock.recv(4096)  # raises BlockingIOError while the server still waits for headers
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                # The server answered (408) or closed: reconnect, as an attacker would.
                sock.close()
                self.count("slowloris connection dropped by the server")
                socks[i] = open_one(i)
        for sock in socks:
            sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moxin", default=str(ROOT / "build/src/cli/moxin"))
    parser.add_argument("--model", help="checkpoint directory (default: a fresh tiny random model)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of load")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--slowloris", type=int, default=200)
    parser.add_argument("--hang-up-fraction", type=float, default=0.2)
    parser.add_argument("--bad-fraction", type=float, default=0.1)
    parser.add_argument("--max-rss-growth", type=float, default=0.05)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if not model:
            model = str(pathlib.Path(tmp) / "tiny")
            subprocess.run([sys.executable, str(ROOT / "tools/make_test_model.py"), "--preset", "tiny", "--out", model,
                            "--dtype", "bf16"], check=True, capture_output=True)
        server = Server(args.moxin, model, ["--max-batch", "32", "--max-context", "16384"])
        idle_blocks = server.metrics()["moxin_kv_free_blocks"]
        soak = Soak(server, args)
        threads = [threading.Thread(target=soak.streaming_client, args=(i,), daemon=True) for i in range(args.clients)]
        threads.append(threading.Thread(target=soak.slowloris, args=(args.slowloris,), daemon=True))
        for t in threads:
            t.start()
        start = time.monotonic()
        rss = []  # (seconds, MB)
        while time.monotonic() - start < args.duration and server.proc.poll() is None:
            rss.append((round(time.monotonic() - start), round(server.rss_mb(), 1)))
            print(f"[soak] {rss[-1][0]:5d} s  RSS {rss[-1][1]:7.1f} MB  {dict(soak.counts)}", flush=True)
            time.sleep(min(10.0, args.duration / 20))
        soak.stop.set()
        for t in threads:
            t.join(timeout=180)
        crashed = server.proc.poll() is not None
        leaked = None
        if not crashed:
            deadline = time.monotonic() + 30
            while True:
                m = server.metrics()
                if m["moxin_running_sequences"] == 0 and m["moxin_queue_depth"] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            leaked = int(idle_blocks - m["moxin_kv_free_blocks"] - m["moxin_prefix_cache_blocks"])
            rss.append((round(time.monotonic() - start), round(server.rss_mb(), 1)))
            server.proc.send_signal(signal.SIGTERM)
        exit_status = server.proc.wait(timeout=60)

    after_warmup = [mb for s, mb in rss if s >= min(120, args.duration / 5)] or [rss[-1][1]]
    growth = (after_warmup[-1] - after_warmup[0]) / after_warmup[0]
    report = {"duration_s": args.duration, "clients": args.clients, "slowloris": args.slowloris,
              "requests_by_outcome": dict(soak.counts), "rss_mb": rss, "rss_growth_after_warmup": round(growth, 4),
              "kv_blocks_leaked": leaked, "crashed": crashed, "exit_status": exit_status}
    print(json.dumps(report, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
    failed = (crashed or exit_status != 0 or leaked != 0 or growth > args.max_rss_growth
              or soak.counts["stream ended without [DONE]"] > 0)
    print("[soak] FAILED" if failed else "[soak] passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
