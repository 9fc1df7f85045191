"""data/train_tokenizer.py and the bpe tokenizer: deterministic training, exact round trips, special
tokens kept out of encoded text, self-contained meta, and a bpe data set through train.py and sample.py.

Run: python -m pytest tests/data/test_train_tokenizer.py -q   (a few seconds; one play, vocab 512)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from conftest import SAMPLE_TEXT, run_script

import sample
import train
from data import train_tokenizer as tt
from data.dataset import load_meta
from data.prepare import prepare, read_document, shakespeare_files
from data.tokenizer import CHAT_SPECIAL_TOKENS, BPETokenizer, load_tokenizer
from errors import UserError, run_cli
from run_dir import load_run

VOCAB = 512
SPECIAL_IDS = {t: i for i, t in enumerate(CHAT_SPECIAL_TOKENS)}  # documented: ids 0..k-1 in order

TEXTS = {
    "shakespeare": SAMPLE_TEXT + "HAMLET. To be, or not to be: that is the question:--\n",
    "accents": "naïve café, Straße, Ελληνικά, déjà vu, Ångström",
    "emoji": "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇫🇷 and a lone ZWJ \u200d",
    "cjk": "日本語のテキスト、中文文本，한국어 텍스트",
    "whitespace": "  leading\t\ttabs   and runs      \n\n\n   \r\n\rtrailing   ",
    "newlines": "\n\n\n",
    "empty": "",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One play (Hamlet, ~180 kB), or a repeated excerpt without the Shakespeare package."""
    try:
        return next(f for f in shakespeare_files() if f.name == "hamlet_gut.txt")
    except Exception:
        path = tmp_path_factory.mktemp("text") / "excerpt.txt"
        path.write_text(SAMPLE_TEXT * 400, encoding="utf-8")
        return path


