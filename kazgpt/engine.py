"""Text out of a model as it is generated: sample.py streams samples and answers with it, and
eval_qa.py collects answers. An answer is the rest of the line after '<question>:'."""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import torch

from kazgpt.device import autocast_context
from kazgpt.tokenizer import Tokenizer
from model import GPT, decode_one_token, generate_tokens


class StreamDecoder:
    """Turns tokens into text as they come, holding back only the tokens of a character that is
    not complete yet (a multi-byte character split across BPE tokens), so each piece is decoded once."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def add(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd"):  # an unfinished UTF-8 sequence: wait for the next token
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        """What is still held back at the end: bytes that never completed a character, shown as U+FFFD."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


def stream_text(model: GPT, tokenizer: Tokenizer, ids: list[int], max_new_tokens: int, device: str, dtype: str,
                temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                greedy: bool = False, generator: Optional[torch.Generator] = None,
                decode_step=decode_one_token) -> Iterator[str]:
    """The text of a continuation of `ids`, piece by piece as it is generated. Only ids the tokenizer
    has are sampled (the model's vocabulary may be padded past it)."""
    decoder = StreamDecoder(tokenizer)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.no_grad(), autocast_context(device, dtype):
        for token in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, greedy, generator,
                                     vocab_size=tokenizer.vocab_size, decode_step=decode_step):
            piece = decoder.add(token.item())
            if piece:
                yield piece
    rest = decoder.flush()
    if rest:
        yield rest


def first_line(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces up to the first newline, which ends an answer; the generation stops there."""
    for piece in pieces:
        head, newline, _ = piece.partition("\n")
        if head:
            yield head
        if newline:
            return
