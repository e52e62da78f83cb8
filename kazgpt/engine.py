"""Generation: small pure sampling functions (prefill, decode one token, sample), composed by
generate_tokens with a KV cache, and text streamed out of them for sample.py and eval_qa.py. An
answer is the rest of the line after '<question>:'.

Generation past block_size (the window policy): the model sees at most block_size tokens. When
the window is full and one more token is needed, the context slides forward to its last
`keep = block_size // 2` tokens, which are re-encoded from position 0 (one prefill), and decoding
continues with the cache: one prefill per block_size/2 new tokens instead of a recomputation per
token. generate_without_cache follows the same policy by recomputing, and is the reference that
the cached path is tested against.

An answer read from a passage may be kept extractive (SpanConstraint): every token chosen must
continue a run of whole words of the passage's own tokens, so the answer is a span of the passage;
the model still decides where the span starts and ends. A model with a span head answers a
reading prompt without generating: read_span takes the best-scoring span of whole words of the
passage (best_span), up to MAX_SPAN_TOKENS long.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch.nn import functional as F

from kazgpt.device import autocast_context
from kazgpt.tokenizer import Tokenizer
from model import GPT, KVCache

MAX_SPAN_TOKENS = 16  # the longest answer a span head gives (KazQAD's answers are about 2 words)


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                      top_p: Optional[float] = None, greedy: bool = False,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row of logits (B, vocab) -> (B, 1)."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    # shifted so that the largest is 0, and divided in float64: a tiny temperature sends the others to
    # -inf (one token left, as greedy) instead of overflowing to inf and nan
    logits = logits.float()
    logits = ((logits - logits.amax(dim=-1, keepdim=True)).double() / temperature).float()
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return torch.multinomial(probs, num_samples=1, generator=generator)


def prefill(model: GPT, idx: torch.Tensor, cache: KVCache, matches: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Encode a whole context (with a reading prompt's question matches) into an emptied cache;
    logits (B, vocab) for the next token."""
    cache.length = 0
    return model(idx, cache=cache, matches=matches)[0][:, -1, :]


