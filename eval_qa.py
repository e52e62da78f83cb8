"""
How well does a trained model answer KazQAD's questions? Each question is asked in the training
layout and answered greedily (KV cache) until the end of the answer's line, in two modes:

  closed_book   '<question>:'                              the model answers from memory
  reading       '<question>\\n<title>\\n<passage>\\n<question>:'  the sentences around
                                                             the one sharing most words with the question,
                                                             as many as fit the model's context
  open          as reading, with the passage that BM25 retrieves from a collection (every passage of the
                source, or --collection) in place of the question's own; retrieval recall@1, recall@5
                and MRR@10 against the question's own passage are reported beside EM/F1

With a passage (reading, open), a model with a span head (train.py --span_head) answers with the
best span of whole words of the passage (kazgpt/engine.py's read_span), one that does not start
with a digit where the question asks for no number (qa_examples.asks_for_number: who, what, which,
where or how, and no word of quantity or time), and the per-question output gives where it
starts; without one (or with --span_head=False), the answer is generated and kept to a span of the
passage, the model choosing where it starts and stops (--extractive=True, SpanConstraint);
--extractive=False lets the model write anything. Answers are scored with Exact Match and token
F1, SQuAD-style, normalized for Kazakh (lower-casing that covers әғқңөұүһі, punctuation turned into
spaces so that 'Г.Мендель' is two words, spaces collapsed; with several gold answers the best one
counts).

    python eval_qa.py --out_dir=out-qazdata-char --source=../shared/kazqad --split=validation
    python eval_qa.py --out_dir=out-qa --modes=open --collection=passages.txt

When the source has a single split (so prepare.py held out about 10% of its passages, those that
share a question together), only the questions of the held-out passages are asked, so training
answers are not scored; a question that a training passage also asks is scored apart. For scale, the KazQAD
paper reports reading comprehension EM 38.5 / F1 54.2 (XLM-R reader) and open-domain QA
EM 17.8 / F1 28.7.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Optional

import configurator
from configurator import setting
from kazgpt.checkpoint import load_model
from kazgpt.cli import UserError, run_main
from kazgpt.device import resolve_device, resolve_dtype
from kazgpt.engine import first_line, line_end_tokens, passage_constraint, read_span, stream_text
from kazgpt.files import atomic_write
from kazgpt.kazqad import clean_question, format_qa, held_out_examples, nfc, passage_key, source_or_env
from kazgpt.qa_examples import asks_for_number, encode_prompt, question_matches, question_prompt
from kazgpt.retrieval import Passage, PassageIndex, kazqad_collection, open_index, read_collection
from kazgpt.metrics import exact_match, token_f1

MODES = ("closed_book", "reading", "open")
RETRIEVED = 10  # passages ranked per question in open mode (for recall@5 and MRR@10; the reader reads the first)


@dataclass
class EvalConfig:
    out_dir: str = "out"
    checkpoint: str = "best.pt"
    init_from: str = "resume"  # as in sample.py
    source: Optional[str] = None  # KazQAD JSON Lines file or folder; None: $KAZQAD_SOURCE, else the hub
    split: str = "validation"
    modes: str = "closed_book,reading"  # any of closed_book, reading, open
    collection: Optional[str] = None  # open mode's passages: a .txt or .jsonl file; None: every passage of the source
    index_dir: Optional[str] = None  # where retrieval indexes are saved, built on first use (None: data/bm25)
    max_new_tokens: int = setting(64, min=1)
    # reading and open answers are spans of the passage in the prompt, the model picking where each starts and
    # ends (kazgpt.engine.SpanConstraint); False: whatever the model writes
    extractive: bool = True
    span_head: bool = True  # a model with a span head reads answers off the passage; False: it generates them
    limit: Optional[int] = setting(None, min=1)  # ask only the first N questions
    output: Optional[str] = None  # per-question JSON Lines; None: <out_dir>/eval_qa_<split>.jsonl
    device: Optional[str] = None
    dtype: Optional[str] = setting(None, choices=("float32", "bfloat16", "float16"))


def gold_rank(example: dict, ranked: list[Passage]) -> Optional[int]:
    """Where the example's own passage is among the retrieved ones (1 = first), None if not there.
    Passages are compared by their words, so a collection file's line breaks do not matter."""
    gold = " ".join(passage_key(example)[1].split())
    return next((r for r, p in enumerate(ranked, 1) if " ".join(p.text.split()) == gold), None)


def make_prompter(tokenizer, block_size: int, index: Optional[PassageIndex]):
    """prompt(example, mode) -> (the prompt in the training layout, what to record beside the answer)."""
    def prompt(example: dict, mode: str) -> tuple[Optional[str], dict]:
        question, (title, context), record = clean_question(example["question"]), passage_key(example), {}
        if mode == "open":
            ranked = [index.passages[i] for i, _ in index.search(question, RETRIEVED)]
            record = {"retrieved": ranked[0].title if ranked else None, "gold_rank": gold_rank(example, ranked)}
            # no word of the question in the collection: asked closed-book
            title, context = (ranked[0].title, ranked[0].text) if ranked else ("", None)
        if mode == "closed_book" or context is None:
            return format_qa(question), record
        try:
            return question_prompt(question, tokenizer, block_size, title, context), record
        except UserError:  # the question is too long for the model's context
            return None, record
    return prompt


def add_retrieval(score: dict, rank: Optional[int]) -> None:
    for name, hit in (("recall@1", rank == 1), ("recall@5", rank is not None and rank <= 5)):
        score[name] = score.get(name, 0) + hit
    score["mrr@10"] = score.get("mrr@10", 0) + (1 / rank if rank else 0)


