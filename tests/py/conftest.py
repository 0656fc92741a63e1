"""Shared pytest fixtures: the moxin binary under test and a fresh, printed random seed.

Every test draws fresh random inputs; the seed is printed so a failure can be replayed with
MOXIN_TEST_SEED=<seed> pytest ... (and the tiny models' weights with MOXIN_MODEL_SEED=<seed>).
"""
import os
import pathlib
import random
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKENIZER_FIXTURE = ROOT / "tests" / "fixtures" / "tokenizer" / "moxin-vlm.tokenizer.json"


def _find_binary():
    env = os.environ.get("MOXIN_BIN")
    if env:
        return pathlib.Path(env)
    return ROOT / "build" / "src" / "cli" / "moxin"


@pytest.fixture(scope="session")
def moxin_bin():
    path = _find_binary()
    if not path.exists():
        pytest.fail(f"moxin binary not found at {path}: build first (see README.md) or set MOXIN_BIN")
    return path


def find_test_tool(name, env):
    """build/tests/tools/<name>, in the moxin binary's build tree (../../tests/tools from
    build/src/cli/moxin), or the path in the environment variable `env`."""
    if os.environ.get(env):
        path = pathlib.Path(os.environ[env])
    else:
        path = _find_binary().parent.parent.parent / "tests" / "tools" / name
    if not path.exists():
        pytest.fail(f"{name} not found at {path}: build the {name} target or set {env}")
    return path


@pytest.fixture
def seed(request):
    value = int(os.environ.get("MOXIN_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"\n[seed] {request.node.nodeid}: MOXIN_TEST_SEED={value}")
    return value


@pytest.fixture(scope="session")
def tokenizer_fixture():
    """The real Mistral vocabulary with <PAD>: tests/fixtures/tokenizer, or MOXIN_TOKENIZER_FIXTURE."""
    env = os.environ.get("MOXIN_TOKENIZER_FIXTURE")
    candidate = pathlib.Path(env) if env else TOKENIZER_FIXTURE
    if not candidate.exists():
        pytest.fail(f"tokenizer fixture not found at {candidate} (set MOXIN_TOKENIZER_FIXTURE)")
    return candidate


def fresh_tiny_model(tmp_path_factory, name, shards=1):
    """A new random-weight tiny checkpoint (tools/make_test_model.py, bf16), seed printed."""
    seed = int(os.environ.get("MOXIN_MODEL_SEED", random.SystemRandom().randrange(2**31)))
    out = tmp_path_factory.mktemp(name)
    print(f"\n[seed] {name} weights: --seed {seed}")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_test_model.py"), "--preset", "tiny",
                    "--out", str(out), "--seed", str(seed), "--dtype", "bf16", "--shards", str(shards)],
                   check=True, capture_output=True, timeout=300)
    return out, seed


def run_moxin(binary, *args, check=True, input_bytes=None, timeout=600):
    """Runs the binary; returns CompletedProcess with text stdout/stderr."""
    proc = subprocess.run([str(binary), *map(str, args)], input=input_bytes, capture_output=True,
                          timeout=timeout)
    out = subprocess.CompletedProcess(proc.args, proc.returncode,
                                      proc.stdout.decode("utf-8", "replace"),
                                      proc.stderr.decode("utf-8", "replace"))
    if check and out.returncode != 0:
        raise AssertionError(f"moxin {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr}")
    return out


def cpu_flags_by_cpuinfo():
    """The first CPU's feature flags as the kernel lists them in /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))


def fastest_cpu_table_by_cpuinfo():
    """The CPU kernel table the CPU's flags (the kernel's view, independent of ours) call for:
    what `moxin` runs by default on x86-64 Linux."""
    flags = cpu_flags_by_cpuinfo()
    if {"avx512f", "avx512bw", "avx512vl", "fma"} <= flags:
        return "amx" if {"amx_tile", "amx_bf16", "avx512_bf16"} <= flags else "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "generic"


def cpu_kernel_table():
    """The table `moxin` runs on this machine: MOXIN_CPU_KERNELS's, else the fastest."""
    return os.environ.get("MOXIN_CPU_KERNELS") or fastest_cpu_table_by_cpuinfo()
