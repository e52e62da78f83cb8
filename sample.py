"""
Sample from a trained model, or from OpenAI's GPT-2:

    python sample.py --out_dir=out-qazdata-char --start="Амазонка бассейні картада қайда орналасқан?:"
    python sample.py --init_from=gpt2-xl --start="FILE:prompt.txt" --num_samples=3
    python sample.py --out_dir=out-qazdata-char --interactive   # type questions, answers stream back
    python sample.py --out_dir=out-qa --interactive --context=FILE:passage.txt   # questions about your text
    python sample.py --out_dir=out-qa --interactive --collection=passages.txt   # about a collection (BM25)

A checkpoint carries its model arguments and tokenizer, so sampling needs nothing but out_dir.
Settings are the SampleConfig fields below (see configurator.py for how overrides work).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

import configurator
from kazgpt.checkpoint import load_model
from configurator import setting
from kazgpt.cli import UserError, run_main
from kazgpt.device import resolve_device, resolve_dtype
from kazgpt.engine import decode_one_token, first_line, line_end_tokens, passage_constraint, read_span, stream_text
from kazgpt.kazqad import nfc
from kazgpt.qa_examples import asks_for_number, encode_prompt, question_matches, question_prompt
from kazgpt.retrieval import PassageIndex, open_index, read_collection


@dataclass
class SampleConfig:
    init_from: str = "resume"  # 'resume' (out_dir's checkpoint), gpt2*, a transformers folder or hub 'owner/name'
    out_dir: str = "out"
    checkpoint: str = "best.pt"  # which file of out_dir; falls back to the other of ckpt.pt/best.pt
    start: str = "\n"  # the prompt, or "FILE:path" to read it from a file
    num_samples: int = setting(10, min=1)
    max_new_tokens: int = setting(500, min=1)
    temperature: float = setting(0.8, above=0)  # below 1 sharpens the distribution, above 1 flattens it
    top_k: Optional[int] = setting(200, min=1)  # sample among the k most likely tokens only; None: all
    top_p: Optional[float] = setting(None, above=0, max=1)  # among the most likely tokens covering top_p; None: all
    seed: int = setting(1337, min=0)
    device: Optional[str] = None  # None: cuda, then mps, then cpu
    dtype: Optional[str] = setting(None, choices=("float32", "bfloat16", "float16"))  # None: bf16 on CUDA, else fp32
    compile: bool = False  # compile the one-token decode step: ~20 s of compiling, same tokens; on CPU it does not pay
    interactive: bool = False  # read questions from stdin, stream each answer; Ctrl-D ends
    # a passage to answer from, as text or FILE:path (a first line followed by more lines is its title);
    # with it each question (--start, or a line of --interactive) is asked in the reading layout
    context: Optional[str] = None
    # a collection of passages (.txt or .jsonl, see kazgpt/retrieval.py): each question is asked in the reading
    # layout with the passage BM25 finds for it, whose title is shown first
    collection: Optional[str] = None
    index_dir: Optional[str] = None  # where the collection's index is saved, built on first use (None: data/bm25)
    # with --context or --collection, answers are spans of the passage, the model choosing where each starts and
    # ends (kazgpt.engine.SpanConstraint); False: whatever the model writes
    extractive: bool = True


def read_text_arg(value: str, key: str) -> str:
    """The text of a --start/--context value: itself, or the file FILE:path names."""
    if value.startswith("FILE:"):
        path = Path(value[5:])
        if not path.is_file():
            raise UserError(f"file {path} does not exist (from --{key}=FILE:{path})")
        try:
            return nfc(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"file {path} (from --{key}) is not UTF-8 text") from None
    return nfc(value)


def read_context(value: str) -> tuple[str, str]:
    """(title, passage) of --context: a first line followed by more lines is the title; the passage's
    lines are joined with spaces, as a passage is one line in the training layout."""
    lines = [" ".join(line.split()) for line in read_text_arg(value, "context").splitlines() if line.strip()] or [""]
    return (lines[0], " ".join(lines[1:])) if len(lines) > 1 else ("", lines[0])


def prompt_tokens(tokenizer, prompt: str, asking: bool) -> tuple[list[int], Optional[tuple[int, int]]]:
    """The prompt's tokens and, for a question asked from a passage, where its title and passage lie."""
    ids, passage = encode_prompt(tokenizer, prompt) if asking else (tokenizer.encode(prompt), None)
    if not ids:
        raise UserError("the prompt is empty: give a --start text")
    return ids, passage


def shown_span(answer: str, at: int, text: str) -> str:
    """The answer marked in the passage text it was read from, with a few words around it."""
    if at < 0:
        return "[no span of the passage fits this question]"
    before, after = text[:at].split()[-6:], text[at + len(answer):].split()[:6]
    return f"[read at character {at}: ...{' '.join(before)} «{answer}» {' '.join(after)}...]"


