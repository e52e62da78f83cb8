"""The optimizers and the learning-rate schedule.

Every parameter group carries its own base rate ("base_lr"); one schedule gives a multiplier that
scales all of them together (lr_multiplier).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], device: str):
    """AdamW with weight decay on matrices (matmul weights, embeddings) and none on biases and
    LayerNorm gains; the fused kernel on CUDA and CPU (faster per step, BENCHMARKS.md)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "base_lr": lr},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "base_lr": lr},
    ]
    fused = device.split(":")[0] in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def lr_multiplier(it: int, warmup_iters: int, decay_iters: int, min_ratio: float) -> float:
    """Linear warmup from 1/(warmup_iters+1) (never 0) to 1, then cosine decay to min_ratio at
    decay_iters, and min_ratio after."""
    if it < warmup_iters:
        return (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_ratio
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


def set_lr(optimizers: list, multiplier: float) -> None:
    """Every group of every optimizer at its base rate times the schedule's multiplier."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier
