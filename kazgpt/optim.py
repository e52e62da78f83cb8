"""The optimizers and the learning-rate schedule.

Two recipes (TrainConfig.optimizer):
  adamw  AdamW for every parameter (nanoGPT's recipe).
  muon   torch.optim.Muon for the 2-D weight matrices inside the transformer blocks (momentum, then a
         Newton-Schulz orthogonalization of the update), AdamW for everything else: the token and
         position embeddings (the token embedding is also the output layer), LayerNorm gains, biases.

Every parameter group carries its own base rate ("base_lr"); one schedule gives a multiplier that
scales all of them together (lr_multiplier).
"""
from __future__ import annotations

import math

import torch
from torch import nn


OPTIMIZERS = ("adamw", "muon")


def block_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights of the transformer blocks: the hidden matrices that Muon trains."""
    return [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]


def adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], device: str,
          exclude: tuple = ()) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (matmul weights, embeddings) and none on biases and
    LayerNorm gains, for every trainable parameter not in `exclude`; the fused kernel on CUDA and
    CPU (faster per step, BENCHMARKS.md)."""
    excluded = {id(p) for p in exclude}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in excluded]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "base_lr": lr},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "base_lr": lr},
    ]
    fused = device.split(":")[0] in ("cuda", "cpu")
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=fused)


def muon(params: list[nn.Parameter], lr: float, momentum: float) -> torch.optim.Muon:
    """torch.optim.Muon with Nesterov momentum, 5 Newton-Schulz steps, no weight decay, and the
    learning rate scaled by sqrt(max(1, rows/cols)) per matrix ("original", Keller Jordan's rule)."""
    return torch.optim.Muon([{"params": params, "base_lr": lr}], lr=lr, momentum=momentum, weight_decay=0.0,
                            nesterov=True, adjust_lr_fn="original")


def build_optimizers(model: nn.Module, name: str, lr: float, weight_decay: float, betas: tuple[float, float],
                     muon_lr: float, muon_momentum: float, device: str) -> list[torch.optim.Optimizer]:
    """[AdamW] for 'adamw'; [AdamW for the rest, Muon for the block matrices] for 'muon'."""
    if name == "adamw":
        return [adamw(model, lr, weight_decay, betas, device)]
    matrices = block_matrices(model)
    rest = adamw(model, lr, weight_decay, betas, device, exclude=tuple(matrices))
    return [rest, muon(matrices, muon_lr, muon_momentum)]


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
