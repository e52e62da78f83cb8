"""
The GPT language model, in one file: GPT-2's architecture (learned positions, pre-LayerNorm
blocks, GELU MLPs, tied input and output embeddings, optional biases) and three newer choices that
train better from scratch and are train.py's defaults there: rotary positions (RoPE), ReLU² MLPs
and normalized queries and keys (QK-norm). Attention goes through scaled_dot_product_attention
(flash attention where the device has it), and an optional KV cache serves generation
(kazgpt/engine.py). kazgpt/hf.py converts it to and from transformers' GPT-2 and Persimmon classes,
which is how OpenAI's GPT-2 weights come in.

This file knows nothing of command lines: a shape it cannot build is a ValueError.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from kazgpt.kernels import relu_squared, rotary_factors, rotate

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, for the QK-norm too
# targets below the ignored -1 that mark a window's answer span for the span head (kazgpt/dataset.py)
SPAN_START_TARGET, SPAN_END_TARGET, SPAN_BOTH_TARGET = -2, -3, -4
SPAN_LOOKAHEAD = 4  # hidden states the span head reads per position: its own and the next ones'

# the architecture choices of GPTConfig: GPT-2's, and the newer one that train.py uses from scratch
ARCHITECTURES = {
    "gpt2": {"position_encoding": "learned", "mlp_activation": "gelu", "qk_norm": False},
    "newer": {"position_encoding": "rope", "mlp_activation": "relu2", "qk_norm": True},
}


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_ratio: float = 4.0  # the MLP's hidden width over n_embd: GPT-2's 4; narrower is cheaper per step
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    gelu_approximate: str = "none"  # 'none': exact GELU (faster on CPU); 'tanh': GPT-2's, for its weights
    position_encoding: str = "learned"  # 'learned' (GPT-2's position embeddings) or 'rope' (rotary)
    mlp_activation: str = "gelu"  # 'gelu' (GPT-2's) or 'relu2' (ReLU squared)
    qk_norm: bool = False  # each head's queries and keys LayerNorm-ed (no gain, no bias) before attention
    span_head: bool = False  # start and end logits at every position, to point at an answer span (a reader)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.position_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_dim} (n_embd / n_head)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return max(1, round(self.mlp_ratio * self.n_embd))


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to block_size."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype: torch.dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens held


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout, self.qk_norm = config.n_head, config.dropout, config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0,
                rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        B, T, C = x.size()
        heads = self.c_attn(x).view(B, T, 3 * self.n_head, C // self.n_head)  # (B, T, 3nh, hs)
        qk, v = heads.split(2 * self.n_head, dim=2)  # queries and keys are normalized and rotated together
        if self.qk_norm:  # a LayerNorm per head (as transformers' Persimmon has it, so that the model exports)
            qk = F.layer_norm(qk, qk.shape[-1:], eps=LAYER_NORM_EPS)
        if rotary is not None:  # the factors (T, 1, hs) of these T positions
            qk = rotate(qk, *rotary)
        q, k = qk.transpose(1, 2).split(self.n_head, dim=1)  # (B, nh, T, hs) each
        v = v.transpose(1, 2)  # (B, nh, T, hs)
        mask, causal = None, True
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k, v = cache.k[layer, :, :, : start + T], cache.v[layer, :, :, : start + T]  # (B, nh, start+T, hs)
            if start > 0:  # queries at positions start.. see every cached key and the causal part of their own
                causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        dropout_p = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # PyTorch's CPU flash-attention backward is several times slower in bf16 than in fp32
            # (BENCHMARKS.md), so on CPU attention runs in fp32 and only the matmuls in bf16
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                   dropout_p=dropout_p, is_causal=causal).to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        gelu = config.mlp_activation == "gelu"
        self.activation = nn.GELU(approximate=config.gelu_approximate) if gelu else relu_squared
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0,
                rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rotary)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        learned_positions = config.position_encoding == "learned"
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if learned_positions else {}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings
        if config.span_head:
            self.span_head = nn.Linear(config.n_embd * SPAN_LOOKAHEAD, 2, bias=False)
            self.question_match = nn.Parameter(torch.zeros(config.n_embd))  # added to matched passage tokens
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: std 0.02/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings are left out by default, as in the scaling-law papers
        (token embeddings stay in: they are tied to the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None,
                matches: Optional[torch.Tensor] = None):
        """Without targets, the logits of the last position (B, 1, vocab), which is all sampling
        needs. With targets, the mean cross-entropy over the positions whose target is a token and
        their logits (N, vocab), in row-major order: a target of -1 is not counted, and with a span
        head the SPAN_*_TARGETs mark where a window's answer span starts and ends, and the span
        loss is added. matches: see hidden_states."""
        x = self.hidden_states(idx, cache, matches)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, vocab)
        counted = targets >= 0  # (B, T); the output layer runs on these only (a QA batch counts a fifth)
        logits = self.lm_head(x[counted])  # (N, vocab)
        loss = F.cross_entropy(logits, targets[counted])
        if self.config.span_head:
            loss = loss + self.span_loss(self.span_logits(x), targets)
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, cache: Optional[KVCache] = None,
                      matches: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The final normalized hidden states (B, T, C) of the tokens idx (after those in the cache).
        A reader (span head) is told, by matches (B, T) bool, which passage tokens belong to words
        the question shares (DrQA's exact-match feature): a learned vector is added to their embeddings."""
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        if matches is not None and self.config.span_head:
            x = x + matches.unsqueeze(-1).to(x.dtype) * self.question_match
        rotary = None
        if self.config.position_encoding == "rope":
            rotary = rotary_factors(pos, self.config.head_dim)  # cos, sin (T, 1, hs), shared by every layer
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, rotary)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def span_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Start and end logits (B, T, 2) from the hidden states x (B, T, C) of each position and the
        SPAN_LOOKAHEAD - 1 after it: a causal model's position has not seen the words that follow it,
        which show where a span ends."""
        T = x.size(1)
        ahead = F.pad(x, (0, 0, 0, SPAN_LOOKAHEAD - 1))  # (B, T + k - 1, C), zeros past the end
        return self.span_head(torch.cat([ahead[:, i:i + T] for i in range(SPAN_LOOKAHEAD)], dim=-1))  # (B, T, 2)

    @staticmethod
    def span_loss(span_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the start and end logits (B, T, 2) over each window's positions against
        where its answer span starts and ends, over the windows that have one (else 0)."""
        both = targets == SPAN_BOTH_TARGET
        starts, ends = (targets == SPAN_START_TARGET) | both, (targets == SPAN_END_TARGET) | both  # (B, T)
        rows = starts.any(1) & ends.any(1)
        if not rows.any():
            return span_logits.sum() * 0.0  # keeps every parameter in the graph (DDP)
        logits = span_logits[rows].float()  # (R, T, 2)
        return (F.cross_entropy(logits[..., 0], starts[rows].float().argmax(1)) +
                F.cross_entropy(logits[..., 1], ends[rows].float().argmax(1))) / 2

    def add_span_head(self) -> None:
        """A span head and question-match vector, zero-initialized (every span equally likely, matches
        not yet told apart), for finetuning a model without them."""
        self.config.span_head = True
        device = self.lm_head.weight.device
        self.span_head = nn.Linear(self.config.n_embd * SPAN_LOOKAHEAD, 2, bias=False, device=device)
        torch.nn.init.zeros_(self.span_head.weight)
        self.question_match = nn.Parameter(torch.zeros(self.config.n_embd, device=device))

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context window, e.g. to finetune GPT-2 (1024) with a smaller block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def flops_per_token(self, seq_len: Optional[int] = None, counted_share: float = 1.0) -> float:
        """Training FLOPs per token (forward + backward): 6 per parameter plus attention's
        12 * n_layer * n_embd * seq_len (PaLM paper, appendix B), the output layer's only on the
        share of positions whose loss counts (forward runs it on those alone)."""
        c = self.config
        skipped = (1 - counted_share) * c.vocab_size * c.n_embd
        return 6 * (self.num_params() - skipped) + 12 * c.n_layer * c.n_embd * (seq_len or c.block_size)

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, counted_share: float = 1.0) -> float:
        """Model FLOPs utilization: achieved training FLOP/s over the device's peak."""
        return self.flops_per_token(counted_share=counted_share) * tokens_per_second / peak_flops

    def model_args(self) -> dict:
        return asdict(self.config)
