#!/usr/bin/env python3
"""Load test for `moxin serve`: throughput and latency percentiles at several concurrencies.

    python bench/serve_load.py --url http://127.0.0.1:8080 --image photo.jpg \
        --max-tokens 256 --question-tokens 16 --concurrency 1,8,32,64

Each level runs `concurrency` clients, each sending --requests-per-client streaming chat
completions one after the other (every request a different random question about the same
image, so the image and its KV prefix come from the server's caches after the first). Reported:
output tokens/s over the level's wall time, requests/s, time to first token (TTFT), time per
output token after the first (TPOT), end-to-end latency (p50/p90/p99), and from /metrics the
engine steps and prefix-cache blocks reused. Prefill stall: every gap between two tokens of a
stream is "while prefilling" when another request of the level was between its send and its first
token during the gap, else "steady"; the mean gap of each kind and their ratio say how much the
running streams slow down while new prompts are prefilled (chunked prefill's cost to them; issue
#10 asks at most 1.3x). Standard library only (runs where the server runs).
--ignore-eos makes every answer exactly --max-tokens long (an extension of this server).
"""
import argparse
import base64
import bisect
import concurrent.futures
import http.client
import json
import random
import statistics
import sys
import time
import urllib.parse

WORDS = ("what is shown in this picture describe the main object colour shape size position left right "
         "top bottom background foreground person animal building sky light dark many few near far").split()


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Client:
    def __init__(self, url, api_key):
        parsed = urllib.parse.urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def get(self, path):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", path, headers=self.headers)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    def stream(self, body):
        """One streaming completion: a Result (times from time.perf_counter())."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        start = time.perf_counter()
        first = last = None
        usage = None
        token_times = []
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=self.headers)
            r = conn.getresponse()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"]["message"])
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices", []):
                    if choice["delta"].get("content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        token_times.append(now)
        finally:
            conn.close()
        end = time.perf_counter()
        tokens = usage["completion_tokens"] if usage else 0
        return Result(start=start, first=first, end=end, tokens=tokens,
                      prompt_tokens=usage["prompt_tokens"] if usage else 0,
                      tpot=(last - first) / (tokens - 1) if first and tokens > 1 else None,
                      token_times=token_times)


class Result:
    """One request: send, first-token and end times, token counts, TPOT (s, None below 2 tokens)
    and the arrival time of every streamed piece of content."""

    def __init__(self, start, first, end, tokens, prompt_tokens, tpot, token_times):
        self.start, self.first, self.end = start, first, end
        self.tokens, self.prompt_tokens, self.tpot, self.token_times = tokens, prompt_tokens, tpot, token_times

    @property
    def ttft(self):
        return (self.first or self.end) - self.start


def prefill_stall(results):
    """Mean gap between a stream's tokens while another request of the level was prefilling
    (sent, no first token yet) and while none was, in s (None where a kind has no gap), and the
    number of gaps of each kind. A stream's own prefill ends at its first token, before its gaps."""
    merged = []  # the union of the prefill intervals, sorted and disjoint
    for a, b in sorted((r.start, r.first or r.end) for r in results):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = [a for a, _ in merged]
    steady, during = [], []
    for r in results:
        for t0, t1 in zip(r.token_times, r.token_times[1:]):
            i = bisect.bisect_left(starts, t1) - 1  # the last interval starting before t1
            (during if i >= 0 and merged[i][1] > t0 else steady).append(t1 - t0)
    mean = lambda gaps: statistics.mean(gaps) if gaps else None
    return mean(steady), mean(during), len(steady), len(during)


def metric_values(client):
    status, text = client.get("/metrics")
    values = {}
    if status == 200:
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
    return values


