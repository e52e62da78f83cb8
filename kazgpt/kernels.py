"""The newer architecture's elementwise pieces, each an autograd Function with its backward written
out: on CPU they cost fewer ops and less memory than autograd's own backward (BENCHMARKS.md), and
tests check every one against its plain-torch form and numerical gradients."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

ROPE_BASE = 10000.0


def rotary_factors(pos: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors (T, 1, hs) that rotate() takes for heads laid out (B, T, nh, hs), in float32:
    with angles pos * theta_i, theta_i = ROPE_BASE^(-2i/hs) for i < hs/2, cos of each angle twice
    (the two halves of a head) and its sine as (-sin, sin)."""
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
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _turn(_at_least_float32(x), cos, sin).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors  # the gradient is turned back by the same angles
        return _turn(_at_least_float32(grad), cos, sin.neg()).to(grad.dtype), None, None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position encoding of x (..., hs), computed in float32 (factors from rotary_factors)."""
    return _Rotate.apply(x, cos, sin)


class _ReLUSquared(torch.autograd.Function):
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


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return _ReLUSquared.apply(x)
