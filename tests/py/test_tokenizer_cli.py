"""`moxin tokenize` command line: the single-shot modes against Hugging Face `tokenizers`, and
clear errors for bad files and bad ids."""
import json
import random
import shutil

import pytest
from tokenizers import Tokenizer as HFTokenizer

from conftest import run_moxin


def test_single_text_and_decode_match_hf(moxin_bin, tokenizer_fixture, tmp_path, seed):
    hf = HFTokenizer.from_file(str(tokenizer_fixture))
    rng = random.Random(seed)
    words = ["Hello", "world", "</s>", "<s>", "日本", "😀", "  ", "\t", "naïve", "<PAD>", "x"]
    text = "".join(rng.choice(words) for _ in range(12))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(tokenizer_fixture, model_dir / "tokenizer.json")

    for source in (["--tokenizer", tokenizer_fixture], ["--model", model_dir]):
        for parse_special in (False, True):
            hf.encode_special_tokens = not parse_special
            for bos in (True, False):
                flags = ([] if bos else ["--no-bos"]) + (["--parse-special"] if parse_special else [])
                out = run_moxin(moxin_bin, "tokenize", *source, "--text", text, *flags).stdout
                assert json.loads(out) == hf.encode(text, add_special_tokens=bos).ids, (text, flags)
    hf.encode_special_tokens = False

    ids = hf.encode(text).ids
    out = run_moxin(moxin_bin, "tokenize", "--tokenizer", tokenizer_fixture, "--decode", json.dumps(ids)).stdout
    assert out == hf.decode(ids) + "\n"
    out = run_moxin(moxin_bin, "tokenize", "--tokenizer", tokenizer_fixture, "--decode", json.dumps(ids),
                    "--keep-special").stdout
    assert out == hf.decode(ids, skip_special_tokens=False) + "\n"
    out = run_moxin(moxin_bin, "tokenize", "--tokenizer", tokenizer_fixture, "--text", "").stdout
    assert json.loads(out) == hf.encode("").ids


def expect_error(moxin_bin, *args, fragment):
    out = run_moxin(moxin_bin, "tokenize", *args, check=False)
    assert out.returncode != 0, f"expected failure for {args}"
    assert fragment in out.stderr, out.stderr


def test_errors(moxin_bin, tokenizer_fixture, tmp_path):
    fixture = str(tokenizer_fixture)
    expect_error(moxin_bin, "--tokenizer", tmp_path / "missing.json", "--text", "x", fragment="file not found")
    expect_error(moxin_bin, "--model", tmp_path, "--text", "x", fragment="file not found")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [')
    expect_error(moxin_bin, "--tokenizer", corrupt, "--text", "x", fragment="is not valid JSON")
    bad_merge = json.loads(tokenizer_fixture.read_text(encoding="utf-8"))
    bad_merge["model"]["merges"].append("▁t zzzunknown")
    bad_merge_path = tmp_path / "bad_merge.json"
    bad_merge_path.write_text(json.dumps(bad_merge), encoding="utf-8")
    expect_error(moxin_bin, "--tokenizer", bad_merge_path, "--text", "x", fragment="zzzunknown")
    expect_error(moxin_bin, "--tokenizer", fixture, "--decode", "[1, 32001]", fragment="cannot decode id 32001")
    expect_error(moxin_bin, "--tokenizer", fixture, "--decode", "[1, -1]", fragment="id -1 is not a token id")
    expect_error(moxin_bin, "--tokenizer", fixture, "--decode", "[1, 2.5]", fragment="is not a token id (an integer in [0, 16777215])")
    expect_error(moxin_bin, "--tokenizer", fixture, "--decode", "[1, 2", fragment="not valid JSON")
    expect_error(moxin_bin, "--tokenizer", fixture, fragment="exactly one of --text, --decode or --jsonl-in")
    expect_error(moxin_bin, "--text", "x", fragment="exactly one of --tokenizer FILE or --model DIR")
    lines = tmp_path / "lines.jsonl"
    lines.write_text('"ok"\n{"not": "a string"}\n')
    expect_error(moxin_bin, "--tokenizer", fixture, "--jsonl-in", lines, fragment="lines.jsonl line 2")
    expect_error(moxin_bin, "--tokenizer", fixture, "--jsonl-in", tmp_path / "none.jsonl", fragment="cannot open")
    invalid_utf8 = tmp_path / "invalid.jsonl"
    invalid_utf8.write_bytes(b'"\xff"\n')
    expect_error(moxin_bin, "--tokenizer", fixture, "--jsonl-in", invalid_utf8, fragment="line 1")


@pytest.mark.parametrize("line,fragment", [("[" * 200_000, "nests deeper than 2 levels"),
                                           ("[" * 2000 + "1" + "]" * 2000, "nests deeper than 2 levels"),
                                           ("[[" + "1," * 100_000 + "1]]", "id an array is not a token id"),
                                           ('"' + "x" * 5_000_000, "is not valid JSON"),
                                           ("[1, " + "9" * 100_000 + "]", "is not valid JSON"),
                                           ("[1, 16777216]", "id 16777216 is not a token id")])
def test_hostile_jsonl_line_gets_a_short_message(moxin_bin, tokenizer_fixture, tmp_path, line, fragment):
    """Deep nesting once overflowed the stack (the message dumped the whole value); huge lines
    must give a message of a few hundred characters, not a copy of the line."""
    lines = tmp_path / "hostile.jsonl"
    lines.write_text('"fine"\n' + line + "\n")
    out = run_moxin(moxin_bin, "tokenize", "--tokenizer", tokenizer_fixture, "--jsonl-in", lines, check=False)
    assert out.returncode == 1, (out.returncode, out.stderr[:500])
    assert "hostile.jsonl line 2" in out.stderr and fragment in out.stderr, out.stderr[:500]
    assert len(out.stderr) < 600, f"{len(out.stderr)} characters: {out.stderr[:300]}..."
