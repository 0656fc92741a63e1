"""The installed `moxin` Python package (pip install .; scripts/test.sh installs it) against the
`moxin` command line and independent references: streamed generations equal `moxin generate
--json` token for token, preprocess arrays equal `moxin preprocess`'s bit for bit for every
image input kind, tokenize/detokenize equal Hugging Face tokenizers, errors arrive as
moxin.Error with the engine's message, and the GIL is released while the engine computes.
"""
import _thread
import base64
import gc
import io
import json
import pathlib
import random
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file
from tokenizers import Tokenizer as HFTokenizer

try:
    import moxin
except ModuleNotFoundError as e:  # fail loudly: a skipped suite would pass unnoticed
    raise ModuleNotFoundError("the moxin Python package is not installed: run `python3 -m pip install "
                              "--no-build-isolation .` at the repository root (scripts/test.sh does)") from e
from conftest import ROOT, fresh_tiny_model, run_moxin
from quant_models import tiny_quant_model

IMAGE_KINDS = ["path", "bytes", "pil", "numpy"]
WORDS = ["cat", "what", "is", "the", "colour", "of", "a", "dog", "describe", "image", "sky", "red", "Ünïcode", "日本"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "python-package")[0]


@pytest.fixture(scope="module")
def model(model_dir):
    return moxin.Model.load(model_dir, threads=2)


def random_rgb(rng, max_side=300):
    h, w = (int(s) for s in rng.integers(1, max_side, size=2))
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def image_as(kind, pixels, png_path):
    """The same pixels as each input kind (png_path holds them as a PNG file)."""
    return {"path": lambda: str(png_path), "bytes": lambda: png_path.read_bytes(),
            "pil": lambda: Image.open(png_path), "numpy": lambda: pixels}[kind]()


def saved_png(pixels, path):
    Image.fromarray(pixels).save(path)
    return path


def random_question(rng):
    return " ".join(rng.choice(WORDS, size=int(rng.integers(1, 8)))) + "?"


def cli_generate(moxin_bin, model_dir, *args):
    return json.loads(run_moxin(moxin_bin, "generate", "--model", model_dir, "--threads", 2, "--json", *args).stdout)


def drain(generation):
    pieces = list(generation)
    assert all(isinstance(p, str) and p for p in pieces), pieces
    return "".join(pieces)


def inputs_that_run_to_length(model, rng, max_tokens):
    """A (question, pixels) whose greedy answer does not end at EOS before max_tokens (random
    weights rarely pick EOS, but a test timing a long generation must not depend on luck), and
    the seconds that answer takes."""
    for _ in range(5):
        question, pixels = random_question(rng), random_rgb(rng)
        start = time.perf_counter()
        generation = model.generate(question, image=pixels, max_tokens=max_tokens, stream=True)
        drain(generation)
        if generation.finish_reason == "length":
            return question, pixels, time.perf_counter() - start
    pytest.fail("five random prompts all ended at EOS early: is the model still random?")


def test_the_installed_wheel_is_under_test_with_its_stubs():
    package = pathlib.Path(moxin.__file__).resolve().parent
    assert ROOT / "python" not in package.parents and package != ROOT / "python" / "moxin", (
        f"moxin imported from the source tree ({package}), not the installed wheel")
    stub = (package / "_core.pyi").read_text()
    for name in ("class Model", "class Generation", "def generate", "def preprocess", "def tokenize"):
        assert name in stub, name
    assert (package / "py.typed").exists()
    assert issubclass(moxin.Error, RuntimeError)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_greedy_stream_equals_cli(moxin_bin, model_dir, model, tmp_path, seed, kind):
    rng = np.random.default_rng(seed)
    pixels = random_rgb(rng)
    png = saved_png(pixels, tmp_path / "image.png")
    question = random_question(rng)
    max_tokens = int(rng.integers(1, 40))
    expected = cli_generate(moxin_bin, model_dir, "--image", png, "--prompt", question, "--max-tokens", max_tokens)

    generation = model.generate(question, image=image_as(kind, pixels, png), max_tokens=max_tokens, stream=True)
    assert generation.finish_reason is None
    assert drain(generation) == expected["text"]
    assert generation.tokens == expected["tokens"]
    assert generation.text == expected["text"]
    assert generation.finish_reason == expected["finish_reason"]
    assert generation.timings["generated_tokens"] == expected["timings"]["generated_tokens"]
    assert generation.timings["prompt_tokens"] == expected["timings"]["prompt_tokens"]
    # The whole-text form gives the same answer.
    assert model.generate(question, image=image_as(kind, pixels, png), max_tokens=max_tokens) == expected["text"]


