"""`moxin tokenize` against Hugging Face `tokenizers`, id for id and text for text.

A corpus of several thousand strings is drawn from the seed (many scripts, emoji with ZWJ and
skin tones, whitespace runs, control characters, code, digits, random code points, very long
strings, literal special tokens) and run through our batch mode and through
`tokenizers.Tokenizer` in all four combinations of BOS and parse-special. Decoding (batch and
streaming, skipping special tokens or not) is compared on the encodings and on random id
sequences rich in byte-fallback pieces. The same is done for variants of the real
tokenizer.json: the Metaspace forms, pair merges, ignore_merges, extra added tokens, and a model
without byte fallback.
"""
import copy
import json
import random
import time

import pytest
from tokenizers import Tokenizer as HFTokenizer

from conftest import run_moxin

SPECIAL_LITERALS = ["<s>", "</s>", "<PAD>", "<unk>"]
# Non-special added tokens some variants add (they must match in both parse-special modes).
EXTRA_LITERALS = ["zq", "[X]", "<tool>", "<|im_end|>", "foo"]

SCRIPT_SAMPLES = [
    "The quick brown fox jumps over the lazy dog.", "Où est la bibliothèque ? Ça va très bien.",
    "Größe, Übung und Straße", "Съешь же ещё этих мягких французских булок", "Καλημέρα κόσμε",
    "مرحبا بالعالم، كيف حالك؟", "שלום עולם", "नमस्ते दुनिया, आप कैसे हैं?", "আমি বাংলায় গান গাই",
    "வணக்கம் உலகம்", "สวัสดีชาวโลก", "你好，世界！今天天气很好。", "こんにちは世界、カタカナとひらがな",
    "안녕하세요 세계", "Xin chào thế giới", "Բարեւ աշխարհ", "გამარჯობა მსოფლიო", "ሰላም ልዑል",
    "ᠮᠣᠩᠭᠣᠯ", "བཀྲ་ཤིས་བདེ་ལེགས", "ಕನ್ನಡ ತೆಲುಗು తెలుగు", "ꯃꯤꯇꯩ", "ᏣᎳᎩ", "𐌰𐌱𐌲 Gothic",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "e\u0301 vs \u00e9, ﬁ ligature, Ⅻ, ①", "mixed 漢字 and Latin ünïcödé",
]
EMOJI = ["😀", "👍", "🏽", "❤️", "🇫🇷", "🇯🇵", "👨‍👩‍👧‍👦", "🧑🏿‍🚀", "👩🏻‍💻", "🏳️‍🌈", "1️⃣", "#️⃣",
         "🫠", "🦀", "👍🏻", "👍🏼", "👍🏾", "👍🏿", "😶‍🌫️", "🐈‍⬛", "✌🏽", "🤌"]
WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2009",
              "\u200b", "\u2028", " \t \n ", "\f", "\v"]
CODE = ['def f(x):\n    return x ** 2  # square\n', 'for (int i = 0; i < n; ++i) { a[i] = b[i]; }',
        '{"key": [1, 2.5, null, true], "s": "a\\"b"}', '<div class="x">&amp; &lt;tag&gt;</div>',
        'SELECT * FROM t WHERE id IN (1,2,3);', '$ ls -la | grep "*.cpp" > out.txt 2>&1',
        'fn main() -> Result<(), Box<dyn Error>> { Ok(()) }', '\\begin{equation} e^{i\\pi}+1=0 \\end{equation}']


def random_code_point(rng):
    while True:
        plane = rng.choice([0, 0, 0, 1, 2, 14, 15, 16])
        cp = plane * 0x10000 + rng.randrange(0x10000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def random_fragment(rng):
    kind = rng.randrange(11)
    if kind == 0:
        s = rng.choice(SCRIPT_SAMPLES)
        a = rng.randrange(len(s))
        return s[a:a + rng.randrange(1, 40)]
    if kind == 1:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randrange(1, 5)))
    if kind == 2:
        return rng.choice(WHITESPACE) * rng.randrange(1, 4)
    if kind == 3:
        return "".join(chr(rng.choice(list(range(0x20)) + [0x7F] + list(range(0x80, 0xA0))))
                       for _ in range(rng.randrange(1, 4)))
    if kind == 4:
        return str(rng.randrange(10 ** rng.randrange(1, 12))) + rng.choice(["", ".", ",", "%", "e-3"])
    if kind == 5:
        s = rng.choice(CODE)
        return s[rng.randrange(len(s)):]
    if kind == 6:
        return "".join(random_code_point(rng) for _ in range(rng.randrange(1, 6)))
    if kind == 7:
        lit = rng.choice(SPECIAL_LITERALS + EXTRA_LITERALS)
        return rng.choice([lit, lit[:-1], lit[1:], " " + lit, lit + " ", lit * 2, "<" + lit + ">"])
    if kind == 8:
        return rng.choice(["a", "b", "the", "▁", "▁▁", "_", "<0x41>", "ab", "hello", "HELLO", "don't"])
    if kind == 9:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(rng.randrange(1, 30)))
    return rng.choice(SCRIPT_SAMPLES)