def score_examples(examples: list[dict], modes: list[str], answer, prompt, out,
                   trained_questions: AbstractSet[str] = frozenset()) -> dict[str, dict[str, dict]]:
    """Ask every example in every mode (prompt(example, mode) -> (text, record), answer(text) ->
    (prediction, what to record beside it); None for either where the question cannot be asked),
    write one JSON line per answer to out, and return each mode's summed EM and F1 (and, where the
    record has a gold_rank, retrieval recall@1/@5 and MRR@10), over all examples ("all") and over
    those whose question is not in trained_questions ("unseen")."""
    from tqdm import tqdm

    scores = {subset: {m: {"em": 0.0, "f1": 0.0, "n": 0, "skipped": 0} for m in modes}
              for subset in ("all", "unseen")}
    for ex in tqdm(examples, desc="questions", unit="q"):
        golds = [nfc(a).strip() for a in ex["answers"]["text"]] or [""]
        question = clean_question(ex["question"])
        subsets = ("all",) if question in trained_questions else ("all", "unseen")
        for mode in modes:
            text, record = prompt(ex, mode)
            answered = answer(text) if text is not None else None
            skipped = answered is None  # too long for the context, or outside a char-level vocabulary: wrong
            prediction, extra = answered or ("", {})
            record = {**record, **extra}
            em, f1 = exact_match(prediction, golds), token_f1(prediction, golds)
            for score in (scores[subset][mode] for subset in subsets):
                score["em"], score["f1"], score["n"] = score["em"] + em, score["f1"] + f1, score["n"] + 1
                score["skipped"] += skipped
                if "gold_rank" in record:
                    add_retrieval(score, record["gold_rank"])
            out.write(json.dumps({"id": ex.get("id"), "mode": mode, "question": question, "prediction": prediction,
                                  "answers": golds, "em": em, "f1": f1, "asked_in_training": len(subsets) == 1,
                                  **record}, ensure_ascii=False) + "\n")
    return scores


def main(argv: list[str]) -> None:
    cfg = configurator.load_config(EvalConfig, argv, verbose=False)
    modes = [m for m in cfg.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--modes must be a comma-separated list of {', '.join(MODES)}; got '{cfg.modes}'")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    output = Path(cfg.output) if cfg.output else Path(cfg.out_dir) / f"eval_qa_{cfg.split}.jsonl"
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, cfg.checkpoint, device)
    examples, trained_questions, what = held_out_examples(cfg.source, cfg.split)
    examples = examples[: cfg.limit] if cfg.limit else examples
    print(f"asking {what}" + (f", first {len(examples)}" if cfg.limit else ""))
    seen = sum(clean_question(ex["question"]) in trained_questions for ex in examples)
    if seen:
        print(f"{seen} of them are also asked, with the same answer or not, on a training passage: the second "
              "table leaves those out")

    index = open_index(load_collection(cfg), cfg.index_dir) if "open" in modes else None
    if index is not None:
        print(f"open mode: BM25 over {len(index.passages)} passages "
              f"({cfg.collection or 'every passage of the source'})")

    end_tokens = line_end_tokens(tokenizer)

    def answer(prompt: str) -> Optional[tuple[str, dict]]:
        """The answer and, from a span head, where it starts in the title-and-passage text; None for a
        prompt that cannot be encoded (characters outside a char-level vocabulary)."""
        try:
            ids, passage = encode_prompt(tokenizer, prompt)
        except UserError:
            return None
        matches = question_matches(tokenizer, ids, passage) if model.config.span_head else None  # a reader's input
        if passage and model.config.span_head and cfg.span_head:
            number = asks_for_number(tokenizer.decode(ids[:passage[0]]))  # the question line
            text, at = read_span(model, tokenizer, ids, passage, device, matches, number)
            return text, {"span_at": at}
        constraint = passage_constraint(tokenizer, ids, passage, end_tokens) if cfg.extractive else None
        return "".join(first_line(stream_text(model, tokenizer, ids, cfg.max_new_tokens, device, dtype,
                                              greedy=True, constraint=constraint, matches=matches))).strip(), {}

    with atomic_write(output, "w") as out:  # in place only when complete
        scores = score_examples(examples, modes, answer, make_prompter(tokenizer, model.config.block_size, index),
                                out, trained_questions)
    print_table(scores["all"], "all questions asked")
    if seen:
        print_table(scores["unseen"], f"the {len(examples) - seen} questions no training passage asks")
    print(f"per-question results: {output}")


def load_collection(cfg: EvalConfig) -> list[Passage]:
    return read_collection(cfg.collection) if cfg.collection else kazqad_collection(source_or_env(cfg.source))


def print_table(scores: dict[str, dict], title: str) -> None:
    retrieval = any("mrr@10" in s for s in scores.values())
    print(f"\n{title}:\n{'mode':12s} {'questions':>9s} {'EM':>6s} {'F1':>6s}"
          + ("   R@1    R@5 MRR@10" if retrieval else ""))
    for mode, s in scores.items():
        n = max(1, s["n"])
        line = f"{mode:12s} {s['n']:9d} {100 * s['em'] / n:6.1f} {100 * s['f1'] / n:6.1f}"
        if "mrr@10" in s:
            line += "".join(f" {100 * s[k] / n:6.1f}" for k in ("recall@1", "recall@5", "mrr@10"))
        elif retrieval:
            line += " " * 21
        if s["skipped"]:
            line += f"  ({s['skipped']} could not be asked: characters outside the vocabulary, or too long)"
        print(line)


if __name__ == "__main__":
    sys.exit(run_main(main))
