"""The installed C++ package: `cmake --install` into a fresh prefix, then examples/caption.cpp
built as an outside project (find_package(moxin CONFIG) -> moxin::moxin, and pkg-config) and run
on a fresh tiny random model and a real photo: it must print the same greedy caption as
`moxin generate --json` (an independent path through the CLI) and exit 0."""
import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import ROOT, fresh_tiny_model, run_moxin

BUILD = ROOT / "build"
QUESTION = "Describe this image."


def run(*args, text=True, **kwargs):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=text, timeout=900, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("prefix")
    run("cmake", "--install", BUILD, "--prefix", prefix)
    return prefix


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "install")[0]


@pytest.fixture
def photo(tmp_path, seed):
    """A random crop of a scikit-image photograph, as JPEG."""
    rng = np.random.default_rng(seed)
    pixels = skimage.data.astronaut()
    y, x = int(rng.integers(0, 256)), int(rng.integers(0, 256))
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels[y:y + 256, x:x + 256]).save(path, format="JPEG", quality=90)
    return path


def greedy_caption(moxin_bin, model, photo):
    ref = json.loads(run_moxin(moxin_bin, "generate", "--model", model, "--image", photo, "--prompt", QUESTION,
                               "--max-tokens", "128", "--temp", "0", "--json").stdout)
    return ref["text"]


def check_caption(binary, moxin_bin, model, photo):
    # Bytes: random weights write any character, "\r" included, which text mode would rewrite.
    out = run(binary, model, photo, QUESTION, text=False)
    assert out.stdout == greedy_caption(moxin_bin, model, photo).encode() + b"\n"
    assert b"tok/s" in out.stderr


def test_install_layout(prefix):
    assert os.access(prefix / "bin" / "moxin", os.X_OK)
    assert (prefix / "include" / "moxin" / "moxin.hpp").is_file()
    assert (prefix / "include" / "moxin" / "error.hpp").is_file()
    assert len(list(prefix.glob("lib*/**/cmake/moxin/moxinConfig.cmake"))) == 1
    assert len(list(prefix.glob("lib*/**/pkgconfig/moxin.pc"))) == 1
    run(prefix / "bin" / "moxin", "--help")


def test_outside_cmake_project_builds_and_captions(prefix, model, photo, moxin_bin, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT / "examples", source)  # outside the moxin tree: only the installed package
    build = tmp_path / "build"
    run("cmake", "-S", source, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={prefix}")
    run("cmake", "--build", build)
    check_caption(build / "caption", moxin_bin, model, photo)


def test_pkg_config_builds_and_captions(prefix, model, photo, moxin_bin, tmp_path):
    pc_dir = next(prefix.glob("lib*/**/pkgconfig"))
    env = dict(os.environ, PKG_CONFIG_PATH=str(pc_dir))
    flags = run("pkg-config", "--cflags", "--libs", "moxin", env=env).stdout.split()
    includes = [pathlib.Path(f[2:]).resolve() for f in flags if f.startswith("-I")]
    assert (prefix / "include").resolve() in includes, flags
    binary = tmp_path / "caption"
    run("c++", "-std=c++20", "-O1", ROOT / "examples" / "caption.cpp", "-o", binary, *flags)
    check_caption(binary, moxin_bin, model, photo)
