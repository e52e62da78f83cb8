"""The optimizers and the learning-rate schedule.

Two recipes (TrainConfig.optimizer):
  adamw  AdamW for every parameter (nanoGPT's recipe).
  muon   Muon for the 2-D weight matrices inside the transformer blocks (momentum, then a
         Newton-Schulz orthogonalization of the update), AdamW for everything else: the token
         embedding (also the output layer), learned position embeddings if any, LayerNorm gains, biases.

Every parameter group carries its own base rate ("base_lr"); one schedule gives a multiplier that
scales all of them together (lr_multiplier).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from kazgpt.cli import UserError

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


@dataclass(frozen=True)
class NewtonSchulz:
    """An orthogonalization X -> ~UV^T (X = USV^T) by quintic steps X <- aX + bAX + cA^2X, A = XX^T,
    one (a, b, c) per step, from X scaled so that its largest singular value is at most 1: by its
    Frobenius norm ('frobenius', torch.optim.Muon's), or by ||A^2||_F^(1/4) = (sum of s^8)^(1/8)
    ('spectral'), a bound on the largest singular value that is much closer to it, so that fewer
    steps bring the small singular values up."""
    coefficients: tuple[tuple[float, float, float], ...]
    scaling: str

    def __post_init__(self):
        if self.scaling not in ("frobenius", "spectral"):  # any other word would fall back to 'frobenius' unseen
            raise ValueError(f"scaling must be 'frobenius' or 'spectral', got {self.scaling!r}")


# torch.optim.Muon's (Keller Jordan's) iteration: five equal steps, every singular value of X from
# 0.001 of the Frobenius norm upward ending in [0.47, 1.2]
TORCH_NEWTON_SCHULZ = NewtonSchulz(((3.4445, -4.7750, 2.0315),) * 5, "frobenius")
# Three steps fitted for this repo (the largest |log s_final| over s in [0.01, 1] made as small as
# Nelder-Mead found from Jordan's): every singular value from 0.01 of the bound upward ends in
# [0.64, 1.5] (tests/test_optim.py). Beside five of torch's it trains to the same loss (BENCHMARKS.md).
NEWTON_SCHULZ = NewtonSchulz(((4.6418, -7.5473, 3.499), (3.705, -3.9674, 1.1001), (3.9063, -4.4304, 1.4535)),
                             "spectral")


def orthogonalize(updates: torch.Tensor, iteration: NewtonSchulz = NEWTON_SCHULZ, eps: float = 1e-7) -> torch.Tensor:
    """A batch of matrices (n, rows, cols) orthogonalized all at once by `iteration`, on their short
    side s. Matrices at least twice as long (l) as wide, in float32 or float64, take their steps on A
    alone (every iterate is P X with P a polynomial in A; with Q = aI + bA + cA^2 a step is P <- QP
    and A <- QAQ, as Q and A commute), so that X is multiplied only twice: 4 s^2 l FLOPs in all and
    8 s^3 a step, against 4 s^2 l + 2 s^3 a step, with the same result to rounding
    (tests/test_optim.py). Not in bf16: A's rounding compounds there."""
    tall = updates.size(-2) > updates.size(-1)
    x = updates.mT if tall else updates
    # X's scaling goes onto the small matrices that multiply it and onto A, never onto X itself (X is large)
    gram = x @ x.mT  # (n, s, s)
    frobenius = gram.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None].clamp(min=eps**2)  # trace(A) = ||X||_F^2
    scale, gram = frobenius.rsqrt(), gram / frobenius
    square = gram @ gram
    if iteration.scaling == "spectral":
        bound = square.norm(dim=(-2, -1), keepdim=True).clamp(min=eps**4)  # (sum of s^8)^(1/2), at most 1 here
        scale, gram, square = scale * bound.rsqrt().sqrt(), gram / bound.sqrt(), square / bound
    by_gram = x.size(-1) >= 2 * x.size(-2) and x.dtype in (torch.float32, torch.float64)
    poly = None
    last = len(iteration.coefficients) - 1
    for step, (a, b, c) in enumerate(iteration.coefficients):
        if step == 0:  # A^2 is at hand from the scaling
            q = square.mul(c).add_(gram, alpha=b)
        else:
            q = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        q.diagonal(dim1=-2, dim2=-1).add_(a)  # aI + bA + cA^2
        if by_gram:
            poly = q if poly is None else q @ poly
            if step < last:  # the last step's A would go unused
                gram = q @ (gram @ q)
        else:
            x = (q * scale if step == 0 else q) @ x
            if step < last:
                gram = x @ x.mT
    if by_gram:
        x = (poly * scale) @ x
    return x.mT if tall else x