def decode_one_token(model: GPT, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Append one token (B, 1) to the cache; logits (B, vocab) for the next token."""
    return model(token, cache=cache)[0][:, -1, :]


def _cache_dtype(model: GPT, idx: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(idx.device.type):
        return torch.get_autocast_dtype(idx.device.type)
    return model.lm_head.weight.dtype


@torch.no_grad()
def generate_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
                    generator: Optional[torch.Generator] = None, vocab_size: Optional[int] = None,
                    decode_step=decode_one_token, constraint=None,
                    matches: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens new tokens (B, 1) one at a time, with a KV cache and the window policy
    above. Only ids below vocab_size are sampled (the model's vocabulary may be padded past its
    tokenizer's). `decode_step` may be a compiled decode_one_token; `constraint` (a SpanConstraint)
    masks the logits before each choice and is told each token chosen; `matches` (B, T) are the
    question matches of a reading prompt idx (none for the tokens generated)."""
    vocab, block = vocab_size or model.config.vocab_size, model.config.block_size
    keep = max(1, block // 2)
    cache = KVCache(model.config, idx.size(0), idx.device, _cache_dtype(model, idx))
    tokens = idx

    def window_matches(length: int) -> Optional[torch.Tensor]:  # those of the last `length` tokens
        return None if matches is None else F.pad(matches, (0, tokens.size(1) - matches.size(1)))[:, -length:]

    logits = prefill(model, tokens[:, -block:], cache, window_matches(block))
    for _ in range(max_new_tokens):
        logits = logits[:, :vocab] if constraint is None else constraint.mask(logits[:, :vocab])
        nxt = sample_next_token(logits, temperature, top_k, top_p, greedy, generator)
        if constraint is not None:
            constraint.step(nxt.item())
        yield nxt
        tokens = torch.cat([tokens, nxt], dim=1)
        if cache.length == block:  # the window is full: slide it to the last `keep` tokens
            logits = prefill(model, tokens[:, -keep:], cache, window_matches(keep))
        else:
            logits = decode_step(model, nxt, cache)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
    """idx (B, T) followed by max_new_tokens tokens of generate_tokens (same options)."""
    return torch.cat([idx, *generate_tokens(model, idx, max_new_tokens, **options)], dim=1)


@torch.no_grad()
def generate_without_cache(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                           top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The reference for generate_tokens: the same window policy, recomputing the whole context
    for every new token."""
    block = model.config.block_size
    keep = max(1, block // 2)
    start = max(0, idx.size(1) - block)  # the window's first token
    tokens = idx
    for _ in range(max_new_tokens):
        if tokens.size(1) - start > block:
            start = tokens.size(1) - keep
        logits = model(tokens[:, start:])[0][:, -1, :]
        tokens = torch.cat([tokens, sample_next_token(logits, temperature, top_k, top_p, greedy, generator)], dim=1)
    return tokens


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


class SpanConstraint:
    """Keeps a generated answer to a contiguous run of whole words of `source` (token ids), then one
    of `end_tokens`. word_starts[p] says whether a word starts at source token p (a span starts only
    there, and ends only before one or at the end); None: at every token. `at` holds the positions
    in source where the answer so far could end; None before the first token."""

    def __init__(self, source: Sequence[int], end_tokens: Iterable[int],
                 word_starts: Optional[Sequence[bool]] = None):
        self.source, self.end_tokens = list(source), sorted(set(end_tokens))
        if not self.end_tokens:
            raise ValueError("a span constraint needs a token that can end the answer")
        self.word_starts = list(word_starts) if word_starts is not None else [True] * len(self.source)
        self.word_starts.append(True)  # the end of the source ends a word
        self.at: Optional[set[int]] = None

    def allowed(self) -> list[int]:
        """The tokens that keep the answer a span of whole words of source, and the end where one may end."""
        ends = set(self.end_tokens)
        if self.at is None:
            starts = {t for p, t in enumerate(self.source) if self.word_starts[p]} - ends
            return sorted(starts) or self.end_tokens
        following = {self.source[p + 1] for p in self.at if p + 1 < len(self.source)}
        may_end = not self.at or any(self.word_starts[p + 1] for p in self.at)
        return sorted(following | ends if may_end else following - ends)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(1, vocab) logits with every token not allowed set to -inf."""
        keep = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
        keep[[t for t in self.allowed() if t < logits.size(-1)]] = True
        return logits.masked_fill(~keep, float("-inf"))

    def step(self, token: int) -> None:
        if token in self.end_tokens:  # the answer has ended: only ends from here on
            self.at = set()
        elif self.at is None:
            self.at = {p for p, t in enumerate(self.source) if t == token and self.word_starts[p]}
        else:
            self.at = {p + 1 for p in self.at if p + 1 < len(self.source) and self.source[p + 1] == token}


def word_starts(pieces: Sequence[str]) -> list[bool]:
    """For the text pieces of consecutive tokens: whether a word starts at each, that is the piece
    begins with a character that is not a letter or digit, or follows one that ends so. A piece that
    is part of a character (U+FFFD, a split UTF-8 sequence) counts as a letter."""
    def is_word(ch: str) -> bool:
        return ch.isalnum() or ch == "\ufffd"

    return [i == 0 or not pieces[i] or not is_word(pieces[i][0]) or not pieces[i - 1] or not is_word(pieces[i - 1][-1])
            for i in range(len(pieces))]


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, may_start: torch.Tensor, may_end: torch.Tensor,
              max_len: int) -> Optional[tuple[int, int]]:
    """The span (i, j), i <= j < i + max_len, with the highest start_logits[i] + end_logits[j] among
    those that start where may_start and end where may_end (bool, like the logits (T,)); None if
    there is none."""
    T = start_logits.numel()
    i, j = torch.arange(T).view(-1, 1), torch.arange(T).view(1, -1)
    allowed = (j >= i) & (j - i < max_len) & may_start.view(-1, 1) & may_end.view(1, -1)  # (T, T)
    if not allowed.any():
        return None
    scores = (start_logits.float().view(-1, 1) + end_logits.float().view(1, -1)).masked_fill(~allowed, float("-inf"))
    best = int(scores.argmax())
    return best // T, best % T


@torch.no_grad()
def read_span(model: GPT, tokenizer: Tokenizer, ids: list[int], passage: tuple[int, int],
              device: str, matches: Optional[list[bool]] = None, number: bool = True) -> tuple[str, int]:
    """A span head's answer to a reading prompt (ids, with the title and passage at ids[a:b], and
    their question matches): the text of the best span of whole words there, and where it starts in
    that text ('' and -1 if the passage has no word). number=False (a question that asks for none,
    qa_examples.asks_for_number): the span does not start with a digit."""
    a, b = passage
    pieces = [tokenizer.decode([t]) for t in ids[a:b]]
    starts = word_starts(pieces) + [True]  # a word starts after the passage's end
    matched = None if matches is None else torch.tensor([matches], device=device)
    span_logits = model.span_logits(model.hidden_states(torch.tensor([ids], device=device), None, matched))
    span_logits = span_logits[0, a:b].cpu()  # (P, 2)
    # a span starts and ends on a letter or digit (U+FFFD: part of one, from a byte-level token)
    is_text = torch.tensor([any(c.isalnum() or c == "\ufffd" for c in p) for p in pieces])
    may_start = torch.tensor([number or not p.lstrip()[:1].isdigit() for p in pieces])
    span = best_span(span_logits[:, 0], span_logits[:, 1], torch.tensor(starts[:-1]) & is_text & may_start,
                     torch.tensor(starts[1:]) & is_text, MAX_SPAN_TOKENS)
    if span is None:
        return "", -1
    before, text = tokenizer.decode(ids[a:a + span[0]]), tokenizer.decode(ids[a + span[0]:a + span[1] + 1])
    return text.strip(), len(before) + len(text) - len(text.lstrip())


def line_end_tokens(tokenizer: Tokenizer) -> list[int]:
    """The ids whose text holds a newline (what ends an answer)."""
    return [i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i])]


