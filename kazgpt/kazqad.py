"""KazQAD (Yeshpanov et al., LREC-COLING 2024; CC BY-SA 4.0): reading a source (the Hugging Face
hub, local JSON Lines, or a plain .txt corpus) and laying it out as training text.

The layout, one document per distinct passage:

    <title>
    <passage>
    <question 1>: <answer 1>
    <question 2>: <answer 2>

so that a prompt '<question>:' leads the model into ' <answer>' and a newline ends the answer.
"""
from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path
from typing import Iterable, Optional

from kazgpt.cli import ArgumentParser, UserError, offline_hint
from kazgpt.files import json_lines, read_text_file

KAZQAD_HUB_ID = ("issai/kazqad", "kazqad")
NQ_TRANSLATE_HUB_ID = ("issai/kazqad", "nq-translate-kk")  # ~61k machine-translated triples, same schema
KAZQAD_SOURCE_ENV = "KAZQAD_SOURCE"
KAZQAD_FIELDS = ("title", "context", "question", "answers")
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
               "dev": "validation", "test": "test"}
VAL_FRACTION = 0.1  # of the documents, where the source has no split of its own


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def clean_question(question: str) -> str:
    return " ".join(nfc(question).split())


def format_qa(question: str, answer: str = "") -> str:
    """One question line of the layout. A prompt is format_qa(question) = 'question:'."""
    return f"{question}:" + (f" {answer}\n" if answer else "")


def passage_header(title: str, context: str) -> str:
    """'<title>\\n<passage>\\n': what precedes a passage's questions (and a reading-comprehension prompt)."""
    return (f"{title}\n" if title else "") + f"{context}\n"


def passage_key(example: dict) -> tuple[str, str]:
    """(title, passage) of an example, NFC-normalized and stripped: what identifies its passage."""
    return nfc(example.get("title") or "").strip(), nfc(example["context"]).strip()


