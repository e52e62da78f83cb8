"""
Sample from a trained model, or from OpenAI's GPT-2:

    python sample.py --out_dir=out-qazdata-char --start="Амазонка бассейні картада қайда орналасқан?:"
    python sample.py --init_from=gpt2-xl --start="FILE:prompt.txt" --num_samples=3
    python sample.py --out_dir=out-qazdata-char --interactive   # type questions, answers stream back

A checkpoint carries its model arguments and tokenizer, so sampling needs nothing but out_dir.
Settings are the SampleConfig fields below (see configurator.py for how overrides work).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import configurator
from common import (TiktokenTokenizer, UserError, autocast_context, find_checkpoint, format_qa, load_checkpoint,
                    nfc, resolve_device, resolve_dtype, run_main, tokenizer_from_spec)
from model import GPT, GPTConfig, decode_one_token, generate_tokens


@dataclass
class SampleConfig:
    init_from: str = "resume"  # 'resume' (the checkpoint in out_dir), 'gpt2*', or a local Hugging Face GPT-2 folder
    out_dir: str = "out"
    checkpoint: str = "best.pt"  # which file of out_dir; falls back to the other of ckpt.pt/best.pt
    start: str = "\n"  # the prompt, or "FILE:path" to read it from a file
    num_samples: int = 10
    max_new_tokens: int = 500
    temperature: float = 0.8  # below 1 sharpens the distribution, above 1 flattens it
    top_k: Optional[int] = 200  # sample among the k most likely tokens only; None: all
    top_p: Optional[float] = None  # sample among the most likely tokens that cover probability top_p; None: all
    seed: int = 1337
    device: Optional[str] = None  # None: cuda, then mps, then cpu
    dtype: Optional[str] = None  # None: bfloat16 on CUDA where supported (else float16), float32 elsewhere
    compile: bool = False  # compile the one-token decode step: ~20 s of compiling, same tokens; on CPU it does not pay
    interactive: bool = False  # read questions from stdin, stream each answer; Ctrl-D ends


def check_ranges(cfg: SampleConfig) -> None:
    if cfg.max_new_tokens <= 0:
        raise UserError(f"max_new_tokens must be at least 1, got {cfg.max_new_tokens}")
    if cfg.num_samples <= 0:
        raise UserError(f"num_samples must be at least 1, got {cfg.num_samples}")
    if not cfg.temperature > 0:
        raise UserError(f"temperature must be above 0, got {cfg.temperature} (for the most likely tokens use --top_k=1)")
    if cfg.top_k is not None and cfg.top_k <= 0:
        raise UserError(f"top_k must be at least 1 (or None), got {cfg.top_k}")
    if cfg.top_p is not None and not 0 < cfg.top_p <= 1:
        raise UserError(f"top_p must be in (0, 1] (or None), got {cfg.top_p}")


def load_model(init_from: str, out_dir: str, checkpoint: str, device: str):
    """The model (in eval mode, on device) and its tokenizer."""
    if init_from == "resume":
        ckpt = load_checkpoint(find_checkpoint(Path(out_dir), checkpoint))
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        tokenizer = tokenizer_from_spec(ckpt["tokenizer"])
    elif init_from.startswith("gpt2") or Path(init_from).is_dir():
        model = GPT.from_pretrained(init_from)
        tok_file = Path(init_from) / "tokenizer.json"
        tokenizer = tokenizer_from_spec({"kind": "hf", "tokenizer_json": tok_file.read_text(encoding="utf-8")}) if tok_file.exists() else TiktokenTokenizer("gpt2")
    else:
        raise UserError(f"init_from must be resume, gpt2, gpt2-medium, gpt2-large, gpt2-xl or a local GPT-2 folder; got '{init_from}'")
    model.eval().to(device)
    return model, tokenizer


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise UserError(f"prompt file {path} not found (from --start=FILE:{path})")
        try:
            return nfc(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"prompt file {path} is not UTF-8 text") from None
    return nfc(start)


class StreamDecoder:
    """Turns tokens into text as they come, holding back only the tokens of a character that is
    not complete yet (a multi-byte character split across BPE tokens), so each piece is decoded once."""

    def __init__(self, tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def add(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd"):  # an unfinished UTF-8 sequence: wait for the next token
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        """What is still held back at the end: bytes that never completed a character, shown as U+FFFD."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


def main() -> None:
    cfg = configurator.load_config(SampleConfig, sys.argv[1:], verbose=False)
    check_ranges(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, cfg.checkpoint, device)
    decode_step = torch.compile(decode_one_token) if cfg.compile else decode_one_token
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def encode(prompt: str) -> list[int]:
        ids = tokenizer.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty: give a --start text")
        return ids

    def stream(ids: list[int]):
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.no_grad(), autocast_context(device, dtype):
            for token in generate_tokens(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                                         generator=generator, decode_step=decode_step):
                yield token.item()

    if cfg.interactive:
        print("Ask a question (Ctrl-D to end).", file=sys.stderr)
        for line in sys.stdin:
            question = " ".join(nfc(line).split())
            if not question:
                continue
            decoder = StreamDecoder(tokenizer)
            try:
                ids = encode(format_qa(question))
            except UserError as e:  # one bad question does not end the session
                print(f"error: {e}", file=sys.stderr, flush=True)
                continue
            for token in stream(ids):
                piece = decoder.add(token)
                if "\n" in piece:  # an answer ends at the end of its line
                    print(piece.split("\n")[0], flush=True)
                    break
                print(piece, end="", flush=True)
            else:
                print(flush=True)
        return

    prompt = read_prompt(cfg.start)
    ids = encode(prompt)
    for _ in range(cfg.num_samples):
        decoder = StreamDecoder(tokenizer)
        print(prompt, end="", flush=True)
        for token in stream(ids):
            print(decoder.add(token), end="", flush=True)
        print(decoder.flush() + "\n---------------", flush=True)


if __name__ == "__main__":
    run_main(main)