def test_seeded_sampling_stream_equals_cli(moxin_bin, model_dir, model, tmp_path, seed):
    rng = np.random.default_rng(seed)
    for trial in range(3):
        pixels = random_rgb(rng)
        png = saved_png(pixels, tmp_path / f"image{trial}.png")
        question = random_question(rng)
        options = {"max_tokens": int(rng.integers(1, 40)), "temperature": float(rng.uniform(0.3, 1.5)),
                   "top_k": int(rng.integers(0, 50)), "top_p": float(rng.uniform(0.5, 1.0)),
                   "min_p": float(rng.uniform(0.0, 0.1)), "repetition_penalty": float(rng.uniform(1.0, 1.3)),
                   "seed": int(rng.integers(0, 2**63)), "stop": [str(rng.choice(WORDS))]}
        expected = cli_generate(
            moxin_bin, model_dir, "--image", png, "--prompt", question, "--max-tokens", options["max_tokens"],
            "--temp", repr(options["temperature"]), "--top-k", options["top_k"], "--top-p", repr(options["top_p"]),
            "--min-p", repr(options["min_p"]), "--repetition-penalty", repr(options["repetition_penalty"]),
            "--seed", options["seed"], "--stop", options["stop"][0])
        generation = model.generate(question, image=pixels, stream=True, **options)
        assert drain(generation) == expected["text"], options
        assert generation.tokens == expected["tokens"], options
        assert generation.finish_reason == expected["finish_reason"], options


def test_chat_equals_cli_conversation(moxin_bin, model_dir, model, tmp_path, seed):
    rng = np.random.default_rng(seed)
    pixels = random_rgb(rng)
    png = saved_png(pixels, tmp_path / "image.png")
    system, q1, a1, q2 = (random_question(rng) for _ in range(4))
    expected = cli_generate(moxin_bin, model_dir, "--image", png, "--prompt", f"{system}\n\n{q1}", "--answer", a1,
                            "--prompt", q2, "--max-tokens", 24)
    data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    for image_part in ({"type": "image_url", "image_url": {"url": data_url}}, {"type": "image", "image": pixels}):
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": [image_part, {"type": "text", "text": q1}]},
                    {"role": "assistant", "content": a1},
                    {"role": "user", "content": q2}]
        generation = model.chat(messages, max_tokens=24, stream=True)
        assert drain(generation) == expected["text"]
        assert generation.tokens == expected["tokens"]
        assert model.chat(messages, max_tokens=24) == expected["text"]


@pytest.fixture(scope="module")
def quantizable_model_dir(tmp_path_factory):
    """The tiny model with its MLP widened to a multiple of the quantization groups."""
    return tiny_quant_model(tmp_path_factory, "python-package-quant", bigram=False)[0]


def test_quantized_load_equals_cli(moxin_bin, quantizable_model_dir, tmp_path, seed):
    model_dir = quantizable_model_dir
    rng = np.random.default_rng(seed)
    bits, group = int(rng.choice([4, 8])), int(rng.choice([64, 128]))
    pixels = random_rgb(rng)
    question = random_question(rng)
    expected = cli_generate(moxin_bin, model_dir, "--quantize", bits, "--group-size", group, "--prompt", question,
                            "--image", saved_png(pixels, tmp_path / "image.png"), "--max-tokens", 20)
    quantized = moxin.Model.load(model_dir, quantize=bits, group_size=group, threads=2)
    generation = quantized.generate(question, image=pixels, max_tokens=20, stream=True)
    assert drain(generation) == expected["text"], (bits, group)
    assert generation.tokens == expected["tokens"], (bits, group)


def test_fp8_load_and_fp8_kv_cache_equal_cli(moxin_bin, quantizable_model_dir, tmp_path, seed):
    """quantize="fp8" and kv_cache="fp8" reach the engine as --quantize fp8 / --kv-cache fp8 do."""
    rng = np.random.default_rng(seed)
    pixels = random_rgb(rng)
    question = random_question(rng)
    image = saved_png(pixels, tmp_path / "image.png")
    for load_args, cli_args in (({"kv_cache": "fp8"}, ("--kv-cache", "fp8")),
                                ({"quantize": "fp8", "kv_cache": "fp8"}, ("--quantize", "fp8", "--kv-cache", "fp8"))):
        expected = cli_generate(moxin_bin, quantizable_model_dir, *cli_args, "--prompt", question, "--image", image,
                                "--max-tokens", 20)
        loaded = moxin.Model.load(quantizable_model_dir, threads=2, **load_args)
        generation = loaded.generate(question, image=pixels, max_tokens=20, stream=True)
        assert drain(generation) == expected["text"], load_args
        assert generation.tokens == expected["tokens"], load_args


