"""The prepare scripts on small local data, tokenizer round trips on Kazakh, bits per byte,
a Kazakh-BPE checkpoint sampled through sample.py, and finetuning a local GPT-2."""
import json
import math

import numpy as np
import pytest

from kazgpt.dataset import bits_per_byte
from kazgpt.kazqad import load_kazqad_text
from kazgpt.tokenizer import CharTokenizer, HFTokenizer, TiktokenTokenizer, train_byte_level_bpe
from conftest import KAZAKH_LETTERS, TINY_MODEL, make_examples, read_log, run, write_jsonl, write_kazqad_source

KAZAKH_TEXT = (f"Қазақ тілінде {KAZAKH_LETTERS} әріптері бар: әке, ғалым, қала, аң, өзен, ұлт, үй, һәм, із."
               "\n«Сөз» — 2024 ж.")


def needs_tiktoken():
    try:
        return TiktokenTokenizer("gpt2")
    except Exception as e:
        pytest.skip(f"GPT-2 BPE files unavailable offline ({e}); set TIKTOKEN_CACHE_DIR")


@pytest.fixture(scope="module")
def kazqad_src(tmp_path_factory):
    return write_kazqad_source(tmp_path_factory.mktemp("kazqad"), 30)


def test_layout_and_split(kazqad_src):
    train, val, how = load_kazqad_text(str(kazqad_src))
    assert "train split -> train" in how and len(train) == 24 and len(val) == 6  # passages, each written once
    doc = train[0]
    title, context, *qa = doc.rstrip("\n").split("\n")
    assert title == "Тақырып 0" and context.startswith("Бұл 0-мәтін.")
    assert qa == ["Өзеннің ұзындығы қанша (0-0)?: 100 шақырым", "Өзеннің ұзындығы қанша (0-1)?: 100 шақырым"]
    assert set(val).isdisjoint(train)


def test_held_out_passages_keep_their_shared_questions_together():
    """KazQAD asks a question on several passages: passages that share one (here in chains: p shares
    a question with p+1 within each block of three) are held out together or not at all."""
    from kazgpt.kazqad import held_out_passages, kazqad_passages

    rows = make_examples(30)
    for row in rows:
        p, q = (int(x) for x in row["question"].split("(")[1].rstrip(")?").split("-"))
        if q == 1 and p % 3 != 2:
            row["question"] = f"Ортақ сұрақ ({p})?"  # asked on p (as q 1) and on p+1 (as q 0, below)
        if q == 0 and p % 3 != 0:
            row["question"] = f"Ортақ сұрақ ({p - 1})?"
    passages = kazqad_passages(rows)
    held = held_out_passages(passages)
    blocks = {int(title.split()[1]) // 3 for title, _ in held}
    assert held == {key for key in passages if int(key[0].split()[1]) // 3 in blocks}  # whole blocks only
    assert len(held) == 3  # 10% of 30 passages: one block
    assert held_out_passages(dict(reversed(list(passages.items())))) == held  # not the file's order


def test_single_split_is_split_by_document(tmp_path):
    path = write_jsonl(tmp_path / "only.jsonl", make_examples(20))
    train, val, how = load_kazqad_text(str(path))
    assert (len(train), len(val)) == (18, 2) and "2 held out" in how
    assert load_kazqad_text(str(path))[:2] == (train, val)  # deterministic
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"Құжат {i}\nжалғасы {i}" for i in range(30)), encoding="utf-8")
    train, val, _ = load_kazqad_text(str(text))
    assert len(train) + len(val) == 30 and len(val) == 3
    assert all(d.startswith("Құжат") and "жалғасы" in d for d in train + val)  # never cut inside a document


def test_nq_translate_goes_to_train_only(kazqad_src, tmp_path):
    extra = write_jsonl(tmp_path / "nq.jsonl", [dict(r, context="Аударма " + r["context"]) for r in make_examples(5)])
    train, val, how = load_kazqad_text(str(kazqad_src), nq_source=str(extra))
    base_train, base_val, _ = load_kazqad_text(str(kazqad_src))
    assert val == base_val and len(train) == len(base_train) + 5 and "nq-translate-kk: 5" in how


@pytest.mark.parametrize("kind", ["char", "gpt2", "kazakh_bpe"])
def test_round_trip(kind, tmp_path):
    if kind == "char":
        tok = CharTokenizer("".join(sorted(set(KAZAKH_TEXT))))
    elif kind == "gpt2":
        tok = needs_tiktoken()
    else:
        tok = HFTokenizer(train_byte_level_bpe([KAZAKH_TEXT[:40], "басқа мәтін"], 300))
    ids = tok.encode(KAZAKH_TEXT)
    assert tok.decode(ids) == KAZAKH_TEXT
    assert max(ids) < tok.vocab_size