def make_corpus(seed, count=3000):
    rng = random.Random(seed)
    corpus = ["", " ", "  ", "\n", "\t", "a", "▁", "Hello world", " Hello", "Hello ", "\x00", "\ufffd",
              "\ufeffBOM", *SPECIAL_LITERALS, *EXTRA_LITERALS, "<s>In: What?\nOut:", "a</s>b<s>c<PAD>d",
              "In: describe</s>In: more\nOut:"]
    while len(corpus) < count:
        corpus.append("".join(random_fragment(rng) for _ in range(rng.randrange(1, 8))))
    for length in (5_000, 30_000, 100_000):  # long inputs: one BPE word in the legacy form
        parts, total = [], 0
        while total < length:
            parts.append(random_fragment(rng))
            total += len(parts[-1])
        corpus.append("".join(parts)[:length])
    corpus.append("a" * 50_000)
    corpus.append(" " * 20_000 + "x")
    return corpus


def random_id_sequences(rng, vocab_size, count=1500):
    """Id sequences rich in byte pieces (ids 3..258), split multi-byte characters included."""
    seqs = []
    for _ in range(count):
        seq = []
        for _ in range(rng.randrange(0, 30)):
            kind = rng.randrange(6)
            if kind == 0:
                seq.append(rng.randrange(vocab_size))
            elif kind == 1:
                seq.append(rng.choice([0, 1, 2, vocab_size - 1, 28705, 259]))  # specials, "▁", "▁▁"
            elif kind == 2:  # a whole character as byte pieces
                seq.extend(3 + b for b in random_code_point(rng).encode("utf-8"))
            elif kind == 3:  # a partial character
                seq.extend(3 + b for b in random_code_point(rng).encode("utf-8")[:rng.randrange(1, 4)])
            else:
                seq.append(3 + rng.randrange(256))
        seqs.append(seq)
    return seqs


# --- tokenizer.json variants -----------------------------------------------------------------

METASPACE_DECODER_CHAIN = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def metaspace(scheme, split):
    return {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split}


def pair_merges(d):
    d["model"]["merges"] = [m.split(" ") for m in d["model"]["merges"]]


def add_tokens(d, tokens):
    """Appends added tokens with the ids HF gives them (model id, else the next free one)."""
    vocab = d["model"]["vocab"]
    next_id = max(t["id"] for t in d["added_tokens"]) + 1
    for content, special, normalized, lstrip, rstrip in tokens:
        if content in vocab:
            token_id = vocab[content]
        else:
            token_id, next_id = next_id, next_id + 1
        d["added_tokens"].append({"id": token_id, "content": content, "single_word": False, "lstrip": lstrip,
                                  "rstrip": rstrip, "normalized": normalized, "special": special})


def variant_legacy(d):
    return d


def variant_metaspace_first(d):
    # The form of newer Llama/Mistral conversions (legacy=False).
    d["normalizer"] = None
    d["pre_tokenizer"] = metaspace("first", False)
    d["decoder"] = METASPACE_DECODER_CHAIN
    return d


def variant_metaspace_always_split(d):
    d["normalizer"] = None
    d["pre_tokenizer"] = metaspace("always", True)
    d["decoder"] = metaspace("always", True)
    pair_merges(d)
    d["model"]["ignore_merges"] = True
    return d


def variant_old_metaspace(d):
    # Pre-0.19 files: add_prefix_space instead of prepend_scheme; decoder without Fuse.
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}]}
    return d


def variant_never_split(d):
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [metaspace("never", True)]}
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, metaspace("never", True), {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 2, "stop": 1}]}
    return d


