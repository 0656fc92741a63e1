"""The C++ sampler against transformers' own logits processors.

Random logits, contexts and parameter sets go to tests/tools/sampler_probe; its distribution must
match softmax(processors(logits)) where the processors come from transformers'
GenerationMixin._get_logits_processor (the list generate() builds: repetition penalty, then
temperature, top-k, top-p, min-p), and its samples must follow that distribution (chi-square).
"""
import json
import subprocess
import types
import warnings

import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import LogitsProcessorList, TopPLogitsWarper
from transformers.generation.utils import GenerationMixin

from conftest import find_test_tool

VOCAB = 32064


@pytest.fixture(scope="session")
def sampler_probe():
    return find_test_tool("sampler_probe", "MOXIN_SAMPLER_PROBE")


def run_probe(probe, requests):
    proc = subprocess.run([str(probe)], input=json.dumps(requests).encode(), capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    results = json.loads(proc.stdout)
    assert len(results) == len(requests)
    return results


def f32(x):
    """A Python float exactly representable in float32, so both sides use the same parameter."""
    return float(np.float32(x))


def reference_processors(params, context_length):
    """The LogitsProcessorList generate() builds for these parameters (one sequence, no beams)."""
    if params["temperature"] == 0.0:  # greedy: only the logits processors apply
        config = GenerationConfig(do_sample=False,
                                  repetition_penalty=params["repetition_penalty"])
    else:
        config = GenerationConfig(
            do_sample=True, temperature=params["temperature"], top_k=params["top_k"],
            top_p=params["top_p"], min_p=params["min_p"] if params["min_p"] > 0 else None,
            repetition_penalty=params["repetition_penalty"])
    model = types.SimpleNamespace(config=types.SimpleNamespace(is_encoder_decoder=False))
    model._merge_criteria_processor_list = types.MethodType(
        GenerationMixin._merge_criteria_processor_list, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GenerationMixin._get_logits_processor(
            model, generation_config=config, input_ids_seq_length=context_length,
            logits_processor=LogitsProcessorList(), device="cpu")


def reference_steps(logits, context, params):
    """The scores after each processor, as (processor, scores) pairs, starting from the logits."""
    scores = torch.from_numpy(logits)[None].clone()
    input_ids = torch.tensor([context], dtype=torch.long).reshape(1, len(context))
    steps = [(None, scores[0])]
    for processor in reference_processors(params, len(context)):
        scores = processor(input_ids, scores)
        steps.append((processor, scores[0]))
    return steps


def reference_distribution(logits, context, params):
    """softmax(processors(logits)). The processors run in float32 as in generate(); the softmax
    runs in float64 because torch's float32 softmax over 32064 scores is itself off by up to
    ~1e-5 (the error of its float32 sum), more than this test's tolerance."""
    scores = reference_steps(logits, context, params)[-1][1]
    if params["temperature"] == 0.0:  # greedy: torch.argmax, first index on ties
        one_hot = torch.zeros_like(scores, dtype=torch.float64)
        one_hot[torch.argmax(scores)] = 1.0
        return one_hot.numpy()
    return torch.softmax(scores.double(), dim=-1).numpy()


def top_p_cut_is_ill_conditioned(logits, context, params):
    """True when transformers' top-p cut is decided by rounding rather than by the distribution:
    a dropped token ties the lowest kept one (torch.sort's order among equal scores is
    unspecified), torch's float32 softmax puts the cut elsewhere than exact arithmetic does, or a
    cumulative probability lies within 1e-6 of the threshold. Such cases are redrawn."""
    steps = reference_steps(logits, context, params)
    for (_, before), (processor, after) in zip(steps, steps[1:]):
        if not isinstance(processor, TopPLogitsWarper):
            continue
        kept = torch.isfinite(after)
        dropped = torch.isfinite(before) & ~kept
        if torch.any(before[dropped] == before[kept].min()):
            return True
        order = torch.argsort(before, stable=True)
        cumulative = torch.cumsum(torch.softmax(before.double(), dim=-1)[order], dim=0)
        threshold = float(np.float32(1 - processor.top_p))
        exact_kept = torch.zeros_like(kept)
        exact_kept[order] = cumulative > threshold
        exact_kept[order[-1]] = True
        return (not torch.equal(exact_kept, kept)
                or bool(torch.any(torch.abs(cumulative - threshold) < 1e-6)))
    return False


def random_logits(rng, quantised=False):
    """Normal logits, often with a few dominant tokens (the peaked shape real models give).
    Spans stay well inside float32's exp range so no surviving probability underflows to 0."""
    logits = rng.standard_normal(VOCAB) * rng.uniform(0.5, 2.5)
    if rng.random() < 0.5:
        peaks = rng.choice(VOCAB, size=int(rng.integers(1, 8)), replace=False)
        logits[peaks] += rng.uniform(3, 10, size=len(peaks))
    if quantised:
        logits = np.round(logits * 2) / 2
    return logits.astype(np.float32)


def random_context(rng, logits):
    """Random ids, half of them among the most likely so the penalty reshapes the head."""
    length = int(rng.integers(0, 300))
    head = np.argsort(-logits)[:100]
    ids = np.where(rng.random(length) < 0.5, rng.choice(head, size=length),
                   rng.integers(0, VOCAB, size=length))
    return [int(i) for i in ids]


def random_params(rng, seed, greedy=False, top_p_allowed=True):
    return {
        "temperature": 0.0 if greedy else f32(rng.choice([1.0, rng.uniform(0.5, 2.0)])),
        "top_k": int(rng.choice([0, 0, int(rng.integers(1, 300)), int(rng.integers(1, 5)), 40000])),
        "top_p": f32(rng.uniform(0.05, 0.99)) if top_p_allowed and rng.random() < 0.6 else 1.0,
        "min_p": f32(rng.uniform(0.001, 0.5)) if rng.random() < 0.4 else 0.0,
        "repetition_penalty": f32(rng.uniform(0.7, 1.5)) if rng.random() < 0.6 else 1.0,
        "seed": int(seed),
    }


def assert_same_distribution(got, expected, case):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == expected.shape, case
    np.testing.assert_array_equal(np.flatnonzero(got), np.flatnonzero(expected),
                                  err_msg=f"support differs for {case}")
    diff = np.max(np.abs(got - expected))
    assert diff < 1e-6, f"max abs difference {diff} for {case}"


def check_cases(probe, cases):
    requests = [{"logits": logits.astype(np.float64).tolist(), "context": context,
                 "params": params, "samples": 3} for logits, context, params in cases]
    for (logits, context, params), result in zip(cases, run_probe(probe, requests)):
        assert "error" not in result, result
        expected = reference_distribution(logits, context, params)
        assert_same_distribution(result["distribution"], expected, params)
        assert all(expected[i] > 0 for i in result["samples"]), (params, result["samples"])


def test_distribution_matches_transformers(sampler_probe, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < 24:
        logits = random_logits(rng)
        case = (logits, random_context(rng, logits), random_params(rng, seed))
        if not top_p_cut_is_ill_conditioned(*case):
            cases.append(case)
    check_cases(sampler_probe, cases)


def test_ties_at_the_top_k_boundary_all_survive(sampler_probe, seed):
    # Logits on a 0.5 grid: many ties, which top-k keeps together (and min-p treats alike).
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(8):
        logits = random_logits(rng, quantised=True)
        params = random_params(rng, seed, top_p_allowed=False)
        params["top_k"] = int(rng.integers(1, 50))
        cases.append((logits, random_context(rng, logits), params))
    check_cases(sampler_probe, cases)


def test_greedy_is_torch_argmax(sampler_probe, seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(8):
        logits = random_logits(rng, quantised=i % 2 == 1)
        if i % 4 == 0:  # an exact tie for the maximum: the first index wins
            tied = rng.choice(VOCAB, size=3, replace=False)
            logits[tied] = logits.max() + 1
        cases.append((logits, random_context(rng, logits), random_params(rng, seed, greedy=True)))
    check_cases(sampler_probe, cases)


def chi_square_p_value(counts, probs, draws):
    """Upper-tail p-value; cells expecting fewer than 5 draws are pooled into one."""
    expected = probs * draws
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    dof = len(expected) - 1
    assert dof >= 20, f"only {dof + 1} cells: the distribution is too narrow for this test"
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


@pytest.mark.parametrize("params", [
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0},
    {"temperature": 0.7, "top_k": 40, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.3},
    {"temperature": 1.2, "top_k": 0, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.0},
])
def test_sample_frequencies_follow_the_distribution(sampler_probe, seed, params):
    rng = np.random.default_rng(seed)
    params = {**{name: f32(value) for name, value in params.items() if name != "top_k"},
              "top_k": params["top_k"], "seed": seed}
    draws = 20000
    # Usually dozens (top-k 40) to hundreds of cells expect >= 5 draws; about 1 draw in 100 has a
    # top logit so far out that min-p + top-p leave a handful, too few for a chi-square test (the
    # one here wants 30): draw again then.
    while True:
        logits = (rng.standard_normal(VOCAB) * 2).astype(np.float32)
        context = random_context(rng, logits)
        probs = reference_distribution(logits, context, params).astype(np.float64)
        if np.count_nonzero(probs / probs.sum() * draws >= 5) >= 30:
            break
    [result] = run_probe(sampler_probe, [{"logits": logits.astype(np.float64).tolist(),
                                          "context": context, "params": params,
                                          "samples": draws}])
    counts = np.bincount(result["samples"], minlength=VOCAB)
    assert counts[probs == 0].sum() == 0, "sampled a token outside the support"
    p_value = chi_square_p_value(counts, probs / probs.sum(), draws)
    assert p_value > 1e-6, f"chi-square p-value {p_value} for {params}"


def test_seed_fixes_the_sequence(sampler_probe, seed):
    rng = np.random.default_rng(seed)
    logits = random_logits(rng).astype(np.float64).tolist()
    params = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
              "repetition_penalty": 1.0}
    request = lambda s: {"logits": logits, "params": {**params, "seed": s}, "samples": 200}
    first, again, other = run_probe(sampler_probe,
                                    [request(seed), request(seed), request(seed + 1)])
    assert first["samples"] == again["samples"]
    assert first["samples"] != other["samples"]
