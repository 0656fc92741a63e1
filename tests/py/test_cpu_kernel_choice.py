"""The CPU kernel table that runs: by default the fastest this CPU supports (as /proc/cpuinfo says);
MOXIN_CPU_KERNELS forces one (and `moxin bench` names it, with the quantized GEMV it goes with);
a table this build or CPU cannot run is refused with the list of those it can. (x86-64 Linux, as
the CI machine.)"""
import json

import pytest

from conftest import cpu_flags_by_cpuinfo, fastest_cpu_table_by_cpuinfo, fresh_tiny_model, run_moxin


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "tiny-kernel-choice")[0]


def bench_device(moxin_bin, tiny_model):
    out = run_moxin(moxin_bin, "bench", "--model", tiny_model, "--device", "cpu", "--threads", 1, "--context", 8,
                    "--decode-steps", 1, "--runs", 1, "--no-vision", "--json")
    return json.loads(out.stdout)["device"]


def test_forced_table_runs_and_is_named(moxin_bin, tiny_model, monkeypatch):
    monkeypatch.setenv("MOXIN_CPU_KERNELS", "generic")  # the one table every build and CPU runs
    assert "generic kernels" in bench_device(moxin_bin, tiny_model)


def test_default_is_the_fastest_table_of_this_cpu(moxin_bin, tiny_model, monkeypatch):
    monkeypatch.delenv("MOXIN_CPU_KERNELS", raising=False)
    assert f"({fastest_cpu_table_by_cpuinfo()} kernels" in bench_device(moxin_bin, tiny_model)


def test_avx2_table_names_its_quantized_gemv(moxin_bin, tiny_model, monkeypatch):
    flags = cpu_flags_by_cpuinfo()
    if not {"avx2", "fma", "f16c"} <= flags:
        pytest.skip("this CPU runs no AVX2 table")
    monkeypatch.setenv("MOXIN_CPU_KERNELS", "avx2")
    expected = "avx-vnni" if "avx_vnni" in flags else "avx2-int"  # the integer 4-bit GEMV of that CPU
    assert f"(avx2 kernels, {expected} quantized GEMV," in bench_device(moxin_bin, tiny_model)


def test_unknown_table_is_refused(moxin_bin, tiny_model, monkeypatch):
    monkeypatch.setenv("MOXIN_CPU_KERNELS", "sse9")
    out = run_moxin(moxin_bin, "generate", "--model", tiny_model, "--device", "cpu", "--prompt", "hi", check=False)
    assert out.returncode != 0
    assert "MOXIN_CPU_KERNELS=sse9 is not a kernel table this build and CPU can run (generic" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "terminate" not in out.stderr
