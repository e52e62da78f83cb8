"""
How well does a trained model answer KazQAD's questions? Each question is asked in the training
layout and answered greedily (KV cache) until the end of the answer's line, in two modes:

  closed_book   '<question>:'                              the model answers from memory
  reading       '<title>\\n<passage>\\n<question>:'          the passage comes first: the sentences around
                                                             the one sharing most words with the question,
                                                             as many as fit the model's context

and scored with Exact Match and token F1, SQuAD-style, normalized for Kazakh (lower-casing that
covers әғқңөұүһі, punctuation turned into spaces so that 'Г.Мендель' is two words, spaces
collapsed; with several gold answers the best one counts).

    python eval_qa.py --out_dir=out-qazdata-char --source=../shared/kazqad --split=validation

When the source has a single split (so prepare.py split it 90/10 by passage), only the questions
of the held-out passages are asked, so training answers are not scored. For scale, the KazQAD
paper reports reading comprehension EM 38.5 / F1 54.2 (XLM-R reader) and open-domain QA
EM 17.8 / F1 28.7.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import configurator
from kazgpt.checkpoint import load_model
from kazgpt.cli import UserError, run_main
from kazgpt.device import resolve_device, resolve_dtype
from kazgpt.engine import first_line, stream_text
from kazgpt.files import check_output, commit, temporary_name
from kazgpt.kazqad import clean_question, format_qa, held_out_examples, nfc, passage_key
from kazgpt.qa_examples import question_prompt
from kazgpt.qa import exact_match, token_f1

MODES = ("closed_book", "reading")


@dataclass
class EvalConfig:
    out_dir: str = "out"
    checkpoint: str = "best.pt"
    init_from: str = "resume"  # as in sample.py
    source: Optional[str] = None  # KazQAD JSON Lines file or folder; None: $KAZQAD_SOURCE, else the hub
    split: str = "validation"
    modes: str = "closed_book,reading"
    max_new_tokens: int = 64
    limit: Optional[int] = None  # ask only the first N questions
    output: Optional[str] = None  # per-question JSON Lines; None: <out_dir>/eval_qa_<split>.jsonl
    device: Optional[str] = None
    dtype: Optional[str] = None


def prompt_for(example: dict, mode: str, tokenizer, block_size: int) -> str:
    """The prompt of one mode for one example, in the training layout."""
    question, (title, context) = clean_question(example["question"]), passage_key(example)
    if mode == "closed_book":
        return format_qa(question)
    return question_prompt(question, tokenizer, block_size, title, context)


def score_examples(examples: list[dict], modes: list[str], answer, prompt, out) -> dict[str, dict]:
    """Ask every example in every mode (prompt(example, mode) -> text, answer(text) -> prediction),
    write one JSON line per answer to out, and return each mode's summed EM and F1."""
    from tqdm import tqdm

    scores = {m: {"em": 0.0, "f1": 0.0, "n": 0, "skipped": 0} for m in modes}
    for ex in tqdm(examples, desc="questions", unit="q"):
        golds = [nfc(a).strip() for a in ex["answers"]["text"]] or [""]
        for mode in modes:
            try:
                prediction = answer(prompt(ex, mode))
            except UserError:  # outside a char-level vocabulary, or too long for the context: counted as wrong
                prediction, scores[mode]["skipped"] = "", scores[mode]["skipped"] + 1
            em, f1 = exact_match(prediction, golds), token_f1(prediction, golds)
            scores[mode]["em"] += em
            scores[mode]["f1"] += f1
            scores[mode]["n"] += 1
            out.write(json.dumps({"id": ex.get("id"), "mode": mode, "question": clean_question(ex["question"]),
                                  "prediction": prediction, "answers": golds, "em": em, "f1": f1},
                                 ensure_ascii=False) + "\n")
    return scores


def made_by_eval_qa(path: Path) -> bool:
    """Whether a file holds per-question results this script wrote (which it may replace)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"mode", "prediction", "answers"} <= first.keys()


def main() -> None:
    cfg = configurator.load_config(EvalConfig, sys.argv[1:], verbose=False)
    modes = [m for m in cfg.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--modes must be a comma-separated list of {', '.join(MODES)}; got '{cfg.modes}'")
    if cfg.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {cfg.max_new_tokens}")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    output = Path(cfg.output) if cfg.output else Path(cfg.out_dir) / f"eval_qa_{cfg.split}.jsonl"
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, cfg.checkpoint, device)
    check_output(output, made_by_eval_qa, "per-question results (--output)")
    examples, what = held_out_examples(cfg.source, cfg.split)
    examples = examples[: cfg.limit] if cfg.limit else examples
    print(f"asking {what}" + (f", first {len(examples)}" if cfg.limit else ""))

    def answer(prompt: str) -> str:
        """The greedy answer: the rest of the prompt's line. Unencodable prompts (characters outside a
        char-level vocabulary) raise UserError."""
        pieces = stream_text(model, tokenizer, tokenizer.encode(prompt), cfg.max_new_tokens, device, dtype, greedy=True)
        return "".join(first_line(pieces)).strip()

    tmp = temporary_name(output)  # renamed to output when complete; removed if the run stops
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            scores = score_examples(examples, modes, answer, lambda ex, mode: prompt_for(ex, mode, tokenizer,
                                                                                        model.config.block_size), out)
        commit({tmp: output})
    finally:
        tmp.unlink(missing_ok=True)
    print(f"\n{'mode':12s} {'questions':>9s} {'EM':>6s} {'F1':>6s}")
    for mode, s in scores.items():
        n = max(1, s["n"])
        print(f"{mode:12s} {s['n']:9d} {100 * s['em'] / n:6.1f} {100 * s['f1'] / n:6.1f}"
              + (f"  ({s['skipped']} could not be asked: characters outside the vocabulary, or too long)"
                 if s["skipped"] else ""))
    print(f"per-question results: {output}")


if __name__ == "__main__":
    run_main(main)
