"""
Export a checkpoint to a Hugging Face `transformers` folder (config.json, model.safetensors, the
tokenizer) that loads with AutoModelForCausalLM and no custom code, ready for
`transformers.pipeline("text-generation", model=folder)` or the hub:

    python export_hf.py --out_dir=out-qazdata-char --export_dir=hf-qazdata-char

GPT-2's architecture becomes a GPT2LMHeadModel, the newer one a PersimmonForCausalLM (kazgpt/hf.py
says why). `init_from=<the folder>` brings it back into train.py and sample.py.

Tokenizers, each a PreTrainedTokenizerFast: GPT-2 BPE -> GPT-2's own vocab.json/merges.txt (from
tiktoken's cached files) as a byte-level BPE tokenizer.json; the Kazakh BPE -> its tokenizer.json; char-level -> an
equivalent tokenizer.json: a BPE model with one entry per character and no merges, so every
character is one token with the same id as in this repo, and a Fuse decoder that joins tokens
without spaces. kazgpt_export.json keeps this repo's own tokenizer spec for the way back.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path


import configurator
from kazgpt.checkpoint import load_checkpoint, model_from_checkpoint, newest_checkpoint
from kazgpt.cli import UserError, run_main
from kazgpt.files import atomic_folder
from kazgpt.hf import EXPORT_RECORD, to_transformers
from kazgpt.tokenizer import EOT, tokenizer_from_spec

GPT2_FILES = {  # where tiktoken fetches GPT-2's BPE files; with TIKTOKEN_CACHE_DIR they come from its cache
    "merges.txt": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "vocab.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


@dataclass
class ExportConfig:
    out_dir: str = "out"  # the run whose checkpoint is exported
    checkpoint: str = "best.pt"  # which file of out_dir; falls back to the other of ckpt.pt/best.pt
    export_dir: str = "hf-export"  # the new folder that receives the transformers model


def char_tokenizer_json(chars: str) -> str:
    from tokenizers import Tokenizer, decoders, models

    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    return tokenizer.to_str()


def gpt2_tokenizer_json(folder: Path) -> str:
    """GPT-2's byte-level BPE as tokenizer.json, from its vocab.json/merges.txt written into folder
    (the files tiktoken caches; with TIKTOKEN_CACHE_DIR set they come from there)."""
    from tiktoken.load import read_file_cached
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    for name, url in GPT2_FILES.items():
        (folder / name).write_bytes(read_file_cached(url))
    tokenizer = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOT])
    return tokenizer.to_str()


def save_tokenizer(spec: dict, folder: Path) -> None:
    """tokenizer.json (and GPT-2's vocab.json/merges.txt) for transformers' PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if spec["kind"] == "tiktoken":  # GPT-2's BPE, the one tiktoken encoding this repo uses
        tokenizer_json = gpt2_tokenizer_json(folder)
    elif spec["kind"] == "hf":
        tokenizer_json = spec["tokenizer_json"]
    else:
        tokenizer_json = char_tokenizer_json(spec["chars"])
    special = {} if spec["kind"] == "char" else {"eos_token": EOT, "bos_token": EOT}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), **special).save_pretrained(folder)


def main(argv: list[str]) -> None:
    cfg = configurator.load_config(ExportConfig, argv, verbose=False)
    path = newest_checkpoint(Path(cfg.out_dir), prefer=cfg.checkpoint)
    ckpt = load_checkpoint(path)
    folder = Path(cfg.export_dir)
    if folder.exists():
        raise UserError(f"{folder} exists: choose a new --export_dir")
    tokenizer = tokenizer_from_spec(ckpt["tokenizer"])
    try:
        hf = to_transformers(model_from_checkpoint(ckpt, path), tokenizer.vocab_size, tokenizer.eot_token)
    except ValueError as e:
        raise UserError(str(e)) from None
    with atomic_folder(folder) as tmp:  # a failure half-way leaves nothing in the way of the next try
        hf.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(ckpt["tokenizer"], tmp)
        record = {"source": str(path), "iter_num": ckpt["iter_num"], "tokenizer": ckpt["tokenizer"]}
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    print(f"exported a {type(hf).__name__} {sorted(p.name for p in folder.iterdir())} to {folder}")
    if ckpt["model_args"].get("span_head"):
        print("its span head stays behind (a transformers language model has no place for it): reading questions "
              "are answered there by generation")


if __name__ == "__main__":
    sys.exit(run_main(main))
