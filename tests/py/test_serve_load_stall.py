"""bench/serve_load.py's prefill-stall split on hand-made timelines: which token gaps of a stream
overlap another request's prefill (send -> first token), and the means of both kinds."""
import importlib.util
import pathlib
import random

import pytest

_spec = importlib.util.spec_from_file_location(
    "serve_load", pathlib.Path(__file__).resolve().parents[2] / "bench" / "serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_load)


def result(start, token_times):
    return serve_load.Result(start=start, first=token_times[0], end=token_times[-1], tokens=len(token_times),
                             prompt_tokens=1, tpot=None, token_times=token_times)


def test_gaps_overlapping_another_prefill_are_counted_as_stalled():
    # A decodes every 100 ms from t=1.0 s, but its gaps slow to 300 ms while B (sent at 1.35 s,
    # first token at 2.0 s) prefills; B then decodes every 100 ms.
    a_times = [1.0, 1.1, 1.2, 1.3, 1.6, 1.9, 2.2, 2.3, 2.4]
    b_times = [2.0, 2.1, 2.2]
    steady, during, n_steady, n_during = serve_load.prefill_stall([result(0.0, a_times), result(1.35, b_times)])
    # During B's prefill (1.35, 2.0): A's gaps (1.3, 1.6), (1.6, 1.9), (1.9, 2.2).
    assert n_during == 3 and during == pytest.approx(0.3)
    # Steady: A's five other gaps and B's two, all 100 ms. A's own prefill (0, 1.0) touches none.
    assert n_steady == 7 and steady == pytest.approx(0.1)


def test_no_overlap_means_no_stalled_gaps():
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    # Requests one after another: each prefill ends before the next request is sent.
    results, t = [], 0.0
    for _ in range(5):
        start = t
        times = [start + 0.5 + 0.01 * i + rng.random() * 1e-3 for i in range(20)]
        results.append(result(start, times))
        t = times[-1] + 0.1
    steady, during, n_steady, n_during = serve_load.prefill_stall(results)
    assert during is None and n_during == 0, f"seed {seed}"
    assert n_steady == 5 * 19, f"seed {seed}"
