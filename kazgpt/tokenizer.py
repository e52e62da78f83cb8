"""Tokenizers. Each is rebuilt from a small JSON-able spec that meta.json and checkpoints carry,
so a checkpoint needs nothing beside it to be sampled from."""
from __future__ import annotations

from typing import Iterable, Optional, Protocol

from kazgpt.cli import UserError

EOT = "<|endoftext|>"  # GPT-2's end-of-text token, also the Kazakh BPE's one special token


class Tokenizer(Protocol):
    vocab_size: int
    eot_token: Optional[int]
    spec: dict

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class CharTokenizer:
    """One token per Unicode character of a fixed vocabulary."""

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.vocab_size = len(chars)
        self.spec = {"kind": "char", "chars": chars}
        self.eot_token: Optional[int] = None

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:20])
            raise UserError(f"the text has characters outside this model's vocabulary: {shown}; remove or replace them")
        return [self.stoi[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class TiktokenTokenizer:
    """OpenAI's GPT-2 BPE through tiktoken (offline with TIKTOKEN_CACHE_DIR)."""

    def __init__(self, name: str = "gpt2"):
        import tiktoken

        try:
            self.enc = tiktoken.get_encoding(name)
        except Exception as e:  # tiktoken fetches its files on first use
            raise UserError(f"could not load the tiktoken encoding '{name}' ({type(e).__name__}); "
                            "offline, point TIKTOKEN_CACHE_DIR at a folder holding its files") from None
        self.vocab_size = self.enc.n_vocab
        self.eot_token = self.enc.eot_token
        self.spec = {"kind": "tiktoken", "name": name}

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))


class HFTokenizer:
    """A Hugging Face `tokenizers` BPE (the Kazakh byte-level BPE), carried as its tokenizer.json text."""

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer as HFTokenizerModel

        self.tok = HFTokenizerModel.from_str(tokenizer_json)
        self.vocab_size = self.tok.get_vocab_size()
        self.eot_token = self.tok.token_to_id(EOT)
        self.spec = {"kind": "hf", "tokenizer_json": tokenizer_json}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


def tokenizer_from_spec(spec: dict) -> Tokenizer:
    kind = spec.get("kind")
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "tiktoken":
        return TiktokenTokenizer(spec["name"])
    return HFTokenizer(spec["tokenizer_json"])


def train_byte_level_bpe(docs: Iterable[str], vocab_size: int) -> str:
    """A byte-level BPE trained on docs (a list, or a stream read once), with EOT as its one special
    token, as tokenizer.json text."""
    from tokenizers import Tokenizer as HFTokenizerModel
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = HFTokenizerModel(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(docs, trainer=trainer, length=len(docs) if isinstance(docs, list) else None)
    return tokenizer.to_str()