def answer_questions(lines, tokenizer, generate, ask) -> None:
    """Interactive mode: each line read is a question, asked in the training layout by ask(question)
    -> (prompt, a line to show before the answer or None); the answer, generate(ids, passage), streams
    back until its line ends. A question that cannot be asked is reported and the session goes on."""
    print("Ask a question (Ctrl-D to end).", file=sys.stderr)
    for line in lines:
        question = " ".join(nfc(line).split())
        if not question:
            continue
        try:
            prompt, source = ask(question)
            ids, passage = prompt_tokens(tokenizer, prompt, asking=True)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            continue
        if source:
            print(source, flush=True)
        for piece in first_line(generate(ids, passage)):
            print(piece, end="", flush=True)
        print(flush=True)


def passage_source(cfg: SampleConfig) -> Union[PassageIndex, tuple[str, Optional[str]]]:
    """What the questions are asked from, read before the model loads so that a bad path fails at
    once: the BM25 index of --collection, --context's (title, passage), or ('', None) (closed-book)."""
    if cfg.context and cfg.collection:
        raise UserError("--context and --collection both give the passage: use one of them")
    if cfg.collection:
        return open_index(read_collection(cfg.collection), cfg.index_dir)
    return read_context(cfg.context) if cfg.context else ("", None)


def make_asker(source: Union[PassageIndex, tuple[str, Optional[str]]], tokenizer, block_size: int):
    """ask(question) -> (the prompt, a line naming the passage it is asked from, or None): closed-book,
    from --context, or from the passage that BM25 retrieves from --collection (passage_source)."""
    if isinstance(source, tuple):
        title, passage = source
        return lambda question: (question_prompt(question, tokenizer, block_size, title, passage), None)

    def ask(question: str) -> tuple[str, Optional[str]]:
        hits = source.search(question, 1)
        if not hits:
            return question_prompt(question, tokenizer, block_size), "[source: none found, asked closed-book]"
        passage = source.passages[hits[0][0]]
        return (question_prompt(question, tokenizer, block_size, passage.title, passage.text),
                f"[source: {passage.title or passage.text[:60]}]")
    return ask


def main(argv: list[str]) -> None:
    cfg = configurator.load_config(SampleConfig, argv, verbose=False)
    start = read_text_arg(cfg.start, "start")  # the inputs first: a bad path fails before the model loads
    source = passage_source(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, cfg.checkpoint, device)
    decode_step = torch.compile(decode_one_token) if cfg.compile else decode_one_token
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    asking = bool(cfg.context or cfg.collection)  # --start and each interactive line are questions
    extract = asking and cfg.extractive
    end_tokens = line_end_tokens(tokenizer) if extract else []

    def generate(ids: list[int], passage: Optional[tuple[int, int]]):
        """The streamed continuation of a prompt; a reading prompt's answer kept to its passage if extract,
        or read off it by a span head (then shown in its place)."""
        matches = question_matches(tokenizer, ids, passage) if model.config.span_head else None  # a reader's input
        if passage and model.config.span_head:
            number = asks_for_number(tokenizer.decode(ids[:passage[0]]))  # the question line
            text, at = read_span(model, tokenizer, ids, passage, device, matches, number)
            return iter([f" {text}\n", shown_span(text, at, tokenizer.decode(ids[passage[0]:passage[1]]))])
        constraint = passage_constraint(tokenizer, ids, passage, end_tokens) if extract else None
        return stream_text(model, tokenizer, ids, cfg.max_new_tokens, device, dtype, cfg.temperature, cfg.top_k,
                           cfg.top_p, generator=generator, decode_step=decode_step, constraint=constraint,
                           matches=matches)
    ask = make_asker(source, tokenizer, model.config.block_size)
    if cfg.interactive:
        answer_questions(sys.stdin, tokenizer, generate, ask)
        return
    prompt = start
    if asking:  # --start is the question
        question = " ".join(prompt.split()).removesuffix(":")
        if not question:
            raise UserError("--start is empty: with --context or --collection it is the question to ask")
        prompt, source = ask(question)
        if source:
            print(source, flush=True)
    ids, passage = prompt_tokens(tokenizer, prompt, asking)
    for _ in range(cfg.num_samples):
        print(prompt, end="", flush=True)
        pieces = generate(ids, passage)
        for piece in first_line(pieces) if asking else pieces:  # an answer is a line
            print(piece, end="", flush=True)
        if passage and model.config.span_head:
            print("\n" + next(pieces), end="", flush=True)
        print("\n---------------", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main, memory_hint="use a smaller --num_samples, or a smaller model"))
