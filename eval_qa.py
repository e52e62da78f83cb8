"""
How well does a trained model answer KazQAD's questions? Each question is asked in the training
layout and answered greedily (KV cache) until the end of the answer's line, in two modes:

  closed_book   '<question>:'                              the model answers from memory
  reading       '<title>\\n<passage>\\n<question>:'          the passage comes first (as much as fits the context)

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
import os
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import configurator
from common import (KAZQAD_SOURCE_ENV, UserError, autocast_context, clean_question, format_qa, kazqad_passages, nfc,
                    passage_document, passage_header, read_kazqad_examples, resolve_device, resolve_dtype, run_main, split_documents)
from model import generate_tokens
from sample import StreamDecoder, load_model

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


def normalize_answer(text: str) -> str:
    """Lower-case (Unicode-aware: Ә->ә, Ү->ү, І->і), punctuation to spaces, white space collapsed."""
    text = nfc(text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: list[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: list[str]) -> float:
    """Harmonic mean of token precision and recall, the best over the gold answers."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def questions_to_ask(source: Optional[str], split: str) -> tuple[list[dict], str]:
    splits = read_kazqad_examples(source)
    if split not in splits:
        raise UserError(f"the source has no '{split}' split (it has: {', '.join(sorted(splits))}): use --split={sorted(splits)[0]}")
    if len(splits) > 1:
        return splits[split], f"all {len(splits[split])} questions of the {split} split"
    # one split: prepare.py split its passages 90/10, so only the held-out ones are fair questions
    passages = kazqad_passages(splits[split])
    docs = {key: passage_document(*key, exs) for key, exs in passages.items()}
    _, val_docs = split_documents(list(docs.values()))
    held_out = set(val_docs)
    examples = [ex for key, exs in passages.items() if docs[key] in held_out for ex in exs]
    return examples, f"{len(examples)} questions of the {len(held_out)} passages held out of training (the source has one split)"


def main() -> None:
    cfg = configurator.load_config(EvalConfig, sys.argv[1:], verbose=False)
    modes = [m for m in cfg.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--modes must be a comma-separated list of {', '.join(MODES)}; got '{cfg.modes}'")
    if cfg.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {cfg.max_new_tokens}")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, cfg.checkpoint, device)
    source = cfg.source if cfg.source is not None else (os.environ.get(KAZQAD_SOURCE_ENV) or None)
    examples, what = questions_to_ask(source, cfg.split)
    examples = examples[: cfg.limit] if cfg.limit else examples
    print(f"asking {what}" + (f", first {len(examples)}" if cfg.limit else ""))

    def answer(prompt: str) -> str:
        ids = tokenizer.encode(prompt)
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        decoder, text = StreamDecoder(tokenizer), ""
        with torch.no_grad(), autocast_context(device, dtype):
            for token in generate_tokens(model, idx, cfg.max_new_tokens, greedy=True):
                text += decoder.add(token.item())
                if "\n" in text:  # the answer's line has ended
                    break
        return (text + decoder.flush()).split("\n")[0].strip()

    from tqdm import tqdm

    output = Path(cfg.output) if cfg.output else Path(cfg.out_dir) / f"eval_qa_{cfg.split}.jsonl"
    scores = {m: {"em": 0.0, "f1": 0.0, "n": 0, "skipped": 0} for m in modes}
    with open(output, "w", encoding="utf-8") as out:
        for ex in tqdm(examples, desc="questions", unit="q"):
            golds = [nfc(a).strip() for a in ex["answers"]["text"]] or [""]
            question = clean_question(ex["question"])
            header = passage_header(nfc(ex.get("title") or "").strip(), nfc(ex["context"]).strip())
            prompts = {"closed_book": format_qa(question), "reading": header + format_qa(question)}
            for mode in modes:
                try:
                    prediction = answer(prompts[mode])
                except UserError:  # characters outside a char-level vocabulary: counted as wrong
                    prediction, scores[mode]["skipped"] = "", scores[mode]["skipped"] + 1
                em, f1 = exact_match(prediction, golds), token_f1(prediction, golds)
                scores[mode]["em"] += em
                scores[mode]["f1"] += f1
                scores[mode]["n"] += 1
                out.write(json.dumps({"id": ex.get("id"), "mode": mode, "question": question, "prediction": prediction,
                                      "answers": golds, "em": em, "f1": f1}, ensure_ascii=False) + "\n")
    print(f"\n{'mode':12s} {'questions':>9s} {'EM':>6s} {'F1':>6s}")
    for mode, s in scores.items():
        n = max(1, s["n"])
        print(f"{mode:12s} {s['n']:9d} {100 * s['em'] / n:6.1f} {100 * s['f1'] / n:6.1f}" + (f"  ({s['skipped']} unencodable)" if s["skipped"] else ""))
    print(f"per-question results: {output}")


if __name__ == "__main__":
    run_main(main)