def kazqad_passages(examples: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    """Examples grouped by passage (title, context), in order of first appearance."""
    passages: dict[tuple[str, str], list[dict]] = {}
    for ex in examples:
        passages.setdefault(passage_key(ex), []).append(ex)
    return passages


def passage_document(title: str, context: str, examples: list[dict]) -> str:
    """One document of the layout: the passage once, then every question on it with its first answer."""
    qas = []
    for ex in examples:
        answers = ex["answers"]["text"]
        qas.append(format_qa(clean_question(ex["question"]), (nfc(answers[0]).strip() if answers else "") or "-"))
    return passage_header(title, context) + "".join(qas)


def kazqad_documents(examples: Iterable[dict]) -> list[str]:
    """The training text of KazQAD examples: one document per distinct passage."""
    return [passage_document(t, c, exs) for (t, c), exs in kazqad_passages(examples).items()]


def split_documents(docs: list[str], val_fraction: float = VAL_FRACTION) -> tuple[list[str], list[str]]:
    """A deterministic split by whole documents: the documents with the smallest content hashes
    go to val, so the split does not depend on file order and never cuts a document."""
    if len(docs) < 2:
        raise UserError(f"the source has {len(docs)} document(s); at least 2 are needed to split train from val "
                        "(separate documents by a blank line)")
    ranked = sorted(range(len(docs)), key=lambda i: hashlib.sha1(docs[i].encode()).digest())
    val_ids = set(ranked[: max(1, round(val_fraction * len(docs)))])
    return [d for i, d in enumerate(docs) if i not in val_ids], [d for i, d in enumerate(docs) if i in val_ids]


def held_out_passages(passages: dict[tuple[str, str], list[dict]],
                      val_fraction: float = VAL_FRACTION) -> set[tuple[str, str]]:
    """The passages a single-split KazQAD source holds out of training: whole groups of passages
    that share a question (KazQAD asks one question on several passages, and a question asked on
    both sides would be answered from memory), the groups with the smallest content hashes first,
    until they hold val_fraction of the passages. Independent of file order."""
    parent = {key: key for key in passages}

    def root(key):
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    first_passage: dict[str, tuple[str, str]] = {}
    for key, rows in passages.items():
        for row in rows:
            other = first_passage.setdefault(clean_question(row["question"]), key)
            parent[root(key)] = root(other)
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for key in passages:
        groups.setdefault(root(key), []).append(key)

    def digest(group: list[tuple[str, str]]) -> bytes:
        return hashlib.sha1("".join(sorted(passage_document(*k, passages[k]) for k in group)).encode()).digest()

    held: set[tuple[str, str]] = set()
    for group in sorted(groups.values(), key=digest)[:-1]:  # the last group always trains
        if len(held) >= max(1, round(val_fraction * len(passages))):
            break
        held.update(group)
    return held


# -----------------------------------------------------------------------------
# reading a source


def source_or_env(source: Optional[str]) -> Optional[str]:
    """The source to read: the one given, else $KAZQAD_SOURCE, else None (the hub)."""
    return source if source is not None else (os.environ.get(KAZQAD_SOURCE_ENV) or None)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, row in json_lines(read_text_file(path), path, "KazQAD JSON Lines"):
        problem = schema_problem(row)
        if problem:
            raise UserError(f"{path} line {n} is not in KazQAD's schema ({problem}); "
                            f"expected fields {', '.join(KAZQAD_FIELDS)}")
        rows.append(row)
    return rows


def schema_problem(row) -> Optional[str]:
    """What makes a row unlike KazQAD's (None if nothing): a missing field, or one of the wrong type."""
    missing = [k for k in ("context", "question", "answers") if not isinstance(row, dict) or k not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("context", "question"):
        if not isinstance(row[key], str):
            return f"'{key}' must be text, got {type(row[key]).__name__}"
    if row.get("title") is not None and not isinstance(row["title"], str):
        return f"'title' must be text, got {type(row['title']).__name__}"
    answers = row["answers"]
    if not isinstance(answers, dict) or "text" not in answers:
        return "'answers' has no 'text' list"
    if not isinstance(answers["text"], list) or not all(isinstance(a, str) for a in answers["text"]):
        return "'answers.text' must be a list of texts"
    starts = answers.get("answer_start")
    if starts is not None and (not isinstance(starts, list)
                               or not all(type(s) is int for s in starts)):
        return "'answers.answer_start' must be a list of whole numbers"
    return None


def split_of(path: Path) -> str:
    """The split a KazQAD file belongs to, from its name ('...-validation.jsonl' -> validation)."""
    words = path.stem.lower().replace("_", "-").replace(".", "-").split("-")
    for word in reversed(words):
        if word in SPLIT_NAMES:
            return SPLIT_NAMES[word]
    return "train"


def read_kazqad_examples(source: Optional[str], hub_id: tuple[str, str] = KAZQAD_HUB_ID) -> dict[str, list[dict]]:
    """KazQAD examples by split, from the hub (source None) or a local JSON Lines file or folder."""
    if source is None:
        return _download_kazqad(hub_id)
    path = Path(source).expanduser()
    if not path.exists():
        given = f"${KAZQAD_SOURCE_ENV}" if os.environ.get(KAZQAD_SOURCE_ENV) == source else "the source"
        raise UserError(f"{given} {source} does not exist: pass a KazQAD JSON Lines file or folder (or a .txt file)")
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json") and p.is_file())
    if not files:
        raise UserError(f"{path} holds no .jsonl files: pass a folder of KazQAD JSON Lines files")
    splits: dict[str, list[dict]] = {}
    for f in files:
        splits.setdefault(split_of(f), []).extend(_read_jsonl(f))
    if not any(splits.values()):
        raise UserError(f"{source} holds no examples")
    return splits


def _download_kazqad(hub_id: tuple[str, str]) -> dict[str, list[dict]]:
    try:
        from datasets import load_dataset

        ds = load_dataset(*hub_id)
    except Exception as e:
        local = ("--source=PATH (KazQAD JSON Lines file or folder, or a .txt file) "
                 f"or set {KAZQAD_SOURCE_ENV}=PATH") if hub_id == KAZQAD_HUB_ID else "--nq_source=PATH (JSON Lines)"
        raise UserError(f"could not load {'/'.join(hub_id)} from the Hugging Face hub ({type(e).__name__}); "
                        f"offline, {offline_hint()}pass a local copy: {local}") from None
    return {SPLIT_NAMES.get(name, name): list(split) for name, split in ds.items()}


def load_kazqad_text(source: Optional[str], nq_translate: bool = False,
                     nq_source: Optional[str] = None) -> tuple[list[str], list[str], str]:
    """Train and val documents from any supported source, and a line describing how they were split.

    KazQAD with a train and a validation split: those splits (so val questions are never trained
    on; the test split is left out for evaluation). One split only: about 10% of the passages held
    out, in groups that share a question (held_out_passages). A plain .txt corpus (documents
    separated by blank lines): a 90/10 split by document. With nq_translate, the
    nq-translate-kk subset (hub, or nq_source) is added to the training documents only."""
    train, val, how = _load_main_text(source_or_env(source))
    if nq_translate or nq_source:
        extra = read_kazqad_examples(nq_source, NQ_TRANSLATE_HUB_ID)
        extra_docs = kazqad_documents(ex for rows in extra.values() for ex in rows)
        train = train + extra_docs
        how += f"; nq-translate-kk: {len(extra_docs)} passages added to train"
    return train, val, how


def _load_main_text(source: Optional[str]) -> tuple[list[str], list[str], str]:
    if source is not None and Path(source).suffix == ".txt" and Path(source).is_file():
        return split_text_corpus(nfc(read_text_file(Path(source))).replace("\r\n", "\n"), source)
    splits = read_kazqad_examples(source)
    if splits.get("train") and splits.get("validation"):
        train, val = kazqad_documents(splits["train"]), kazqad_documents(splits["validation"])
        return train, val, (f"KazQAD train split -> train ({len(train)} passages), "
                            f"validation split -> val ({len(val)} passages)")
    train_rows, val_rows, how = split_rows(splits)
    return kazqad_documents(train_rows), kazqad_documents(val_rows), how


def split_rows(splits: dict[str, list[dict]]) -> tuple[list[dict], list[dict], str]:
    """KazQAD rows to train on and rows held out, split as load_kazqad_text splits the documents:
    the train and validation splits where the source has both, else all rows, with the passages of
    held_out_passages held out."""
    if splits.get("train") and splits.get("validation"):
        return splits["train"], splits["validation"], "KazQAD train split -> train, validation split -> held out"
    passages = kazqad_passages(ex for name in sorted(splits) for ex in splits[name])
    held_out = held_out_passages(passages)
    train = [ex for key, exs in passages.items() if key not in held_out for ex in exs]
    val = [ex for key, exs in passages.items() if key in held_out for ex in exs]
    return train, val, (f"KazQAD {'+'.join(sorted(splits))}: {len(passages) - len(held_out)} passages -> train, "
                        f"{len(held_out)} held out (about 10%, passages that share a question kept together)")


def split_text_corpus(text: str, name: str) -> tuple[list[str], list[str], str]:
    """Train and val documents of a plain-text corpus: documents separated by blank lines, split 90/10
    by document; where those are too few or too uneven for a val split of 5-20% of the text (a corpus
    of one sentence per line has one document), each line is a document instead."""
    docs = [d.strip() + "\n" for d in text.split("\n\n") if d.strip()]
    if len(docs) >= 10:
        train, val = split_documents(docs)
        if 0.05 <= sum(map(len, val)) / sum(map(len, docs)) <= 0.2:
            return train, val, f"{name}: {len(docs)} documents, split 90/10 by document"
    lines = [line.strip() + "\n" for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        split_documents(docs)  # refuses, saying how many documents there are
    train, val = split_documents(lines)
    return train, val, (f"{name}: {len(docs)} blank-line document(s) cannot give a val split of about 10%, "
                        f"so its {len(lines)} lines were split by lines, 90/10")


def held_out_examples(source: Optional[str], split: str) -> tuple[list[dict], set[str], str]:
    """The questions that are fair to ask a model trained on this source, the questions its training
    rows ask (KazQAD pairs a question with several passages, so a held-out passage's question may
    also be asked on a training passage), and a line saying which were taken. With several splits,
    all of `split` (training rows: the train split); with one, only those of the passages that the
    split held out of training (the same split load_kazqad_text makes)."""
    splits = read_kazqad_examples(source_or_env(source))
    if split not in splits:
        raise UserError(f"the source has no '{split}' split (it has: {', '.join(sorted(splits))}): "
                        f"use --split={sorted(splits)[0]}")
    if len(splits) > 1:
        trained = {clean_question(r["question"]) for r in splits.get("train", [])}
        return splits[split], trained, f"all {len(splits[split])} questions of the {split} split"
    train, examples, _ = split_rows(splits)
    n_passages = len(kazqad_passages(examples))
    return examples, {clean_question(r["question"]) for r in train}, (
        f"{len(examples)} questions of the {n_passages} passages held out of training (the source has one split)")


def kazqad_arg_parser(doc: str) -> ArgumentParser:
    """The options every KazQAD prepare script takes."""
    parser = ArgumentParser(doc)
    parser.add_argument("--source", default=None, help="KazQAD JSON Lines file or folder, or a .txt corpus "
                        f"(default: ${KAZQAD_SOURCE_ENV}, else the hub)")
    parser.add_argument("--nq_translate", action="store_true",
                        help="add the nq-translate-kk subset (~61k translated triples) to the training split")
    parser.add_argument("--nq_source", default=None,
                        help="a local copy of nq-translate-kk (JSON Lines file or folder); implies --nq_translate")
    parser.add_argument("--out_dir", default=None, help="where to write the files (default: the script's folder)")
    return parser
