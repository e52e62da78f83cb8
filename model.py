"""
The GPT-2 language model: learned positions, pre-LayerNorm blocks, GELU MLPs (exact GELU for
models trained here, GPT-2's tanh approximation for its weights), tied input and output
embeddings, optional biases, dropout, and attention through scaled_dot_product_attention (flash
attention where the device has it). Loads OpenAI's GPT-2 weights, or any GPT-2 folder saved by
Hugging Face `transformers`, and generates with a KV cache. Three newer choices, off by default here
and on in train.py's defaults for models trained from scratch: rotary positions (RoPE) instead of
learned ones, ReLU-squared MLPs, and RMS-normalized queries and keys (QK-norm).

The model knows nothing of command lines: bad arguments raise ValueError, and the scripts turn
that into a one-line message naming the flag to change.

Generation past block_size (the window policy): the model sees at most block_size tokens with
positions 0..block_size-1. When the window is full and one more token is needed, the context
slides forward to its last `keep = block_size // 2` tokens, which are re-encoded from position 0
(one prefill), and decoding continues with the cache. Every token is thus conditioned on between
`keep` and block_size previous tokens, and the cache stays useful: one prefill per block_size/2
new tokens instead of a full recomputation per token. `generate_without_cache` follows the same
policy by recomputing, and is the reference that the cached path is tested against.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

# transformers keeps GPT-2's Conv1D layers, whose weights are the transpose of nn.Linear's
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_ATTENTION_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not weights


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
    # GPT-2's architecture by default; the newer choices below train better from scratch (BENCHMARKS.md)
    position_encoding: str = "learned"  # 'learned': GPT-2's position embeddings; 'rope': rotary, no embeddings
    mlp_activation: str = "gelu"  # 'gelu' (GPT-2's) or 'relu2' (ReLU squared)
    qk_norm: bool = False  # each head's queries and keys RMS-normalized before attention

    def __post_init__(self):
        choices = {"gelu_approximate": ("none", "tanh"), "position_encoding": ("learned", "rope"),
                   "mlp_activation": ("gelu", "relu2")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be {' or '.join(repr(a) for a in allowed)}, got '{getattr(self, name)}'")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.mlp_ratio) and round(self.mlp_ratio * self.n_embd) >= 1):
            raise ValueError(f"mlp_ratio must give the MLP at least one hidden unit (mlp_ratio x n_embd), "
                             f"got {self.mlp_ratio}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.position_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_dim} (n_embd / n_head)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return round(self.mlp_ratio * self.n_embd)

    @property
    def num_weights(self) -> int:
        """The parameters of the model this config gives (the token embedding counted once: it is
        the output layer too), known before any is allocated."""
        n, h, bias = self.n_embd, self.mlp_hidden, int(self.bias)
        block = (2 * n * (1 + bias)  # ln_1, ln_2
                 + n * 3 * n + 3 * n * bias + n * n + n * bias  # attention: c_attn, c_proj
                 + n * h + h * bias + h * n + n * bias)  # MLP: c_fc, c_proj
        positions = self.block_size * n if self.position_encoding == "learned" else 0
        return self.vocab_size * n + positions + self.n_layer * block + n * (1 + bias)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to block_size."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype: torch.dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens held

    def reset(self) -> None:
        self.length = 0


ROPE_BASE = 10000.0


def rotary_factors(pos: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors (T, 1, head_dim) that rotate() takes for heads laid out (B, T, nh, hs), in float32:
    with angles pos * theta_i, theta_i = ROPE_BASE^(-2i/head_dim) for i < head_dim/2, cos of each angle
    twice (the two halves of a head) and its sine as (-sin, sin)."""
    inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device) / head_dim)
    angles = torch.outer(pos.float(), inv_freq)  # (T, hs/2)
    cos, sin = angles.cos().repeat(1, 2), torch.cat([-angles.sin(), angles.sin()], dim=-1)
    return cos.unsqueeze(1), sin.unsqueeze(1)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + (x with its halves swapped) * sin: each pair (x[i], x[i + hs/2]) turned by its angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x2, x1], dim=-1).mul_(sin).addcmul_(x, cos)


class _Rotate(torch.autograd.Function):
    """rotate() with its backward written out: the gradient turned back by the same angles (sin
    negated). It saves only the factors, and costs fewer ops than autograd's backward (BENCHMARKS.md)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _turn(_at_least_float32(x), cos, sin).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _turn(_at_least_float32(grad), cos, sin.neg()).to(grad.dtype), None, None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position encoding of x (..., hs), in float32: the pair (x[i], x[i + hs/2]) turned by its
    position's angle i (the factors of rotary_factors, which broadcast over the dimensions before hs)."""
    return _Rotate.apply(x, cos, sin)