def test_text_only_and_dropped_streams(moxin_bin, model_dir, model, seed):
    rng = np.random.default_rng(seed)
    question = random_question(rng)
    expected = cli_generate(moxin_bin, model_dir, "--prompt", question, "--max-tokens", 30)
    # Streams dropped half-way free their place in the engine: later answers are unaffected.
    for _ in range(3):
        generation = model.generate(random_question(rng), image=random_rgb(rng), max_tokens=30, stream=True)
        next(generation, None)
        del generation
    assert model.generate(question, max_tokens=30) == expected["text"]


def test_a_stream_keeps_its_model_alive(model_dir, model, seed):
    rng = np.random.default_rng(seed)
    question, pixels = random_question(rng), random_rgb(rng)
    expected = model.generate(question, image=pixels, max_tokens=12)
    generation = moxin.Model.load(model_dir, threads=2).generate(question, image=pixels, max_tokens=12, stream=True)
    gc.collect()  # the only reference to that model is the stream's
    assert drain(generation) == expected


def test_threads_generating_at_once_get_their_own_answers(model, seed):
    rng = np.random.default_rng(seed)
    requests = [(random_question(rng), random_rgb(rng), int(rng.integers(0, 2**32))) for _ in range(4)]
    alone = [model.generate(q, image=im, temperature=1.0, seed=s, max_tokens=20) for q, im, s in requests]
    together = [None] * len(requests)

    def run(i):
        q, im, s = requests[i]
        together[i] = model.generate(q, image=im, temperature=1.0, seed=s, max_tokens=20)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_preprocess_equals_cli_bit_for_bit(moxin_bin, tmp_path, seed, kind):
    rng = np.random.default_rng(seed)
    pixels = random_rgb(rng, max_side=700)
    source = tmp_path / "image.png"
    if kind in ("path", "bytes", "pil"):  # an encoded photograph-like file: a JPEG of the pixels
        source = tmp_path / "image.jpg"
        Image.fromarray(pixels).save(source, quality=int(rng.integers(30, 100)))
    else:
        saved_png(pixels, source)
    size = int(rng.choice([224, int(rng.integers(1, 400))]))
    run_moxin(moxin_bin, "preprocess", "--image", source, "--out", tmp_path / "cli.safetensors", "--size", size)
    expected = load_file(str(tmp_path / "cli.safetensors"))

    got = moxin.preprocess(image_as(kind, pixels, source), size=size)
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


def test_tokenize_and_detokenize_equal_hf_tokenizers(model_dir, model, seed):
    hf = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
    hf.encode_special_tokens = True  # the engine tokenizes user text literally ("</s>" is text)
    rng = random.Random(seed)
    text = "".join(rng.choice(WORDS + ["</s>", " ", "\n", "😀"]) for _ in range(20))
    for bos in (True, False):
        assert model.tokenize(text, add_bos=bos) == hf.encode(text, add_special_tokens=bos).ids
    ids = hf.encode(text).ids
    assert model.detokenize(ids) == hf.decode(ids)