def test_bits_per_byte_by_hand():
    # 'әә' is 2 tokens char-level and 4 UTF-8 bytes; a loss of ln 4 nats per token is 2 bits per
    # token, so 4 bits over 4 bytes: 1 bit per byte
    assert bits_per_byte(math.log(4), tokens=2, text_bytes=4) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2), tokens=10, text_bytes=5) == pytest.approx(2.0)


def test_prepare_qazdata_gpt2(kazqad_src, tmp_path):
    tok = needs_tiktoken()
    run("data/qazdata/prepare.py", f"--source={kazqad_src}", f"--out_dir={tmp_path}")
    meta = json.loads((tmp_path / "meta.json").read_text())
    ids = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    assert meta["tokenizer"] == {"kind": "tiktoken", "name": "gpt2"} and meta["val_tokens"] == len(ids)
    docs = tok.decode(ids.tolist()).split("<|endoftext|>")
    assert docs[-1] == "" and len(docs) - 1 == 6 and docs[0].startswith("Тақырып")
    text_bytes = sum(len(d.encode()) for d in docs)
    assert meta["val_bytes"] == text_bytes


def test_kazakh_bpe_prepare_train_and_sample(kazqad_src, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    proc = run("data/qazdata_bpe/prepare.py", f"--source={kazqad_src}", f"--out_dir={data}", "--vocab_size=400")
    assert "characters per token on val: Kazakh BPE" in proc.stdout
    meta = json.loads((data / "meta.json").read_text())
    assert meta["tokenizer"] == {"kind": "hf", "file": "tokenizer.json"} and meta["vocab_size"] == 400
    run("train.py", "config/train_qazdata_bpe.py", f"--data_dir={data}", f"--out_dir={out}", *TINY_MODEL,
        "--max_iters=20", "--eval_interval=10")
    evals = [e for e in read_log(out) if "val_bpb" in e]
    for e in evals:  # the logged bpb is val loss in bits per byte of val text
        assert e["val_bpb"] == pytest.approx(e["val_loss"] * meta["val_tokens"] / meta["val_bytes"] / math.log(2))
    (data / "tokenizer.json").unlink()  # the checkpoint alone must be enough to sample
    proc = run("sample.py", f"--out_dir={out}", "--device=cpu", "--start=Өзеннің ұзындығы қанша?:", "--num_samples=1",
               "--max_new_tokens=30")
    assert proc.stdout.startswith("Өзеннің ұзындығы қанша?:") and len(proc.stdout) > 40


def test_finetune_local_gpt2(kazqad_src, tmp_path):
    """init_from a local Hugging Face GPT-2 folder, on the GPT-2 BPE dataset, for a few steps."""
    needs_tiktoken()
    transformers = pytest.importorskip("transformers")
    hf_dir, data, out = tmp_path / "tiny-gpt2", tmp_path / "data", tmp_path / "out"
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(hf_dir)
    run("data/qazdata/prepare.py", f"--source={kazqad_src}", f"--out_dir={data}")
    proc = run("train.py", "config/finetune_qazdata.py", f"--data_dir={data}", f"--out_dir={out}",
               f"--init_from={hf_dir}",
               "--device=cpu", "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=2", "--max_iters=6",
               "--eval_interval=3", "--eval_iters=2", "--learning_rate=1e-3")
    assert "initializing from transformers weights" in proc.stdout
    evals = [e for e in read_log(out) if "val_loss" in e]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    proc = run("sample.py", f"--out_dir={out}", "--device=cpu", "--start=Қазақстан", "--num_samples=1",
               "--max_new_tokens=8", "--top_k=1")
    assert proc.stdout.startswith("Қазақстан")


def test_openwebtext_prepare_local_formats(tmp_path):
    needs_tiktoken()
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    docs = [f"Document {i}: the quick brown fox, {'әріп ' * (i % 7)}jumps over the lazy dog." for i in range(3000)]
    pq.write_table(pa.table({"text": docs[:1000]}), src / "a.parquet")
    write_jsonl(src / "b.jsonl", [{"text": d} for d in docs[1000:2000]])
    (src / "c.txt").write_text("\n\n".join(docs[2000:]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = run("data/openwebtext/prepare.py", f"--source={src}", f"--out_dir={out}", "--val_fraction=0.05",
               "--num_proc=2")
    assert "3,000 documents" in proc.stdout
    meta = json.loads((out / "meta.json").read_text())
    tok = TiktokenTokenizer("gpt2")
    val_docs = tok.decode(np.fromfile(out / "val.bin", dtype=np.uint16).tolist()).split("<|endoftext|>")[:-1]
    train_docs = tok.decode(np.fromfile(out / "train.bin", dtype=np.uint16).tolist()).split("<|endoftext|>")[:-1]
    assert sorted(val_docs + train_docs) == sorted(docs)  # every document once, whole
    assert 50 < len(val_docs) < 250 and meta["val_tokens"] == sum(len(tok.encode(d)) + 1 for d in val_docs)
    assert not list(out.glob(".*partial"))