def orthogonalize_all(updates: list[torch.Tensor], dtype: torch.dtype,
                      iteration: NewtonSchulz = NEWTON_SCHULZ) -> list[torch.Tensor]:
    """Each update matrix orthogonalized (in dtype, returned in its own), the matrices of one shape in
    one batch; a tall matrix joins the wide ones of its transposed shape."""
    tall = [u.size(0) > u.size(1) for u in updates]
    wide = [u.mT if t else u for u, t in zip(updates, tall)]
    by_shape: dict[torch.Size, list[int]] = {}
    for i, w in enumerate(wide):
        by_shape.setdefault(w.shape, []).append(i)
    directions: list[Optional[torch.Tensor]] = [None] * len(updates)
    for indices in by_shape.values():
        for i, d in zip(indices, orthogonalize(torch.stack([wide[i] for i in indices]).to(dtype), iteration)):
            directions[i] = (d.mT if tall[i] else d).to(updates[i].dtype)
    return directions


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update as this repo configures it (Nesterov momentum, the rate scaled by
    sqrt(max(1, rows/cols)), no weight decay, the same state), with the orthogonalization run on all
    matrices of one shape at once, in a dtype of the caller's choosing, and by this repo's three steps
    (NEWTON_SCHULZ) unless told otherwise. torch's runs matrix by matrix in bfloat16, which a CPU
    without bf16 kernels runs ~20x slower than the whole AdamW step (BENCHMARKS.md); tests check this
    class, given torch's iteration, against torch.optim.Muon."""

    def __init__(self, params, lr: float, momentum: float, ns_dtype: torch.dtype,
                 iteration: NewtonSchulz = NEWTON_SCHULZ):
        super().__init__(params, {"lr": lr, "momentum": momentum})
        self.ns_dtype, self.iteration = ns_dtype, iteration

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state["momentum_buffer"]

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = [self._momentum_buffer(p) for p in params]
            torch._foreach_lerp_(buffers, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, buffers, group["momentum"])  # Nesterov
            for p, direction in zip(params, orthogonalize_all(updates, self.ns_dtype, self.iteration)):
                p.add_(direction, alpha=-group["lr"] * math.sqrt(max(1.0, p.size(0) / p.size(1))))


def newton_schulz_dtype(training_dtype: str) -> torch.dtype:
    """bfloat16 where the run trains in bf16 (its matmuls are fast there), else float32: fp16 can
    overflow in the iteration, and a CPU without fast bf16 runs it many times slower (BENCHMARKS.md)."""
    return torch.bfloat16 if training_dtype == "bfloat16" else torch.float32


def muon(params: list[nn.Parameter], lr: float, momentum: float, ns_dtype: torch.dtype = torch.float32,
         iteration: NewtonSchulz = NEWTON_SCHULZ) -> Muon:
    return Muon([{"params": params, "base_lr": lr}], lr=lr, momentum=momentum, ns_dtype=ns_dtype, iteration=iteration)


def choose_optimizer(requested: Optional[str], init_from: str, checkpoint: Optional[dict]) -> str:
    """The requested optimizer, else the one the starting weights were trained with, else Muon; a
    resumed run keeps its own (its optimizer state is that optimizer's)."""
    if checkpoint is not None:
        made_with = checkpoint.get("optimizer_name", "adamw")
    else:  # GPT-2's weights were made with AdamW, and are reported to finetune worse under Muon
        made_with = None if init_from == "scratch" else "adamw"
    if init_from == "resume":
        if requested not in (None, made_with):
            raise UserError(f"the checkpoint was trained with {made_with}: resume with --optimizer={made_with}, or "
                            "leave --optimizer out")
        return made_with
    return requested or made_with or "muon"


def build_optimizers(model: nn.Module, name: str, lr: float, weight_decay: float, betas: tuple[float, float],
                     muon_lr: float, muon_momentum: float, device: str,
                     ns_dtype: torch.dtype = torch.float32) -> list[torch.optim.Optimizer]:
    """[AdamW] for 'adamw'; [AdamW for the rest, Muon for the block matrices] for 'muon', its
    Newton-Schulz iteration in ns_dtype (bfloat16 where the run trains in bf16, else float32)."""
    if name == "adamw":
        return [adamw(model, lr, weight_decay, betas, device)]
    matrices = block_matrices(model)
    rest = adamw(model, lr, weight_decay, betas, device, exclude=tuple(matrices))
    return [rest, muon(matrices, muon_lr, muon_momentum, ns_dtype)]


LR_SCHEDULES = ("cosine", "wsd")
WSD_COOLDOWN = 0.2  # the share of the decay iterations that a warmup-stable-decay schedule spends decaying


def lr_multiplier(it: int, warmup_iters: int, decay_iters: int, min_ratio: float, shape: str = "cosine") -> float:
    """Linear warmup from 1/(warmup_iters+1) (never 0) to 1, then down to min_ratio at decay_iters
    (and min_ratio after): along a cosine ('cosine'), or flat at 1 and then a straight line over the
    last WSD_COOLDOWN of the decay iterations ('wsd', warmup-stable-decay)."""
    if it < warmup_iters:
        return (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_ratio
    if shape == "wsd":
        cooldown_start = decay_iters - WSD_COOLDOWN * (decay_iters - warmup_iters)
        if it < cooldown_start:
            return 1.0
        return 1.0 - (1.0 - min_ratio) * (it - cooldown_start) / (decay_iters - cooldown_start)
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


def step_optimizers(optimizers: list, scaler: torch.amp.GradScaler, params, grad_clip: float) -> None:
    """Apply the accumulated gradients: unscale them (fp16), clip them to grad_clip (one norm over all
    parameters, whichever optimizer steps them; 0 disables it), step every optimizer, clear them."""
    if grad_clip > 0:
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)


def set_lr(optimizers: list, multiplier: float) -> None:
    """Every group of every optimizer at its base rate times the schedule's multiplier."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier
