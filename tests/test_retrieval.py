"""Open-domain QA: the Kazakh analyzer, BM25 retrieval and its saved index, collections, eval_qa's
open mode, sample.py --collection, and data/kkwiki/prepare.py on a few local articles."""
import json

import numpy as np
import pytest

from conftest import assert_one_line_error, KAZQAD_VAL, TINY_MODEL, run, write_jsonl
from kazgpt.cli import UserError
from kazgpt.retrieval import Passage, PassageIndex, analyze, kazqad_collection, open_index, read_collection
from kazgpt.qa_examples import sentence_spans


def test_analyzer_lowercases_kazakh_strips_punctuation_and_stems():
    assert analyze("ӘҒҚҢӨҰҮҺІ!") == ["әғқңө"]  # one word, lower-cased, cut to its first 5 letters
    assert analyze("Абай, (1845) — «ақын»; Құнанбайұлы?") == ["абай", "1845", "ақын", "құнан"]
    assert analyze("Абай және Шоқан") == ["абай", "шоқан"]  # 'және' is a stop word
    assert analyze("Абайдың Абайға") == ["абайд", "абайғ"]  # endings past the fifth letter go
    assert analyze("... !!! ___") == []


PASSAGES = [Passage("Абай", "Абай Құнанбайұлы 1845 жылы Шыңғыс тауында туған. Ол қазақ ақыны."),
            Passage("Алматы", "Алматы Қазақстанның ең ірі қаласы. Іле Алатауының етегінде орналасқан."),
            Passage("Балқаш", "Балқаш көлі Қазақстанның шығысында. Көлдің батысы тұщы, шығысы тұзды.")]


def test_search_ranks_the_passage_that_shares_the_words():
    index = PassageIndex.build(PASSAGES)
    assert [i for i, _ in index.search("Балқаш көлінің шығысы қандай?", 3)][0] == 2
    assert index.search("Абай қай жылы туған?", 1)[0][0] == 0
    assert index.search("xyzzy qwerty", 3) == []  # no word of the question is in the collection
    assert [i for i, _ in index.search("Іле өзені", 10)] == [1]  # only the passages that score


def test_index_is_saved_once_and_loaded_after(tmp_path, monkeypatch):
    first = open_index(PASSAGES, str(tmp_path / "ix"))
    [folder] = list((tmp_path / "ix").iterdir())
    assert not [p for p in (tmp_path / "ix").iterdir() if p.name.startswith(".")]  # no temporary left

    def no_rebuild(passages):
        raise AssertionError("the saved index should have been loaded")

    monkeypatch.setattr(PassageIndex, "build", no_rebuild)
    again = open_index(PASSAGES, str(tmp_path / "ix"))
    assert again.passages == PASSAGES
    for question in ("Абай қай жылы туған?", "Іле Алатауы", "тұзды көл"):
        assert again.search(question, 3) == first.search(question, 3)
    monkeypatch.undo()
    other = open_index(PASSAGES[:2], str(tmp_path / "ix"))  # another collection: another index beside it
    assert len(list((tmp_path / "ix").iterdir())) == 2 and len(other.passages) == 2


def test_a_sentence_copied_from_a_kazqad_passage_finds_it(shared_kazqad):
    passages = kazqad_collection(str(shared_kazqad))
    index = PassageIndex.build(passages)
    ranks = []
    for n in range(0, len(passages), 7):
        a, b = max(sentence_spans(passages[n].text), key=lambda s: s[1] - s[0])  # its longest sentence
        found = [i for i, _ in index.search(passages[n].text[a:b], 10)]
        ranks.append(found.index(n) + 1 if n in found else 99)
    assert np.mean(np.array(ranks) == 1) >= 0.9, ranks
    assert max(ranks) <= 10, ranks


def test_collections_from_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("Абай\nАбай ақын.\nОл 1845 жылы туған.\n\nТақырыпсыз бір жол.\n\n\n", encoding="utf-8")
    assert read_collection(str(txt)) == [Passage("Абай", "Абай ақын. Ол 1845 жылы туған."),
                                         Passage("", "Тақырыпсыз бір жол.")]
    lines = tmp_path / "lines.txt"
    lines.write_text("Бірінші сөйлем.\nЕкінші сөйлем.\nБірінші сөйлем.\n", encoding="utf-8")
    assert read_collection(str(lines)) == [Passage("", "Бірінші сөйлем."), Passage("", "Екінші сөйлем.")]
    jsonl = write_jsonl(tmp_path / "c.jsonl", [{"title": "Т", "text": "Мәтін  бір."}, {"text": "Екі."},
                                               {"title": "К", "context": "Үш.", "question": "?",
                                                "answers": {"text": []}}])
    assert read_collection(str(jsonl)) == [Passage("Т", "Мәтін бір."), Passage("", "Екі."), Passage("К", "Үш.")]
    for bad, fragment in (('{"text": 5}\n', "line 1 is not a passage"), ('{"text": "a"}\n[1,\n', "line 2 is not JSON"),
                          ("\n\n", "holds no passages")):
        (tmp_path / "bad.jsonl").write_text(bad, encoding="utf-8")
        with pytest.raises(UserError, match=fragment):
            read_collection(str(tmp_path / "bad.jsonl"))
    with pytest.raises(UserError, match="is not a .txt"):
        read_collection(str(tmp_path))
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match="is not a .txt"):
        read_collection(str(tmp_path / "c.parquet"))


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """A tiny model on the shared KazQAD's Kazakh BPE, trained for a few steps."""
    if not KAZQAD_VAL.exists():
        pytest.skip("no shared KazQAD copy")
    root = tmp_path_factory.mktemp("open")
    run("data/qazdata_bpe/prepare.py", f"--source={KAZQAD_VAL}", f"--out_dir={root / 'data'}", "--vocab_size=512")
    args = [a for a in TINY_MODEL if not a.startswith("--block_size")] + ["--block_size=96"]
    run("train.py", "config/train_qazdata_bpe.py", f"--data_dir={root / 'data'}", f"--out_dir={root / 'out'}",
        *args, "--max_iters=3", "--eval_interval=3")
    return root