@pytest.fixture(scope="module")
def tok_file(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tt.main(["--input", str(corpus), "--vocab_size", str(VOCAB), "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def tok(tok_file) -> BPETokenizer:
    return BPETokenizer.from_file(tok_file)


# ----------------------------------------------------------------------------- training

def test_training_is_deterministic_and_reports_compression(corpus, tok_file, tmp_path, capsys):
    again = tmp_path / "again.json"
    stats = tt.main(["--input", str(corpus), "--vocab_size", str(VOCAB), "--out", str(again)])
    assert again.read_bytes() == tok_file.read_bytes()
    other = tt.main(["--input", str(corpus), "--vocab_size", str(VOCAB + 64), "--out", str(tmp_path / "o.json")])
    assert (tmp_path / "o.json").read_bytes() != tok_file.read_bytes() and other["vocab_size"] == VOCAB + 64

    text = read_document(corpus)
    tok = BPETokenizer.from_file(again)
    n_tokens = len(tok.encode(text))
    assert stats == {"out": str(again), "vocab_size": VOCAB, "special_tokens": SPECIAL_IDS, "files": 1,
                     "bytes": len(text.encode("utf-8")), "tokens": n_tokens,
                     "bytes_per_token": len(text.encode("utf-8")) / n_tokens}
    assert 1.5 < stats["bytes_per_token"] < other["bytes_per_token"]  # merges compress; more merges, more so
    assert f"vocab {VOCAB} (5 special tokens), {stats['bytes_per_token']:.2f} bytes per token" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_tokenizer_structure(tok_file, tok):
    spec = json.loads(tok_file.read_text(encoding="utf-8"))
    assert spec["model"]["type"] == "BPE" and spec["pre_tokenizer"]["type"] == "ByteLevel"
    assert spec["decoder"]["type"] == "ByteLevel" and spec["pre_tokenizer"]["add_prefix_space"] is False
    assert spec["model"]["unk_token"] is None
    assert [t["content"] for t in spec["added_tokens"]] == list(CHAT_SPECIAL_TOKENS)
    assert tok.vocab_size == VOCAB and tok.special_tokens == SPECIAL_IDS
    assert tok.eot_token == SPECIAL_IDS["<|endoftext|>"] == 0
    # the 256 byte symbols take the ids right after the special tokens, so every byte has a token
    byte_ids = sorted(spec["model"]["vocab"][c] for c in tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert byte_ids == list(range(len(CHAT_SPECIAL_TOKENS), len(CHAT_SPECIAL_TOKENS) + 256))
    assert len(spec["model"]["vocab"]) == VOCAB and len(spec["model"]["merges"]) == VOCAB - 256 - 5


def test_custom_special_tokens(corpus, tmp_path):
    stats = tt.main(["--input", str(corpus), "--vocab_size", "300", "--out", str(tmp_path / "t.json"),
                     "--special_tokens", "<|endoftext|>", "<|pad|>"])
    tok = BPETokenizer.from_file(tmp_path / "t.json")
    assert stats["special_tokens"] == tok.special_tokens == {"<|endoftext|>": 0, "<|pad|>": 1}
    none = tt.main(["--input", str(corpus), "--vocab_size", "300", "--out", str(tmp_path / "n.json"),
                    "--special_tokens"])
    assert none["special_tokens"] == {} and BPETokenizer.from_file(tmp_path / "n.json").eot_token is None


@pytest.mark.parametrize("flags, message", [
    (["--vocab_size", "261"], "--vocab_size 261 is too small: it must exceed 256 byte tokens + 5 special tokens "
                              "= 261; pass a larger --vocab_size (e.g. 8192)"),
    (["--vocab_size", "300", "--special_tokens", "<|a|>", "<|a|>"],
     "--special_tokens must be distinct non-empty strings, got ['<|a|>', '<|a|>']"),
    (["--vocab_size", "300", "--min_frequency", "0"], "--min_frequency must be at least 1, got 0"),
])
def test_training_setting_errors(corpus, tmp_path, flags, message):
    with pytest.raises(UserError) as e:
        tt.main(["--input", str(corpus), "--out", str(tmp_path / "t.json"), *flags])
    assert str(e.value) == message
    assert not (tmp_path / "t.json").exists()


def test_training_input_errors(tmp_path, capsys):
    (tmp_path / "bad.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("")
    out = ["--vocab_size", "300", "--out", str(tmp_path / "t.json")]
    assert run_cli(tt.main, ["--input", str(tmp_path / "nope.txt"), *out]) == 2
    assert run_cli(tt.main, ["--input", str(tmp_path / "bad.txt"), *out]) == 2
    assert run_cli(tt.main, ["--input", str(tmp_path / "empty.txt"), *out]) == 2
    assert run_cli(tt.main, ["--input", str(tmp_path / "empty.txt"), "--vocab_size", "300", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" ", 1)[0] for line in err] == ["error:"] * 4  # one line each
    assert "nope.txt not found" in err[0] and "bad.txt is not valid UTF-8" in err[1]
    assert "are empty" in err[2] and "is a folder" in err[3]


@pytest.mark.slow
def test_script_in_a_fresh_process_writes_the_same_file(corpus, tok_file, tmp_path):
    """Another process (other hash seeds in tokenizers' Rust HashMaps) trains the same bytes."""
    out = tmp_path / "sub.json"
    run = run_script("data/train_tokenizer.py", "--input", str(corpus), "--vocab_size", str(VOCAB), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == tok_file.read_bytes()


# ----------------------------------------------------------------------------- the bpe tokenizer

@pytest.mark.parametrize("name", list(TEXTS))
def test_round_trip(tok, name):
    text = TEXTS[name]
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert not set(ids) & set(SPECIAL_IDS.values())
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=np.uint16)) == text  # as read back from a .bin


def test_round_trip_of_a_whole_play(tok, corpus):
    text = read_document(corpus)
    assert tok.decode(tok.encode(text)) == text


def test_special_token_strings_in_text_stay_text(tok):
    for s, i in SPECIAL_IDS.items():
        text = f"user typed {s} here{s}"
        ids = tok.encode(text)
        assert i not in ids and not set(ids) & set(SPECIAL_IDS.values())
        assert tok.decode(ids) == text
        assert tok.encode(s) != [i] and len(tok.encode(s)) > 1
        assert tok.decode([i]) == s  # placed by code, a special id decodes to its string


def test_special_ids_decode_between_text(tok):
    ids = tok.encode("first") + [tok.eot_token] + tok.encode("second") + [SPECIAL_IDS["<|user|>"]]
    assert tok.decode(ids) == "first<|endoftext|>second<|user|>"


def test_meta_is_self_contained(tok, tok_file, tmp_path):
    moved = tmp_path / "t.json"
    shutil.copy(tok_file, moved)
    meta = BPETokenizer.from_file(moved).meta()
    moved.unlink()  # the meta alone rebuilds the tokenizer
    assert set(meta) == {"tokenizer", "tokenizer_json"} and meta["tokenizer"] == "bpe"
    assert json.loads(meta["tokenizer_json"]) == json.loads(tok_file.read_text(encoding="utf-8"))
    rebuilt = load_tokenizer(json.loads(json.dumps(meta)))
    assert isinstance(rebuilt, BPETokenizer)
    assert (rebuilt.vocab_size, rebuilt.eot_token, rebuilt.special_tokens) == (tok.vocab_size, tok.eot_token,
                                                                              tok.special_tokens)
    for text in TEXTS.values():
        assert rebuilt.encode(text) == tok.encode(text)
    assert rebuilt.meta() == meta


def test_decode_rejects_ids_outside_the_vocabulary(tok):
    with pytest.raises(UserError, match=r"token ids outside the bpe vocabulary \(0\.\.511\)"):
        tok.decode([1, VOCAB])
    with pytest.raises(UserError, match="outside the bpe vocabulary"):
        tok.decode([-1])


def test_a_partial_utf8_sequence_decodes_to_the_replacement_character(tok):
    ids = tok.encode("🙂")  # 4 bytes; at vocab 512 split into several tokens
    assert len(ids) > 1 and tok.decode(ids[:1]) == "\ufffd"


@pytest.mark.parametrize("content, match", [
    ("not json", r"tokenizer file .*t\.json is not a valid tokenizers JSON \(.*\); train one with: "
                 r"python data/train_tokenizer.py"),
    ("{}", "is not a valid tokenizers JSON"),
    (None, r"tokenizer file .*t\.json not found; train one with"),
])
def test_tokenizer_file_errors(tmp_path, content, match):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=match):
        BPETokenizer.from_file(path)


def test_a_non_bpe_tokenizer_file_is_refused(tmp_path):
    wordpiece = tokenizers.Tokenizer(tokenizers.models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    (tmp_path / "wp.json").write_text(wordpiece.to_str())
    with pytest.raises(UserError, match=r"holds a WordPiece tokenizer, not a BPE"):
        BPETokenizer.from_file(tmp_path / "wp.json")
    with pytest.raises(UserError, match="no 'tokenizer_json' string"):
        load_tokenizer({"tokenizer": "bpe"})


# ----------------------------------------------------------------------------- train.py and sample.py

@pytest.fixture(scope="module")
def bpe_run(corpus, tok_file, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bpe_run")
    own = root / "tokenizer.json"
    shutil.copy(tok_file, own)
    data = root / "hamlet_bpe"
    prepare([corpus], data, tokenizer="bpe", tokenizer_file=own)
    own.unlink()  # neither train.py nor sample.py may need the file: meta.json carries the tokenizer
    out = root / "run"
    train.main(["--preset", "debug", "--dataset", str(data), "--out_dir", str(out), "--device", "cpu",
                "--max_iters", "6"])
    return data, out


def test_train_and_sample_with_bpe_data(bpe_run, tok):
    data, out = bpe_run
    meta = load_meta(data)
    assert meta["vocab_size"] == VOCAB and meta["eot_token"] == 0 and meta["tokenizer_json"] == tok.tokenizer_json
    run_meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert run_meta["tokenizer_json"] == tok.tokenizer_json

    shutil.rmtree(data)  # the run directory alone is enough from here on
    model, run_tok, _ = load_run(out)
    assert isinstance(run_tok, BPETokenizer) and model.config.vocab_size >= VOCAB
    texts = sample.main(["--out_dir", str(out), "--start", "HAMLET. To be", "--max_new_tokens", "12",
                         "--device", "cpu", "--seed", "1"])
    assert texts[0].startswith("HAMLET. To be")
    assert len(run_tok.encode(texts[0])) >= len(run_tok.encode("HAMLET. To be"))
    # an empty prompt starts from the end-of-text token, which bpe has
    assert sample.main(["--out_dir", str(out), "--start", "", "--max_new_tokens", "3", "--device", "cpu"])[0] \
        .startswith("<|endoftext|>")