def variant_fuse_first(d):
    # Steps after Fuse see one growing piece: a two-character pattern may span pieces, and the
    # fused text is a byte piece only when it is exactly "<0xHH>".
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Fuse"}, {"type": "Replace", "pattern": {"String": "▁▁"}, "content": "="},
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return d


def variant_added_tokens(d):
    add_tokens(d, [("zq", False, True, False, False), ("[X]", False, False, False, False),
                   ("<tool>", False, False, True, True), ("<|im_end|>", True, False, False, True),
                   ("foo", False, True, False, False)])
    return d


def variant_added_tokens_metaspace(d):
    return variant_added_tokens(variant_metaspace_first(d))


def variant_unk_fused(d):
    d["model"]["byte_fallback"] = False
    d["model"]["fuse_unk"] = True
    return d


def variant_unk_unfused(d):
    d["model"]["byte_fallback"] = False
    d["model"]["fuse_unk"] = False
    d["decoder"] = None  # HF then joins the pieces with spaces
    return d


VARIANTS = {f.__name__[len("variant_"):]: f for f in [
    variant_legacy, variant_metaspace_first, variant_metaspace_always_split, variant_old_metaspace,
    variant_never_split, variant_fuse_first, variant_added_tokens, variant_added_tokens_metaspace, variant_unk_fused,
    variant_unk_unfused]}


@pytest.fixture(scope="module")
def fixture_json(tokenizer_fixture):
    with open(tokenizer_fixture, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path, items):
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")


def moxin_batch(moxin_bin, tokenizer_path, items, tmp_path, *flags):
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, items)
    out = run_moxin(moxin_bin, "tokenize", "--tokenizer", tokenizer_path, "--jsonl-in", inp, *flags).stdout
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) == len(items) + 1, f"expected {len(items)} output lines"
    return [json.loads(line) for line in lines[:-1]]


def assert_same(ours, theirs, inputs, what):
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    report = "\n".join(f"  input {inputs[i]!r:.200}\n    ours {ours[i]!r:.300}\n    HF   {theirs[i]!r:.300}"
                       for i in bad[:5])
    assert not bad, f"{what}: {len(bad)} of {len(inputs)} differ, e.g.\n{report}"


def hf_decode(hf, sequences, skip_special):
    """HF decode of each sequence; None where HF panics (Strip with stop > 0 on empty text)."""
    try:
        return hf.decode_batch(sequences, skip_special_tokens=skip_special)
    except BaseException:  # pyo3's PanicException derives from BaseException
        pass
    out = []
    for seq in sequences:
        try:
            out.append(hf.decode(seq, skip_special_tokens=skip_special))
        except BaseException:
            out.append(None)
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_hf_tokenizers(variant, moxin_bin, fixture_json, tmp_path, seed):
    data = VARIANTS[variant](copy.deepcopy(fixture_json))
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    hf = HFTokenizer.from_file(str(path))
    for token in data["added_tokens"]:  # the variant file is consistent with HF's id assignment
        assert hf.token_to_id(token["content"]) == token["id"]

    corpus = make_corpus(seed)
    rng = random.Random(seed + 1)
    compared = 0
    started = time.perf_counter()
    for parse_special in (False, True):
        hf.encode_special_tokens = not parse_special
        for bos in (True, False):
            flags = ([] if bos else ["--no-bos"]) + (["--parse-special"] if parse_special else [])
            expected = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=bos)]
            ours = moxin_batch(moxin_bin, path, corpus, tmp_path, *flags)
            assert_same(ours, expected, corpus, f"encode {variant} bos={bos} parse_special={parse_special}")
            compared += len(corpus)
    hf.encode_special_tokens = False

    encodings = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=True)]
    sequences = encodings + random_id_sequences(rng, hf.get_vocab_size(True))
    for keep_special in (False, True):
        expected = hf_decode(hf, sequences, skip_special=not keep_special)
        sequences = [s for s, e in zip(sequences, expected) if e is not None]
        expected = [e for e in expected if e is not None]
        for stream in (False, True):
            flags = (["--keep-special"] if keep_special else []) + (["--stream"] if stream else [])
            ours = moxin_batch(moxin_bin, path, sequences, tmp_path, *flags)
            assert_same(ours, expected, sequences, f"decode {variant} keep_special={keep_special} stream={stream}")
            compared += len(sequences)
    print(f"[tokenizer] {variant}: {compared} encodings/decodings identical to HF "
          f"({len(corpus)} strings, {len(sequences)} id sequences) in {time.perf_counter() - started:.1f} s")