def test_eval_qa_open_mode_reports_retrieval_beside_em_f1(bpe_model):
    root = bpe_model
    proc = run("eval_qa.py", f"--out_dir={root / 'out'}", f"--source={KAZQAD_VAL}", "--modes=reading,open",
               "--limit=8", "--max_new_tokens=4", "--device=cpu", f"--index_dir={root / 'ix'}")
    assert "BM25 over 697 passages" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("mode"))
    assert header.split()[-3:] == ["R@1", "R@5", "MRR@10"]
    rows = [json.loads(line) for line in (root / "out" / "eval_qa_validation.jsonl").read_text().splitlines()]
    open_rows = [r for r in rows if r["mode"] == "open"]
    assert len(open_rows) == 8 and all("retrieved" in r and "gold_rank" in r for r in open_rows)
    # the table's retrieval figures are those of the per-question ranks
    ranks = [r["gold_rank"] for r in open_rows]
    expected = [100 * np.mean([r == 1 for r in ranks]), 100 * np.mean([r is not None and r <= 5 for r in ranks]),
                100 * np.mean([1 / r if r else 0 for r in ranks])]
    line = next(line for line in proc.stdout.splitlines() if line.split()[:2] == ["open", "8"])
    assert [float(x) for x in line.split()[4:7]] == pytest.approx(expected, abs=0.051)
    assert list((root / "ix").iterdir())  # the index was saved for the next run


def test_sample_answers_from_a_collection_with_its_source(bpe_model, tmp_path):
    collection = tmp_path / "c.txt"
    collection.write_text("Абай\nАбай Құнанбайұлы 1845 жылы туған.\n\nБалқаш\nБалқаш көлі тұзды.\n", encoding="utf-8")
    common = [f"--out_dir={bpe_model / 'out'}", "--device=cpu", f"--collection={collection}",
              f"--index_dir={tmp_path / 'ix'}", "--max_new_tokens=5"]
    proc = run("sample.py", *common, "--interactive", input_text="Балқаш көлі қандай?\nАбай қашан туған?\n")
    assert proc.stdout.splitlines()[0] == "[source: Балқаш]" and "[source: Абай]" in proc.stdout
    proc = run("sample.py", *common, "--start=Абай қашан туған?", "--num_samples=1")
    assert proc.stdout.startswith("[source: Абай]\nАбай қашан туған?\nАбай\n")  # the question, then its passage
    bad = run("sample.py", *common, "--context=Мәтін.", "--start=Сұрақ?", check=False)
    assert_one_line_error(bad, "--context and --collection")
    assert_one_line_error(run("sample.py", *common, "--start= :", check=False), "--start is empty")


def test_kkwiki_prepare_on_local_articles(tmp_path):
    articles = [{"id": str(i), "title": f"Мақала {i}", "text": f"Қазақстан туралы {i}-мәтін. " * (5 + i % 4)}
                for i in range(60)]
    write_jsonl(tmp_path / "wiki.jsonl", articles)
    out = tmp_path / "kkwiki"
    run("data/kkwiki/prepare.py", f"--source={tmp_path / 'wiki.jsonl'}", f"--out_dir={out}", "--vocab_size=300",
        "--val_fraction=0.2", "--num_proc=2")
    meta = json.loads((out / "meta.json").read_text())
    from kazgpt.tokenizer import HFTokenizer

    tokenizer = HFTokenizer((out / "tokenizer.json").read_text())
    ids = {s: np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")}
    assert meta["train_tokens"] == len(ids["train"]) and meta["val_tokens"] == len(ids["val"]) > 0
    docs = tokenizer.decode(np.concatenate([ids["train"], ids["val"]]).tolist()).split("<|endoftext|>")[:-1]
    assert sorted(docs) == sorted(f"{a['title']}\n{a['text']}" for a in articles)  # every article, whole
    # an existing tokenizer is reused as it is
    run("data/kkwiki/prepare.py", f"--source={tmp_path / 'wiki.jsonl'}", f"--out_dir={tmp_path / 'again'}",
        f"--tokenizer={out}", "--val_fraction=0.2", "--num_proc=1")
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()
    # the hub's files are parquet with the same columns: the same articles, the same tokens
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({k: [a[k] for a in articles] for k in ("id", "title", "text")}), tmp_path / "wiki.parquet")
    run("data/kkwiki/prepare.py", f"--source={tmp_path / 'wiki.parquet'}", f"--out_dir={tmp_path / 'pq'}",
        f"--tokenizer={out}", "--val_fraction=0.2", "--num_proc=1")
    for split in ("train", "val"):
        assert (tmp_path / "pq" / f"{split}.bin").read_bytes() == (tmp_path / "again" / f"{split}.bin").read_bytes()
    bad = run("data/kkwiki/prepare.py", f"--source={tmp_path / 'wiki.jsonl'}", f"--out_dir={tmp_path / 'x'}",
              f"--tokenizer={tmp_path}", check=False)
    assert_one_line_error(bad, "is not a tokenizer.json, nor a folder holding one")