def expect_error(fragment, call, *args, **kwargs):
    with pytest.raises(moxin.Error) as info:
        call(*args, **kwargs)
    assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_errors_are_moxin_errors_with_the_engines_message(moxin_bin, model_dir, model, tmp_path, seed):
    rng = np.random.default_rng(seed)
    # A missing model: the same message as the command line's.
    missing = tmp_path / "no-such-model"
    message = expect_error(str(missing), moxin.Model.load, missing)
    cli = run_moxin(moxin_bin, "generate", "--model", missing, "--prompt", "x", check=False)
    assert cli.returncode != 0 and message in cli.stderr, (message, cli.stderr)
    expect_error("config.json not found", moxin.Model.load, tmp_path)  # a directory without a checkpoint

    # Corrupt images: truncated and random-byte files, through generate, chat and preprocess.
    png = io.BytesIO()
    Image.fromarray(random_rgb(rng)).save(png, "PNG")
    truncated = png.getvalue()[: int(rng.integers(20, len(png.getvalue()) - 1))]
    noise = rng.integers(0, 256, size=int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
    for corrupt in (truncated, noise):
        expect_error("[image]", model.generate, "x", image=corrupt)
        expect_error("[image]", moxin.preprocess, corrupt)
        expect_error("[image]", model.chat, [{"role": "user", "content": [{"type": "image", "image": corrupt}]}])
    expect_error("cannot open", moxin.preprocess, tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    expect_error("empty", model.generate, "x", image=tmp_path / "empty.png")
    expect_error("empty", model.generate, "x", image=b"")
    expect_error("HxWx3 uint8", moxin.preprocess, np.zeros((4, 4, 3), dtype=np.float32))
    expect_error("HxWx3 uint8", moxin.preprocess, np.zeros((4, 4), dtype=np.uint8))
    expect_error("empty", moxin.preprocess, np.zeros((0, 4, 3), dtype=np.uint8))
    expect_error("size", moxin.preprocess, np.zeros((4, 4, 3), dtype=np.uint8), size=0)
    with pytest.raises(TypeError):
        moxin.preprocess(12345)

    # Absurd parameters.
    expect_error("max_tokens", model.generate, "x", max_tokens=-1)
    expect_error("temperature", model.generate, "x", temperature=-1.0)
    expect_error("top_p", model.generate, "x", top_p=1.5)
    expect_error("stop", model.generate, "x", stop=[""])
    expect_error("quantize", moxin.Model.load, model_dir, quantize=3)
    expect_error("kv_cache", moxin.Model.load, model_dir, kv_cache="int8")
    expect_error("device", moxin.Model.load, model_dir, device="tpu")
    expect_error("threads", moxin.Model.load, model_dir, threads=-2)
    expect_error("max_context", moxin.Model.load, model_dir, max_context=0)
    expect_error("max_context", moxin.Model.load, model_dir, max_context=2**40)
    expect_error("max_image_pixels", moxin.Model.load, model_dir, max_image_pixels=0)
    expect_error("group size", moxin.Model.load, model_dir, quantize=8, group_size=3)
    expect_error("top_k", model.generate, "x", top_k=-1)
    expect_error("seed", model.generate, "x", seed=-1)
    expect_error("max_tokens", model.generate, "x", max_tokens=2**40)
    expect_error("temperature", model.generate, "x", temperature=float("nan"))
    expect_error("cannot decode id -1", model.detokenize, [1, -1])
    expect_error("cannot decode id 1000000", model.detokenize, [1000000])
    # Chat messages that do not make a conversation.
    expect_error("last message", model.chat, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    expect_error("alternate", model.chat, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    expect_error("data: URL", model.chat,
                 [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    expect_error("one image", model.chat, [{"role": "user", "content": [
        {"type": "image", "image": truncated}, {"type": "image", "image": truncated}]}])
    # The model still answers after all of that.
    assert isinstance(model.generate("x", max_tokens=2), str)


def test_the_gil_is_released_while_the_engine_computes(model_dir, seed):
    """A heartbeat thread (pure Python, so it needs the GIL) keeps beating during a long
    generation: without the GIL released, its longest pause would span the whole generation."""
    rng = np.random.default_rng(seed)
    slow = moxin.Model.load(model_dir, threads=1)
    question, pixels, _ = inputs_that_run_to_length(slow, rng, 200)
    beats = []
    stop = threading.Event()

    def heartbeat():
        while not stop.is_set():
            beats.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=heartbeat)
    thread.start()
    try:
        for stream in (False, True):
            start = time.perf_counter()
            result = slow.generate(question, image=pixels, max_tokens=200, stream=stream)
            if stream:
                drain(result)
            end = time.perf_counter()
            during = [b for b in beats if start <= b <= end]
            gaps = np.diff([start, *during, end])
            assert gaps.max() < (end - start) / 2, (
                f"heartbeat paused {gaps.max():.3f} s of a {end - start:.3f} s generation ({len(during)} beats)")
            assert len(during) >= 10, f"only {len(during)} heartbeats in a {end - start:.3f} s generation"
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def python_handles_sigint():
    """Python's own SIGINT handler for the test: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, Python then installs no handler, and
    _thread.interrupt_main() does nothing (a CI run started with `&` failed so)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_a_generation_between_steps(model_dir, seed, python_handles_sigint):
    """KeyboardInterrupt arrives at the next decode step, not after the whole generation."""
    rng = np.random.default_rng(seed)
    slow = moxin.Model.load(model_dir, threads=1)
    question, pixels, uninterrupted = inputs_that_run_to_length(slow, rng, 300)

    timer = threading.Timer(uninterrupted / 10, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        slow.generate(question, image=pixels, max_tokens=300)
    interrupted = time.perf_counter() - start
    timer.join()
    assert interrupted < uninterrupted / 2, f"interrupted after {interrupted:.3f} s of {uninterrupted:.3f} s"