class _RMSNormalize(torch.autograd.Function):
    """rms_normalize() with its backward written out, in float32: with n = x r, r = 1 / rms(x), the
    gradient is r (g - n mean(g n)). It saves n and r, and costs fewer ops than autograd's backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = _at_least_float32(x)
        r = torch.rsqrt(x32.square().mean(-1, keepdim=True).add_(eps))
        n = x32 * r
        ctx.save_for_backward(n, r)
        return n.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        n, r = ctx.saved_tensors
        g = _at_least_float32(grad)
        return (g - n * (g * n).mean(-1, keepdim=True)).mul_(r).to(grad.dtype), None


def rms_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x over its last dimension scaled to root-mean-square 1 (no gain); on CPU this costs less,
    forward and backward, than F.rms_norm (BENCHMARKS.md)."""
    return _RMSNormalize.apply(x, eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.qk_norm = config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0,
                rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        B, T, C = x.size()
        heads = self.c_attn(x).view(B, T, 3 * self.n_head, C // self.n_head)  # (B, T, 3nh, hs): q, k, v heads
        qk, v = heads.split(2 * self.n_head, dim=2)  # queries and keys are normalized and rotated together
        if self.qk_norm:
            qk = rms_normalize(qk)
        if rotary is not None:  # the factors (T, 1, hs) of these T positions
            qk = rotate(qk, *rotary)
        q, k = qk.transpose(1, 2).split(self.n_head, dim=1)  # (B, nh, T, hs) each
        v = v.transpose(1, 2)  # (B, nh, T, hs)
        mask, causal = None, True
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k = cache.k[layer, :, :, : start + T]  # (B, nh, start+T, hs)
            v = cache.v[layer, :, :, : start + T]
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


class _ReLUSquared(torch.autograd.Function):
    """relu(x)^2 with its backward written out: it saves r = relu(x) and returns 2 r g, in fewer ops
    than autograd's (BENCHMARKS.md)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r.square()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (r,) = ctx.saved_tensors
        return (r + r).mul_(grad)


class ReLUSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReLUSquared.apply(x)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        gelu = config.mlp_activation == "gelu"
        self.activation = nn.GELU(approximate=config.gelu_approximate) if gelu else ReLUSquared()
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


def physical_memory() -> Optional[int]:
    """This machine's RAM in bytes, where the system says (Linux, macOS), else None."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        # built in CPU memory first (then moved): a model whose float32 weights alone exceed it would
        # only be found out after minutes of building layers one by one, or by the kernel's OOM killer
        needed, ram = 4 * config.num_weights, physical_memory()
        if ram is not None and needed > ram:
            raise MemoryError(f"tried to allocate {needed / 2**30:,.1f} GiB for the weights of "
                              f"{config.num_weights:,} parameters, more than this machine's {ram / 2**30:,.1f} GiB")
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

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None):
        """Logits for every position and the mean cross-entropy when targets are given (-1 is
        ignored); otherwise logits for the last position only, which is all sampling needs."""
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.position_encoding == "rope":
            rotary = rotary_factors(pos, self.config.head_dim)  # cos, sin (T, 1, hs), shared by every layer
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, rotary)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.length += T
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            return logits, loss
        return self.lm_head(x[:, [-1], :]), None  # (B, 1, vocab)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context window, e.g. to finetune GPT-2 (1024) with a smaller block_size."""
        if block_size > self.config.block_size:
            raise ValueError(f"block_size {block_size} is larger than the model's {self.config.block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_path: str, dropout: float = 0.0) -> "GPT":
        """OpenAI's GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl) from the Hugging Face hub, or a
        local folder holding a transformers GPT2LMHeadModel. Loading errors propagate; a model this
        GPT cannot hold raises ValueError."""
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(name_or_path)
        c = hf.config
        approximate = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(c.activation_function)
        if approximate is None:
            raise ValueError(f"it uses activation '{c.activation_function}'; this GPT has GELU only (gelu, gelu_new)")
        config = GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                           n_embd=c.n_embd, mlp_ratio=(c.n_inner or 4 * c.n_embd) / c.n_embd, dropout=dropout,
                           bias=True, gelu_approximate=approximate)
        model = cls(config)
        sd = model.state_dict()
        hf_sd = {k: v for k, v in hf.state_dict().items() if not k.endswith(HF_ATTENTION_BUFFERS)}
        missing = set(sd) - set(hf_sd)
        if missing:
            raise ValueError(f"it lacks weights {sorted(missing)[:3]}: it is not a GPT-2 checkpoint")
        with torch.no_grad():
            for k, v in hf_sd.items():
                if k in sd:
                    sd[k].copy_(v.t() if k.endswith(HF_CONV1D_WEIGHTS) else v)
        return model

    def flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Training FLOPs per token (forward + backward): 6 per parameter plus attention's
        12 * n_layer * n_embd * seq_len (PaLM paper, appendix B)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * (seq_len or c.block_size)

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float) -> float:
        """Model FLOPs utilization: achieved training FLOP/s over the device's peak."""
        return self.flops_per_token() * tokens_per_second / peak_flops

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled tokens; see generate_tokens for options."""
        new = list(generate_tokens(self, idx, max_new_tokens, **kwargs))
        return torch.cat([idx, *new], dim=1)

    def model_args(self) -> dict:
        return asdict(self.config)


# -----------------------------------------------------------------------------
# sampling: small pure functions, composed by generate_tokens


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                      top_p: Optional[float] = None, greedy: bool = False,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row of logits (B, vocab) -> (B, 1)."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    # shifted so that the largest is 0, and divided in float64: a tiny temperature sends the others to
    # -inf (one token left, as greedy) instead of overflowing to inf and nan
    logits = logits.float()
    logits = ((logits - logits.amax(dim=-1, keepdim=True)).double() / temperature).float()
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def prefill(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Encode a whole context into an empty cache; logits (B, vocab) for the next token."""
    cache.reset()
    return model(idx, cache=cache)[0][:, -1, :]