def make_body(args, image_url, rng):
    question = " ".join(rng.choice(WORDS) for _ in range(args.question_tokens)) + "?"
    content = [{"type": "text", "text": question}]
    if image_url:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    body = {"model": "moxin", "messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens,
            "temperature": args.temperature, "stream": True, "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True
    return body


def run_level(client, args, image_url, concurrency, seed):
    def worker(index):
        rng = random.Random(seed * 1000 + index)
        time.sleep(index * args.stagger_ms / 1000)
        return [client.stream(make_body(args, image_url, rng)) for _ in range(args.requests_per_client)]

    before = metric_values(client)
    start = time.perf_counter()
    results, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker, i) for i in range(concurrency)]:
            try:
                results.extend(future.result())
            except Exception as e:  # a failed client counts as an error, the level goes on
                errors.append(str(e))
    wall = time.perf_counter() - start
    after = metric_values(client)
    ttft = [r.ttft for r in results]
    tpot = [r.tpot for r in results if r.tpot is not None]
    e2e = [r.end - r.start for r in results]
    tokens = sum(r.tokens for r in results)
    steady, during, steady_gaps, during_gaps = prefill_stall(results)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {
        "concurrency": concurrency, "requests": len(results), "errors": len(errors), "wall_s": wall,
        "output_tokens": tokens, "output_tok_s": tokens / wall, "requests_s": len(results) / wall,
        "prompt_tokens_mean": statistics.mean(r.prompt_tokens for r in results) if results else 0,
        "ttft_ms": {p: 1000 * percentile(ttft, p) for p in (50, 90, 99)},
        "tpot_ms": {p: 1000 * percentile(tpot, p) for p in (50, 90, 99)},
        "e2e_s": {p: percentile(e2e, p) for p in (50, 90, 99)},
        "gap_steady_ms": 1000 * steady if steady is not None else None,
        "gap_while_prefilling_ms": 1000 * during if during is not None else None,
        "gaps_steady": steady_gaps, "gaps_while_prefilling": during_gaps,
        "prefill_stall": during / steady if steady and during is not None else None,
        "engine_steps": delta.get("moxin_engine_steps_total", 0),
        "prefix_hit_blocks": delta.get("moxin_prefix_cache_hit_blocks_total", 0),
        "images_encoded": delta.get("moxin_images_encoded_total", 0),
        "first_error": errors[0] if errors else None,
    }


def stall_text(r):
    """'steady/while-prefilling (ratio x)', n/a where a kind of gap did not occur."""
    fmt = lambda v: f"{v:.2f}" if v is not None else "n/a"
    ratio = f" ({r['prefill_stall']:.2f}x)" if r["prefill_stall"] is not None else ""
    return f"{fmt(r['gap_steady_ms'])}/{fmt(r['gap_while_prefilling_ms'])}{ratio}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--image", help="image file sent with every request (omit for text-only)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--question-tokens", type=int, default=16, help="words per question (about one token each)")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-tokens per request")
    ap.add_argument("--stagger-ms", type=float, default=0,
                    help="client i starts i x this late, so that prompts arrive while earlier streams decode")
    ap.add_argument("--api-key")
    ap.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**31))
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    print(f"[serve_load] seed {args.seed}", file=sys.stderr)

    image_url = None
    if args.image:
        with open(args.image, "rb") as f:
            data = f.read()
        kind = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpeg", b"RIFF": "webp", b"GIF8": "gif", b"BM": "bmp"}
        mime = next((v for k, v in kind.items() if data.startswith(k)), "png")
        image_url = f"data:image/{mime};base64," + base64.b64encode(data).decode()

    client = Client(args.url, args.api_key)
    status, _ = client.get("/health")
    if status != 200:
        sys.exit(f"server at {args.url} is not healthy ({status})")
    # One request first, so every level starts with the image and its prefix cached alike.
    client.stream(make_body(args, image_url, random.Random(args.seed)))

    levels = []
    header = (f"{'conc':>4} {'reqs':>5} {'err':>3} {'tok/s':>9} {'req/s':>7} {'TTFT p50/p90/p99 ms':>24} "
              f"{'TPOT p50/p90/p99 ms':>22} {'E2E p50/p99 s':>15} {'tok/step':>8} {'gap ms steady/prefill':>22}")
    print(header)
    for c in (int(x) for x in args.concurrency.split(",")):
        r = run_level(client, args, image_url, c, args.seed + c)
        levels.append(r)
        per_step = r["output_tokens"] / r["engine_steps"] if r["engine_steps"] else float("nan")
        print(f"{c:>4} {r['requests']:>5} {r['errors']:>3} {r['output_tok_s']:>9.1f} {r['requests_s']:>7.2f} "
              f"{r['ttft_ms'][50]:>8.1f}/{r['ttft_ms'][90]:.1f}/{r['ttft_ms'][99]:.1f} "
              f"{r['tpot_ms'][50]:>7.2f}/{r['tpot_ms'][90]:.2f}/{r['tpot_ms'][99]:.2f} "
              f"{r['e2e_s'][50]:>7.2f}/{r['e2e_s'][99]:.2f} {per_step:>8.2f} {stall_text(r):>22}", flush=True)
        if r["first_error"]:
            print(f"     first error: {r['first_error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "levels": levels}, f, indent=2)


if __name__ == "__main__":
    main()
