"""`--model ORG/NAME[@REVISION]`: the real `moxin` binary against a local mock of the Hugging Face
hub (tests/py/mock_hub.py) and the real huggingface_hub on the same cache directory.

Each test gets a fresh hub and cache; the models are fresh random tiny checkpoints (seeds
printed). The answer from an id is compared with the answer from the checkpoint directory."""
import hashlib
import json
import os
import pathlib
import pty
import random
import secrets
import subprocess

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub.utils.sha import git_hash
from PIL import Image

from conftest import fresh_tiny_model
from mock_hub import MockHub

REPO = "moxin-test/tiny-vlm"


@pytest.fixture(scope="module")
def model_a(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "hub-a", shards=2)[0]


@pytest.fixture(scope="module")
def model_b(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "hub-b", shards=1)[0]


@pytest.fixture
def hub():
    h = MockHub()
    yield h
    h.close()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hf-cache"


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir()) if p.is_file()}


def closed_port_url():
    h = MockHub()
    url = h.url
    h.close()
    return url


def run(binary, *args, env, check=True, quiet=False, cwd=None):
    """The binary with only the given HF_* variables (none inherited from this machine)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update({k: str(v) for k, v in env.items()})
    proc = subprocess.run([str(binary), *map(str, args), *(["--quiet"] if quiet else [])],
                          capture_output=True, env=full_env, timeout=600, cwd=cwd)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                                      proc.stderr.decode("utf-8", "replace"))
    if check:
        assert out.returncode == 0, f"moxin {' '.join(map(str, args))} failed:\n{out.stderr}"
    return out


def generate(binary, model, env, prompt, check=True, quiet=False):
    return run(binary, "generate", "--model", model, "--prompt", prompt, "--max-tokens", 8, "--temp", 0, "--json",
               env=env, check=check, quiet=quiet)


def answer(binary, model, env, prompt, quiet=False):
    """The greedy tokens and the process; fails the test when moxin failed."""
    out = generate(binary, model, env, prompt, quiet=quiet)
    return json.loads(out.stdout)["tokens"], out


def refusal(binary, model, env, prompt="hi"):
    """The process of a run that must fail with a moxin::Error (exit 1)."""
    out = generate(binary, model, env, prompt, check=False)
    assert out.returncode == 1, f"expected exit 1, got {out.returncode}:\n{out.stderr}"
    return out


def random_prompt(seed):
    words = ["cat", "sky", "tree", "river", "window", "lamp", "road", "cloud", "stone", "bird"]
    rng = random.Random(seed)
    return " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "?"


def env_for(hub, cache, **extra):
    return {"HF_ENDPOINT": hub.url if hub else closed_port_url(), "HF_HUB_CACHE": cache, **extra}


def test_download_layout_reuse_and_same_answer(moxin_bin, model_a, hub, cache, seed):
    commit = hub.add_commit(REPO, files_of(model_a))
    env = env_for(hub, cache)
    prompt = random_prompt(seed)
    from_dir, _ = answer(moxin_bin, model_a, env, prompt)
    from_id, first = answer(moxin_bin, REPO, env, prompt)
    assert from_id == from_dir

    # huggingface_hub's layout: refs/main -> commit; snapshot files are relative symlinks to
    # blobs named by the ETag (sha256 for the LFS weights, the git blob sha1 otherwise).
    repo_dir = cache / "models--moxin-test--tiny-vlm"
    assert (repo_dir / "refs" / "main").read_text() == commit
    snapshot = repo_dir / "snapshots" / commit
    for name, data in files_of(model_a).items():
        link = snapshot / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), name
        etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_hash(data)
        assert link.resolve() == (repo_dir / "blobs" / etag).resolve() and link.read_bytes() == data, name
    assert len(hub.requests("cdn")) == 2  # the two shards, each once

    # Not a terminal: one summary line per downloaded file.
    summaries = [l for l in first.stderr.splitlines() if l.startswith(f"download {REPO} ")]
    assert sorted(l.split()[2].rstrip(":") for l in summaries) == sorted(files_of(model_a)), first.stderr
    assert "\r" not in first.stderr

    # Second run: the cache is used, nothing downloaded again, nothing reported.
    before = len(hub.requests("resolve")), len(hub.requests("cdn"))
    again, second = answer(moxin_bin, REPO, env, prompt)
    assert again == from_dir
    assert (len(hub.requests("resolve")), len(hub.requests("cdn"))) == before
    assert "download" not in second.stderr


def test_quiet_prints_no_progress(moxin_bin, model_a, hub, cache, seed):
    hub.add_commit(REPO, files_of(model_a))
    tokens, out = answer(moxin_bin, REPO, env_for(hub, cache), random_prompt(seed), quiet=True)
    assert tokens and len(hub.requests("cdn")) == 2
    assert "download" not in out.stderr and "weights" not in out.stderr, out.stderr


def test_progress_bar_on_a_terminal(moxin_bin, model_a, hub, cache, seed):
    hub.add_commit(REPO, files_of(model_a))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update({"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache)})
    controller, terminal = pty.openpty()
    proc = subprocess.run([str(moxin_bin), "generate", "--model", REPO, "--prompt", random_prompt(seed),
                           "--max-tokens", "4", "--temp", "0"], stdout=subprocess.PIPE, stderr=terminal,
                          env=full_env, timeout=600)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, shown
    assert f"\r\x1b[Kdownload {REPO} model-00001-of-00002.safetensors: " in shown, shown
    assert "100%" in shown or " in " in shown


def test_offline_uses_the_cache_and_names_what_is_missing(moxin_bin, model_a, hub, cache, seed):
    hub.add_commit(REPO, files_of(model_a))
    prompt = random_prompt(seed)
    offline = {"HF_ENDPOINT": closed_port_url(), "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    out = refusal(moxin_bin, REPO, offline, prompt)
    assert REPO in out.stderr and "main" in out.stderr and "HF_HUB_OFFLINE" in out.stderr, out.stderr

    online, _ = answer(moxin_bin, REPO, env_for(hub, cache), prompt)
    requests = len(hub.log)
    from_cache, _ = answer(moxin_bin, REPO, offline, prompt)
    assert from_cache == online and len(hub.log) == requests

    commit = (cache / "models--moxin-test--tiny-vlm" / "refs" / "main").read_text()
    snapshot = cache / "models--moxin-test--tiny-vlm" / "snapshots" / commit
    # An index naming a shard the OS cannot look up (a name past its length limit) is refused by name.
    index_path = snapshot / "model.safetensors.index.json"
    original = index_path.read_text()
    index = json.loads(original)
    index["weight_map"][sorted(index["weight_map"])[0]] = "x" * 300 + ".safetensors"
    index_path.write_text(json.dumps(index))
    out = refusal(moxin_bin, REPO, offline, prompt)
    assert "cannot be read: File name too long" in out.stderr, out.stderr
    index_path.write_text(original)

    # A file gone from the snapshot is named.
    (snapshot / "tokenizer.json").unlink()
    out = refusal(moxin_bin, REPO, offline, prompt)
    assert "tokenizer.json" in out.stderr and "HF_HUB_OFFLINE" in out.stderr, out.stderr


def test_a_repository_naming_a_shard_the_os_cannot_store_is_refused(moxin_bin, model_a, hub, cache, seed):
    # The repository holds a shard whose name is past the OS's file-name limit, and its index names
    # it: refused by name when the cache is asked for it, not an escaped std::filesystem error.
    files = files_of(model_a)
    index = json.loads(files["model.safetensors.index.json"])
    long_name = "y" * 300 + ".safetensors"
    index["weight_map"][random.Random(seed).choice(sorted(index["weight_map"]))] = long_name
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files[long_name] = files["model-00001-of-00002.safetensors"]
    hub.add_commit(REPO, files)
    out = refusal(moxin_bin, REPO, env_for(hub, cache), random_prompt(seed))
    assert "cannot be read: File name too long" in out.stderr, out.stderr


def test_revision_pinning(moxin_bin, model_a, model_b, hub, cache, seed):
    old = hub.add_commit(REPO, files_of(model_a), revisions=("main", "v1"))
    new = hub.add_commit(REPO, files_of(model_b), revisions=("main",))
    env = env_for(hub, cache)
    prompt = random_prompt(seed)
    a, _ = answer(moxin_bin, model_a, env, prompt)
    b, _ = answer(moxin_bin, model_b, env, prompt)
    assert a != b, "the two random models should answer differently"
    assert answer(moxin_bin, REPO, env, prompt)[0] == b
    assert answer(moxin_bin, f"{REPO}@v1", env, prompt)[0] == a
    assert answer(moxin_bin, f"{REPO}@{old}", env, prompt)[0] == a
    refs = cache / "models--moxin-test--tiny-vlm" / "refs"
    assert (refs / "main").read_text() == new and (refs / "v1").read_text() == old
    # A commit hash whose snapshot is complete needs no network at all.
    requests = len(hub.log)
    assert answer(moxin_bin, f"{REPO}@{new}", env_for(None, cache), prompt)[0] == b
    assert len(hub.log) == requests
    out = refusal(moxin_bin, f"{REPO}@no-such-branch", env, prompt)
    assert "no-such-branch" in out.stderr and "404" in out.stderr, out.stderr


def test_gated_repository_needs_the_token(moxin_bin, model_b, hub, cache, seed):
    token = "hf_" + secrets.token_hex(8)
    hub.add_commit(REPO, files_of(model_b), token=token)
    prompt = random_prompt(seed)
    out = refusal(moxin_bin, REPO, env_for(hub, cache), prompt)
    assert all(s in out.stderr for s in (REPO, "main", "401", "gated", "HF_TOKEN")), out.stderr
    out = refusal(moxin_bin, REPO, env_for(hub, cache, HF_TOKEN="hf_wrong"), prompt)
    assert "401" in out.stderr and "no access" in out.stderr, out.stderr
    tokens, _ = answer(moxin_bin, REPO, env_for(hub, cache, HF_TOKEN=token), prompt)
    assert tokens == answer(moxin_bin, model_b, {}, prompt)[0]
    # The token went to the hub, not to the CDN it redirects to.
    assert all(r[2].get("Authorization") == f"Bearer {token}" for r in hub.requests("resolve")[-3:])
    assert all("Authorization" not in r[2] for r in hub.requests("cdn"))


def test_unknown_repository_and_unreachable_hub(moxin_bin, hub, cache):
    out = refusal(moxin_bin, "nobody/nothing@main", env_for(hub, cache), "hi")
    assert "nobody/nothing@main" in out.stderr and "404" in out.stderr, out.stderr
    out = refusal(moxin_bin, "nobody/nothing", env_for(None, cache), "hi")
    assert "nobody/nothing@main" in out.stderr and "not in the Hugging Face cache" in out.stderr
    out = refusal(moxin_bin, "not a model", env_for(hub, cache), "hi")
    assert "'not a model' does not exist, and it is not a Hugging Face model id" in out.stderr


def test_connection_cut_mid_file_resumes_on_the_next_run(moxin_bin, model_b, hub, cache, seed):
    files = files_of(model_b)
    hub.add_commit(REPO, files)
    weights = files["model.safetensors"]
    sha = hashlib.sha256(weights).hexdigest()
    cut = len(weights) // 3 + seed % (len(weights) // 3)
    hub.cut_next(sha, cut)
    prompt = random_prompt(seed)
    out = refusal(moxin_bin, REPO, env_for(hub, cache), prompt)
    assert "model.safetensors" in out.stderr and "run again to resume" in out.stderr, out.stderr
    # The interrupted download's summary says where it stopped.
    assert f"download {REPO} model.safetensors: stopped at " in out.stderr, out.stderr
    partial = cache / "models--moxin-test--tiny-vlm" / "blobs" / f"{sha}.incomplete"
    assert partial.stat().st_size == cut

    tokens, _ = answer(moxin_bin, REPO, env_for(hub, cache), prompt)
    assert tokens == answer(moxin_bin, model_b, {}, prompt)[0]
    assert hub.requests("cdn")[-1][2].get("Range") == f"bytes={cut}-"
    assert not partial.exists()


def test_corrupt_download_is_refused(moxin_bin, model_b, hub, cache, seed):
    files = files_of(model_b)
    hub.add_commit(REPO, files)
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    hub.corrupt(sha)
    out = refusal(moxin_bin, REPO, env_for(hub, cache), random_prompt(seed))
    assert "does not match" in out.stderr and sha in out.stderr, out.stderr
    blobs = cache / "models--moxin-test--tiny-vlm" / "blobs"
    assert not (blobs / sha).exists() and not (blobs / f"{sha}.incomplete").exists()


def test_files_huggingface_hub_downloaded_are_used_offline(moxin_bin, model_a, hub, cache, seed):
    files = files_of(model_a)
    commit = hub.add_commit(REPO, files)
    for name in files:
        huggingface_hub.hf_hub_download(REPO, name, cache_dir=cache, endpoint=hub.url)
    requests = len(hub.log)
    prompt = random_prompt(seed)
    offline = {"HF_ENDPOINT": closed_port_url(), "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    assert answer(moxin_bin, REPO, offline, prompt)[0] == answer(moxin_bin, model_a, {}, prompt)[0]
    assert answer(moxin_bin, f"{REPO}@{commit}", offline, prompt)[0] is not None
    assert len(hub.log) == requests


def test_files_moxin_downloaded_are_found_by_huggingface_hub(moxin_bin, model_a, hub, tmp_path):
    files = files_of(model_a)
    token = "hf_" + secrets.token_hex(8)
    hub.add_commit(REPO, files, revisions=("main", "v2"), token=token)
    # Without HF_HUB_CACHE the cache is HF_HOME/hub, and the token may come from HF_HOME/token
    # (where `hf auth login` stores it).
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(token + "\n")
    run(moxin_bin, "inspect", "--model", f"{REPO}@v2", env={"HF_ENDPOINT": hub.url, "HF_HOME": home})
    cache = home / "hub"
    for name, data in files.items():
        path = huggingface_hub.hf_hub_download(REPO, name, revision="v2", cache_dir=cache, local_files_only=True)
        assert pathlib.Path(path).read_bytes() == data, name


def test_library_loads_an_id(moxin_bin, model_b, hub, cache, tmp_path, seed):
    """The C++ API (examples/caption.cpp: Model::load(argv[1])) with an id answers as with the directory."""
    caption = moxin_bin.parent.parent.parent / "examples" / "caption"
    if not caption.exists():
        pytest.fail(f"{caption} not built (cmake --build build --target caption)")
    hub.add_commit(REPO, files_of(model_b))
    image = tmp_path / "image.png"
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(int(rng.integers(16, 200)), int(rng.integers(16, 200)), 3),
                                 dtype=np.uint8)).save(image)
    question = random_prompt(seed)
    from_dir = run(caption, model_b, image, question, env={})
    from_id = run(caption, REPO, image, question, env=env_for(hub, cache))
    assert from_id.stdout == from_dir.stdout and len(hub.requests("cdn")) == 1


def test_server_serves_an_id(moxin_bin, model_b, hub, cache, monkeypatch, seed):
    from test_server import Server
    hub.add_commit(REPO, files_of(model_b))
    for name, value in env_for(hub, cache).items():
        monkeypatch.setenv(name, str(value))
    prompt = random_prompt(seed)
    server = Server(moxin_bin, REPO)
    try:
        assert server.request("GET", "/v1/models")[1]["data"][0]["id"] == REPO
        status, body = server.request("POST", "/v1/chat/completions", {
            "model": REPO, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0})
        assert status == 200, body
    finally:
        server.stop()
    expected = json.loads(run(moxin_bin, "generate", "--model", model_b, "--prompt", prompt, "--max-tokens", 8,
                              "--temp", 0, "--json", env={}).stdout)["text"]
    assert body["choices"][0]["message"]["content"] == expected


def test_what_counts_as_an_id_follows_huggingface_hub(moxin_bin, tmp_path, seed):
    """Random strings: moxin takes ORG/NAME as an id exactly when huggingface_hub's validate_repo_id
    accepts it (with a namespace); anything else is neither a directory nor an id."""
    rng = random.Random(seed)
    alphabet = "aZ9_-./"
    cases = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))) for _ in range(120)]
    cases += ["a" * rng.randint(94, 98) + "/" + "b" * rng.randint(94, 98) for _ in range(10)]
    cases += ["org/name.git", "org/_x_", "-org/name", "org/name-", "o--rg/x", "org/n..x"]
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": tmp_path / "empty-cache"}
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    for text in (c for c in cases if not (workdir / c).exists()):  # ".", "..": an existing path wins
        try:
            huggingface_hub.utils.validate_repo_id(text)
            expected = text.count("/") == 1
        except huggingface_hub.errors.HFValidationError:
            expected = False
        out = run(moxin_bin, "tokenize", f"--model={text}", "--text", "hi", env=env, check=False, cwd=workdir)
        assert out.returncode == 1, f"{text!r}: {out.stderr}"
        as_id = f"[hub] {text}@main: it is not in the Hugging Face cache" in out.stderr
        as_neither = "does not exist, and it is not a Hugging Face model id either" in out.stderr
        assert (as_id, as_neither) == (expected, not expected), f"{text!r}: {out.stderr}"


def test_tokenize_by_id_fetches_only_the_tokenizer(moxin_bin, model_a, hub, cache, seed):
    hub.add_commit(REPO, files_of(model_a))
    text = random_prompt(seed)
    by_id = run(moxin_bin, "tokenize", "--model", REPO, "--text", text, env=env_for(hub, cache)).stdout
    by_file = run(moxin_bin, "tokenize", "--tokenizer", model_a / "tokenizer.json", "--text", text, env={}).stdout
    assert by_id == by_file
    fetched = {r[1].rsplit("/", 1)[1] for r in hub.requests("resolve") if r[0] == "GET"}
    assert fetched == {"tokenizer.json"} and not hub.requests("cdn")


def test_renamed_repository_is_followed(moxin_bin, model_b, hub, cache, seed):
    """The hub answers a renamed repository's old id with redirects to the new one (relative
    paths on the hub); the files land under the id the user gave, as with huggingface_hub."""
    hub.add_commit("moxin-test/new-name", files_of(model_b))
    hub.renamed[REPO] = "moxin-test/new-name"
    prompt = random_prompt(seed)
    assert answer(moxin_bin, REPO, env_for(hub, cache), prompt)[0] == answer(moxin_bin, model_b, {}, prompt)[0]
    assert (cache / "models--moxin-test--tiny-vlm" / "refs" / "main").exists()
    assert any(r[0] == "HEAD" and r[1].startswith("/moxin-test/new-name/resolve/") for r in hub.log)
    for name, data in files_of(model_b).items():
        path = huggingface_hub.hf_hub_download(REPO, name, cache_dir=cache, local_files_only=True)
        assert pathlib.Path(path).read_bytes() == data, name
