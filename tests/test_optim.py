"""The optimizers: Muon's update of a 2-D weight against a reference written out here and against
torch.optim.Muon, which
parameters each optimizer of the 'muon' recipe owns, the schedule driving every group, and the
grad scaler stepping both optimizers."""
import math

import pytest
import torch

from kazgpt.optim import (NEWTON_SCHULZ, TORCH_NEWTON_SCHULZ, NewtonSchulz, block_matrices, build_optimizers,
                          lr_multiplier, muon, orthogonalize, set_lr, step_optimizers)
from model import GPT, GPTConfig

ITERATIONS = {"torch": TORCH_NEWTON_SCHULZ, "repo": NEWTON_SCHULZ}


def orthogonalize_reference(update: torch.Tensor, iteration: NewtonSchulz) -> torch.Tensor:
    """The iteration step by step in float64 on the wide side: X scaled to Frobenius norm 1 (and
    then by (sum of s^8)^(1/8) for 'spectral'), then X <- aX + (bA + cA^2)X with A = XX^T."""
    x = update.double()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm()
    if iteration.scaling == "spectral":
        x = x / torch.linalg.svdvals(x).pow(8).sum().pow(1 / 8)
    for a, b, c in iteration.coefficients:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("name", ITERATIONS)
@pytest.mark.parametrize("shape", [(8, 24), (24, 8), (12, 16)])  # the iteration by Gram matrix, and the plain one
def test_muon_update_matches_a_reference(shape, name):
    """Two steps of the repo's Muon (Newton-Schulz in float32, as on a CPU) against the same steps by
    hand in float64: Nesterov momentum, orthogonalized, scaled by sqrt(max(1, rows/cols))."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(shape))
    lr, momentum = 0.02, 0.95
    optimizer = muon([weight], lr, momentum, iteration=ITERATIONS[name])
    expected = weight.detach().double().clone()
    buf = torch.zeros(shape, dtype=torch.float64)
    for _ in range(2):
        grad = torch.randn(shape)
        weight.grad = grad.clone()
        optimizer.step()
        buf = momentum * buf + (1 - momentum) * grad.double()
        nesterov = (1 - momentum) * grad.double() + momentum * buf
        direction = orthogonalize_reference(nesterov, ITERATIONS[name])
        step = lr * math.sqrt(max(1.0, shape[0] / shape[1])) * direction
        expected -= step
        assert (weight.detach().double() - expected).norm() < 1e-4 * step.norm()
    singular = torch.linalg.svdvals(direction)
    assert singular.min() > 0.3 and singular.max() < 1.6, singular  # an orthogonalized update, not the raw gradient


@pytest.mark.parametrize("name", ITERATIONS)
def test_iteration_by_gram_matrix_equals_the_plain_one(name):
    """Wide matrices take their steps on A alone: against the plain iteration, both in float64, the
    same matrices to rounding."""
    torch.manual_seed(0)
    x = torch.randn(3, 16, 64, dtype=torch.float64)
    by_gram = orthogonalize(x, ITERATIONS[name])
    plain = torch.stack([orthogonalize_reference(m, ITERATIONS[name]) for m in x])
    assert (by_gram - plain).abs().max().item() < 1e-10


def test_repo_iteration_orthogonalizes():
    """The three fitted steps take every singular value from 0.01 of the largest upward into
    [0.64, 1.5] (the scalar map, on a fine grid), and keep the singular vectors: a matrix with a
    spread spectrum like a momentum's (one large direction, the smallest 3% of it: at least 1% of the
    bound (sum of s^8)^(1/8)) comes out as U f(S) V^T with f(s) in that band."""
    s = torch.logspace(-2, 0, 2000, dtype=torch.float64)
    for a, b, c in NEWTON_SCHULZ.coefficients:
        s = a * s + b * s**3 + c * s**5
    assert s.min() > 0.64 and s.max() < 1.501, (s.min(), s.max())
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(256, 64, dtype=torch.float64))
    spectrum = torch.logspace(0, -1.5, 64, dtype=torch.float64)
    out = orthogonalize(((u * spectrum) @ v.T)[None], NEWTON_SCHULZ)[0]
    inner = u.T @ out @ v  # diagonal f(S) when the singular vectors are kept
    assert (inner - torch.diag(inner.diagonal())).abs().max() < 1e-9
    assert inner.diagonal().min() > 0.64 and inner.diagonal().max() < 1.501


def test_muon_matches_torch_muon():
    """Matrices of three shapes (two of one shape and one of its transpose, orthogonalized in one
    batch), three steps: the repo's Muon with torch's iteration and torch.optim.Muon agree to
    bfloat16 precision (torch's runs Newton-Schulz in bf16; a missing Nesterov term, scale or
    orthogonalization is off by tens of percent), and they keep the same optimizer state."""
    torch.manual_seed(0)
    shapes = [(16, 48), (16, 48), (48, 16), (32, 32)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    optimizers = [muon(ours, 0.02, 0.95, iteration=TORCH_NEWTON_SCHULZ),
                  torch.optim.Muon(theirs, lr=0.02, momentum=0.95, weight_decay=0.0, nesterov=True,
                                   adjust_lr_fn="original")]
    for _ in range(3):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    for a, b, p0 in zip(ours, theirs, start):
        assert (a - b).norm() < 0.05 * (b - p0).norm()
    assert optimizers[0].state[ours[0]].keys() == optimizers[1].state[theirs[0]].keys() == {"momentum_buffer"}


def test_muon_recipe_splits_parameters():
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, bias=True))
    adamw, muon_opt = build_optimizers(model, "muon", 1e-3, 0.1, (0.9, 0.95), 0.02, 0.95, "cpu")
    owned = lambda opt: {id(p) for g in opt.param_groups for p in g["params"]}
    matrices = {id(p) for p in block_matrices(model)}
    assert owned(muon_opt) == matrices and len(matrices) == 2 * 4  # c_attn, attn c_proj, c_fc, mlp c_proj per block
    assert owned(adamw).isdisjoint(matrices)
    assert owned(adamw) | matrices == {id(p) for p in model.parameters()}  # every parameter, once
    assert id(model.transformer.wte.weight) in owned(adamw)  # the (tied) embedding stays with AdamW
    (only_adamw,) = build_optimizers(model, "adamw", 1e-3, 0.1, (0.9, 0.95), 0.02, 0.95, "cpu")
    assert owned(only_adamw) == {id(p) for p in model.parameters()}


def test_one_schedule_scales_every_group_from_its_base_rate():
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    optimizers = build_optimizers(model, "muon", 1e-3, 0.1, (0.9, 0.95), 0.02, 0.95, "cpu")
    for it, expected in ((0, 1 / 11), (10, 1.0), (100, 0.1), (55, 0.1 + 0.9 * 0.5)):
        multiplier = lr_multiplier(it, warmup_iters=10, decay_iters=100, min_ratio=0.1)
        assert multiplier == pytest.approx(expected)
        set_lr(optimizers, multiplier)
        assert [g["lr"] for g in optimizers[0].param_groups] == pytest.approx([1e-3 * expected] * 2)
        assert optimizers[1].param_groups[0]["lr"] == pytest.approx(0.02 * expected)


def test_wsd_schedule_by_hand():
    """Warmup 10, decay at 110, min ratio 0.1: flat at 1 until 90 (the last 20% decays), then a line."""
    wsd = lambda it: lr_multiplier(it, warmup_iters=10, decay_iters=110, min_ratio=0.1, shape="wsd")
    assert [wsd(0), wsd(9), wsd(10), wsd(89), wsd(90)] == pytest.approx([1 / 11, 10 / 11, 1.0, 1.0, 1.0])
    assert wsd(100) == pytest.approx(0.55) and wsd(110) == pytest.approx(0.1) and wsd(500) == pytest.approx(0.1)


def test_grad_scaler_steps_both_optimizers():
    """A training step through an enabled GradScaler (as fp16 runs use it) gives the same weights as
    an unscaled one, for the AdamW and the Muon parameters alike: scaling by a power of two is exact."""
    weights = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
        optimizers = build_optimizers(model, "muon", 1e-2, 0.1, (0.9, 0.95), 0.02, 0.95, "cpu")
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=enabled)
        x, y = torch.randint(0, 32, (4, 8)), torch.randint(0, 32, (4, 8))
        for _ in range(3):
            for _ in range(2):  # two micro-steps, as train.py accumulates them
                scaler.scale(model(x, y)[1] / 2).backward()
            step_optimizers(optimizers, scaler, model.parameters(), 1.0)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-5, atol=1e-6, msg=name)
