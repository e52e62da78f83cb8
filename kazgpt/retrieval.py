"""Passage retrieval for open-domain question answering: BM25 (the bm25s library, sparse-matrix
scoring) over a collection of passages, with an analyzer for Kazakh.

The analyzer lower-cases (Python's Unicode lower-casing covers әғқңөұүһі), keeps runs of letters
and digits (punctuation goes), drops a short list of Kazakh function and question words, and cuts
every word to its first STEM_LENGTH characters: a crude stemmer that suits an agglutinative
language, where a word's endings (case, plural, possession) follow its stem. BENCHMARKS.md has the
analyzers measured on KazQAD.

A collection is every distinct passage of a KazQAD source, or a user's file: .txt (passages
separated by blank lines, a passage's first line its title when more lines follow; a file
without blank lines has a passage per line) or .jsonl (one {"title", "text"} object a line, or
KazQAD rows). Its index is built once and saved under an index folder, named by a fingerprint of
the collection and the analyzer, so it is reused until either changes.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from kazgpt import REPO_ROOT
from kazgpt.cli import UserError
from kazgpt.files import atomic_folder, json_lines, read_text_file
from kazgpt.kazqad import kazqad_passages, nfc, read_kazqad_examples, schema_problem

STEM_LENGTH = 5
STOPWORDS = frozenset(
    "және мен бен пен да де та те бұл ол осы сол үшін арқылы бойынша кейін дейін деп еді болып болды "
    "бар жоқ қандай қай қашан неше қанша кім не нені неге қалай қайда ма ме ба бе па пе ғана тек әр "
    "бір ең ретінде болған болады оның оны оған онда екен жылы".split())
ANALYZER = f"words-lower-stop{len(STOPWORDS)}-prefix{STEM_LENGTH}"  # part of an index's fingerprint
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


def analyze(text: str, stem_length: Optional[int] = STEM_LENGTH, stopwords: frozenset = STOPWORDS) -> list[str]:
    """The terms of a text, as the index and the queries see them (the arguments are for bench.py's
    comparison of analyzers; stem_length None keeps whole words)."""
    return [w[:stem_length] for w in _WORD.findall(nfc(text).lower()) if w not in stopwords]


# -----------------------------------------------------------------------------
# collections


def kazqad_collection(source: Optional[str]) -> list[Passage]:
    """Every distinct passage of every split of a KazQAD source (None: the hub)."""
    return passages_of(read_kazqad_examples(source))


def passages_of(splits: dict[str, list[dict]]) -> list[Passage]:
    """Every distinct passage of KazQAD examples by split (read_kazqad_examples), in a fixed order."""
    return [Passage(*key) for key in kazqad_passages(ex for name in sorted(splits) for ex in splits[name])]


def read_collection(path: str) -> list[Passage]:
    """A user's collection of passages, from a .txt or .jsonl file (see the module's docstring)."""
    file = Path(path).expanduser()
    if not file.is_file() or file.suffix not in (".jsonl", ".txt", ""):
        raise UserError(f"collection {path} is not a .txt (passages separated by blank lines) or .jsonl "
                        "({\"title\", \"text\"} per line) file")
    text = nfc(read_text_file(file)).replace("\r\n", "\n")
    passages = _jsonl_passages(text, file) if file.suffix == ".jsonl" else _txt_passages(text)
    passages = list(dict.fromkeys(p for p in passages if p.text))
    if not passages:
        raise UserError(f"collection {path} holds no passages")
    return passages


def _txt_passages(text: str) -> list[Passage]:
    blocks = [b for b in text.split("\n\n") if b.strip()]
    if len(blocks) < 2:  # no blank lines: a passage per line
        blocks = text.splitlines()
    passages = []
    for block in blocks:
        lines = [" ".join(line.split()) for line in block.splitlines() if line.strip()]
        if lines:
            passages.append(Passage(lines[0], " ".join(lines[1:])) if len(lines) > 1 else Passage("", lines[0]))
    return passages


def _jsonl_passages(text: str, file: Path) -> list[Passage]:
    passages = []
    for n, row in json_lines(text, file, 'passages ({"title", "text"} per line)'):
        if isinstance(row, dict) and "context" in row and schema_problem(row) is None:
            row = {"title": row.get("title"), "text": row["context"]}  # a KazQAD row
        if not (isinstance(row, dict) and isinstance(row.get("text"), str)
                and isinstance(row.get("title") or "", str)):
            raise UserError(f"{file} line {n} is not a passage: expected an object with a 'text' (and optionally "
                            "a 'title') of text, or a KazQAD row")
        passages.append(Passage(" ".join((row.get("title") or "").split()), " ".join(row["text"].split())))
    return passages


# -----------------------------------------------------------------------------
# the index


class PassageIndex:
    """A BM25 index over passages: search(question) -> [(passage number, score)], best first."""

    def __init__(self, passages: list[Passage], retriever, analyzer: Callable[[str], list[str]] = analyze):
        self.passages, self.retriever, self.analyzer = passages, retriever, analyzer

    @classmethod
    def build(cls, passages: list[Passage], analyzer: Callable[[str], list[str]] = analyze) -> "PassageIndex":
        import bm25s

        retriever = bm25s.BM25()
        # a passage's title is part of its text for retrieval (questions often name the article's subject)
        retriever.index([analyzer(f"{p.title} {p.text}") for p in passages], show_progress=False)
        return cls(passages, retriever, analyzer)

    def search(self, question: str, k: int = 10) -> list[tuple[int, float]]:
        """The k passages (fewer in a smaller collection) that score highest for the question."""
        k = min(k, len(self.passages))
        terms = [t for t in self.analyzer(question) if t in self.retriever.vocab_dict]
        if not terms:  # no word of the question is in the collection: no passage is better than another
            return []
        ids, scores = self.retriever.retrieve([terms], k=k, show_progress=False)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def save(self, folder: Path) -> None:
        """Write the index (made with the module's analyzer) to folder, which must not exist, whole or not at all."""
        with atomic_folder(folder) as tmp:
            self.retriever.save(str(tmp), show_progress=False)
            with open(tmp / "passages.jsonl", "w", encoding="utf-8") as f:
                for p in self.passages:
                    f.write(json.dumps({"title": p.title, "text": p.text}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "PassageIndex":
        import bm25s

        with open(folder / "passages.jsonl", encoding="utf-8") as f:
            passages = [Passage(**json.loads(line)) for line in f]
        return cls(passages, bm25s.BM25.load(str(folder), show_progress=False))


def fingerprint(passages: list[Passage]) -> str:
    digest = hashlib.sha256(ANALYZER.encode())
    for p in passages:
        digest.update(json.dumps([p.title, p.text], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()[:16]


def open_index(passages: list[Passage], index_dir: Optional[str] = None) -> PassageIndex:
    """The index of these passages: loaded from index_dir (None: this repo's data/bm25) if it was
    built before, else built and saved there."""
    root = Path(index_dir).expanduser() if index_dir else REPO_ROOT / "data" / "bm25"
    folder = root / f"bm25-{fingerprint(passages)}"
    if folder.is_dir():  # written whole (atomic_folder), and named by its passages
        return PassageIndex.load(folder)
    index = PassageIndex.build(passages)
    folder.parent.mkdir(parents=True, exist_ok=True)
    index.save(folder)
    return index