def decode_one_token(model: GPT, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Append one token (B, 1) to the cache; logits (B, vocab) for the next token."""
    return model(token, cache=cache)[0][:, -1, :]


def _model_dtype(model: GPT, idx: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(idx.device.type):
        return torch.get_autocast_dtype(idx.device.type)
    return model.lm_head.weight.dtype


@torch.no_grad()
def generate_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
                    generator: Optional[torch.Generator] = None, vocab_size: Optional[int] = None,
                    decode_step=decode_one_token, constraint=None) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens new tokens (B, 1) one at a time, with a KV cache and the window policy
    described at the top of this file. Only ids below vocab_size are sampled (the model's own
    vocabulary may be padded past its tokenizer's). `decode_step` may be a compiled decode_one_token.
    `constraint`, if given, has mask(logits) -> logits, applied before each choice, and step(token),
    told each token chosen (kazgpt.engine.SpanConstraint keeps an answer to runs of a passage)."""
    vocab = vocab_size or model.config.vocab_size
    block = model.config.block_size
    keep = max(1, block // 2)
    cache = KVCache(model.config, idx.size(0), idx.device, _model_dtype(model, idx))
    tokens = idx
    logits = prefill(model, tokens[:, -block:], cache)
    for _ in range(max_new_tokens):
        logits = logits[:, :vocab] if constraint is None else constraint.mask(logits[:, :vocab])
        nxt = sample_next_token(logits, temperature, top_k, top_p, greedy, generator)
        if constraint is not None:
            constraint.step(nxt.item())
        yield nxt
        tokens = torch.cat([tokens, nxt], dim=1)
        if cache.length == block:  # the window is full: slide it to the last `keep` tokens
            logits = prefill(model, tokens[:, -keep:], cache)
        else:
            logits = decode_step(model, nxt, cache)


@torch.no_grad()
def generate_without_cache(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                           top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
                           generator: Optional[torch.Generator] = None,
                           vocab_size: Optional[int] = None) -> torch.Tensor:
    """The reference for generate_tokens: the same window policy, recomputing the whole context
    for every new token."""
    vocab = vocab_size or model.config.vocab_size
    block = model.config.block_size
    keep = max(1, block // 2)
    start = max(0, idx.size(1) - block)  # the window's first token
    tokens = idx
    for _ in range(max_new_tokens):
        if tokens.size(1) - start > block:
            start = tokens.size(1) - keep
        logits = model(tokens[:, start:])[0][:, -1, :vocab]
        nxt = sample_next_token(logits, temperature, top_k, top_p, greedy, generator)
        tokens = torch.cat([tokens, nxt], dim=1)
    return tokens
