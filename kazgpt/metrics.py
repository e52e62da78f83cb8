"""Scoring answers, SQuAD-style, normalized for Kazakh: lower-casing that covers әғқңөұүһі,
punctuation turned into spaces (so 'Г.Мендель' is two words), spaces collapsed; with several gold
answers the best one counts."""
from __future__ import annotations

import unicodedata
from collections import Counter

from kazgpt.kazqad import nfc


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