def passage_constraint(tokenizer: Tokenizer, ids: list[int], passage: Optional[tuple[int, int]],
                       end_tokens: list[int]) -> Optional[SpanConstraint]:
    """For a reading prompt (ids, with its title and passage at ids[a:b]), the constraint that keeps
    the answer to a span of whole words of them; None for a closed-book prompt (passage None)."""
    if passage is None or not end_tokens:  # closed-book, or a vocabulary without a line end
        return None
    source = ids[passage[0]:passage[1]]
    return SpanConstraint(source, end_tokens, word_starts([tokenizer.decode([t]) for t in source]))


def stream_text(model: GPT, tokenizer: Tokenizer, ids: list[int], max_new_tokens: int, device: str, dtype: str,
                temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                greedy: bool = False, generator: Optional[torch.Generator] = None,
                decode_step=decode_one_token, constraint: Optional[SpanConstraint] = None,
                matches: Optional[list[bool]] = None) -> Iterator[str]:
    """The text of a continuation of `ids` (with a reading prompt's question matches), piece by piece
    as it is generated. Only ids the tokenizer has are sampled (the model's vocabulary may be padded
    past it); a constraint (SpanConstraint) narrows them further."""
    decoder = StreamDecoder(tokenizer)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    matched = None if matches is None else torch.tensor([matches], device=device)
    with torch.no_grad(), autocast_context(device, dtype):
        for token in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, greedy, generator,
                                     vocab_size=tokenizer.vocab_size, decode_step=decode_step,
                                     constraint=constraint, matches=matched):
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
