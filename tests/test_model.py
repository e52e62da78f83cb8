"""model.py against references: Hugging Face's GPT-2, and generation with a KV cache against
full recomputation under the same window policy."""
import pytest
import torch

from kazgpt.engine import generate, generate_tokens, generate_without_cache, sample_next_token
from kazgpt.hf import load_transformers
from kazgpt.kernels import relu_squared, rotary_factors, rotate
from model import ARCHITECTURES, GPT, GPTConfig, SPAN_LOOKAHEAD


@pytest.fixture(scope="module", params=[None, 48], ids=["mlp_4x", "n_inner_48"])
def hf_folder(tmp_path_factory, request):
    """A tiny random transformers GPT-2, with GPT-2's MLP width (n_inner None: 4 x n_embd) or another."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=97,
                                     n_inner=request.param)
    hf = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # random biases and LayerNorm gains, so that every weight is checked
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1 if name.endswith("bias") else 1.0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(folder)
    return folder, hf.eval()


def test_hugging_face_parity(hf_folder):
    folder, hf = hf_folder
    model = load_transformers(str(folder))[0].eval()
    idx = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, loss = model(idx, targets)
        ref = hf(idx, labels=None)
        ref_loss = torch.nn.functional.cross_entropy(ref.logits.view(-1, 97), targets.view(-1))
    assert (logits - ref.logits.view(-1, 97)).abs().max().item() < 1e-5  # every target counts
    assert abs(loss.item() - ref_loss.item()) < 1e-6


def test_crop_block_size(hf_folder):
    folder, hf = hf_folder
    model = load_transformers(str(folder))[0].eval()
    model.crop_block_size(16)
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        logits, _ = model(idx, idx)
        assert (logits - hf(idx).logits.view(-1, 97)).abs().max().item() < 1e-5




def small_model(block_size=24, seed=0, arch="gpt2"):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=50, n_layer=2, n_head=4, n_embd=32, bias=True,
                         **ARCHITECTURES[arch])).eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("prompt_len", [1, 5, 30])  # 30 > block_size: the prompt itself is windowed
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_kv_cache_matches_recomputation(prompt_len, mode, arch):
    model = small_model(arch=arch)
    idx = torch.randint(0, 50, (2, prompt_len), generator=torch.Generator().manual_seed(3))
    kwargs = dict(greedy=True) if mode == "greedy" else dict(temperature=0.9, top_k=20, top_p=0.95)
    n_new = 70  # the 24-token window slides several times
    cached = torch.cat(
        [idx, *generate_tokens(model, idx, n_new, generator=torch.Generator().manual_seed(4), **kwargs)], dim=1
    )
    reference = generate_without_cache(model, idx, n_new, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(cached, reference)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_logits_match_full_forward(arch):
    """Each decode step's logits equal a full forward over the same window."""
    from kazgpt.engine import decode_one_token, prefill
    from model import KVCache

    model = small_model(arch=arch)
    tokens = torch.randint(0, 50, (1, 20))
    cache = KVCache(model.config, 1, "cpu", torch.float32)
    logits = prefill(model, tokens[:, :8], cache)
    for t in range(8, 20):
        full = model(tokens[:, :t])[0][:, -1, :]
        assert (logits - full).abs().max().item() < 1e-5
        logits = decode_one_token(model, tokens[:, t : t + 1], cache)


def test_rotary_positions_against_complex_rotation():
    """rotate() against a reference in complex numbers: the pair (x[i], x[i + hs/2]) of a head at
    position t, as x[i] + j x[i + hs/2], is multiplied by e^(j t theta_i), theta_i = 10000^(-2i/hs); so
    a query-key product depends only on their distance."""
    B, T, nh, hs = 2, 10, 3, 8
    x = torch.randn(B, T, nh, hs, dtype=torch.float64)
    cos, sin = rotary_factors(torch.arange(T), hs)
    theta = 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    angles = torch.arange(T, dtype=torch.float64)[:, None, None] * theta  # (T, 1, hs/2)
    turn = torch.polar(torch.ones(T, 1, hs // 2, dtype=torch.float64), angles)
    turned = torch.complex(x[..., : hs // 2], x[..., hs // 2 :]) * turn
    reference = torch.cat([turned.real, turned.imag], dim=-1)
    assert (rotate(x, cos, sin).double() - reference).abs().max().item() < 1e-5
    q, k = torch.randn(hs), torch.randn(hs)
    def score(m, n):
        at = lambda v, t: rotate(v.view(1, 1, 1, hs), *(f[t : t + 1] for f in rotary_factors(torch.arange(20), hs)))
        return (at(q, m) * at(k, n)).sum().item()
    assert score(7, 3) == pytest.approx(score(15, 11), abs=1e-5)


def test_relu_squared_against_torch():
    x = torch.randn(4, 5, 16) * 3
    assert torch.equal(relu_squared(x), torch.relu(x) ** 2)


def test_hand_written_backwards_against_numerical_gradients():
    """rotate and ReLU squared write their backward by hand: gradcheck compares each
    with finite differences in float64, on non-contiguous inputs like the attention's q and k views."""
    heads = torch.randn(2, 5, 9, 6, dtype=torch.float64)[:, :, :6]  # (B, T, 2nh, hs), a view like qk
    heads.requires_grad_(True)
    cos, sin = (f.double() for f in rotary_factors(torch.arange(3, 8), 6))
    assert torch.autograd.gradcheck(lambda x: rotate(x, cos, sin), (heads,))
    x = (torch.randn(3, 7, dtype=torch.float64) + 0.01).requires_grad_(True)  # no element at relu's kink
    assert torch.autograd.gradcheck(relu_squared, (x,))


def test_newer_architecture_has_no_position_embeddings():
    gpt2, newer = small_model(), small_model(arch="newer")
    assert "transformer.wpe.weight" in gpt2.state_dict() and "transformer.wpe.weight" not in newer.state_dict()
    assert newer.num_params() == gpt2.num_params()  # positions are left out of the count either way
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(n_embd=30, n_head=2, position_encoding="rope")


def test_mlp_width():
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=32, mlp_ratio=1.5))
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (48, 32)
    assert model.transformer.h[0].mlp.c_proj.weight.shape == (32, 48)
    assert GPTConfig(n_embd=32, n_head=2).mlp_hidden == 128  # GPT-2's 4x by default


def test_sample_next_token_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, top_k=2, generator=gen).flatten().tolist()) == {3, 4}
    # softmax of 0..4: the top token alone has p=0.636, the top two 0.87
    assert set(sample_next_token(logits, top_p=0.6, generator=gen).flatten().tolist()) == {4}
    assert set(sample_next_token(logits, top_p=0.8, generator=gen).flatten().tolist()) == {3, 4}
    assert sample_next_token(logits[:1], greedy=True).item() == 4
    # a temperature this small (float32 has no number this close to 0) picks the most likely token
    for temperature in (1e-50, 1e-300):
        assert sample_next_token(logits, temperature=temperature, generator=gen).flatten().tolist() == [4] * len(logits)


def test_span_logits_see_the_next_tokens_and_no_further():
    """A position's start and end logits change with the tokens up to SPAN_LOOKAHEAD - 1 after it
    (which show where a span ends), and not with any later one."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=50, n_layer=2, n_head=4, n_embd=32, span_head=True)).eval()
    idx = torch.randint(0, 50, (1, 24))
    with torch.no_grad():
        before = model.span_logits(model.hidden_states(idx))[0, 5]
        for ahead in range(1, 10):
            changed = idx.clone()
            changed[0, 5 + ahead] = (changed[0, 5 + ahead] + 1) % 50
            moved = not torch.allclose(model.span_logits(model.hidden_states(changed))[0, 5], before)
            assert moved == (ahead < SPAN_LOOKAHEAD), ahead


@pytest.mark.parametrize("prompt_len", [10, 30])  # 30 > block_size: the prompt's matches are windowed too
def test_question_matches_through_the_cache(prompt_len):
    """A reader told a prompt's question matches generates, with the cache and its sliding window,
    what a full forward over each window with the same matches (none on generated tokens) chooses;
    the matches change the span logits, and all-False matches change nothing."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=50, n_layer=2, n_head=4, n_embd=32, span_head=True)).eval()
    torch.nn.init.normal_(model.question_match)  # trained, it is no longer zero
    idx = torch.randint(0, 50, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    matches = torch.rand(1, prompt_len, generator=torch.Generator().manual_seed(2)) < 0.3
    new = torch.cat(list(generate_tokens(model, idx, 40, greedy=True, matches=matches)), dim=1)
    tokens, start = idx, max(0, prompt_len - 24)
    with torch.no_grad():
        for t in range(40):
            if tokens.size(1) - start > 24:
                start = tokens.size(1) - 12
            window_matches = torch.nn.functional.pad(matches, (0, tokens.size(1) - prompt_len))[:, start:]
            logits = model(tokens[:, start:], matches=window_matches)[0][:, -1, :]
            assert logits.argmax().item() == new[0, t].item(), t
            tokens = torch.cat([tokens, new[:, t:t + 1]], dim=1)
        x = idx[:, -24:]
        span = model.span_logits(model.hidden_states(x, None, matches[:, -24:]))
        assert not torch.allclose(span, model.span_logits(model.hidden_states(x)))
        assert torch.equal(model.span_logits(model.hidden_states(x, None, torch.zeros_like(x, dtype=torch.bool))),
                           model.span_logits(model.hidden_states(x)))


def test_loss_and_generate_shapes():
    model = small_model()
    idx = torch.randint(0, 50, (2, 24))
    logits, loss = model(idx, idx)
    assert logits.shape == (48, 50) and loss.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.1)
    assert model(idx)[0].shape == (2, 1, 50)
    assert generate(model, idx[:, :3], 40, greedy=True).shape == (2, 43)


def word_spans(source: list[int], starts: list[bool]) -> tuple[set, set]:
    """Brute force: the prefixes of spans that start at a word start, and the spans that also end at one."""
    ends = starts + [True]
    prefixes = {tuple(source[i:j]) for i in range(len(source)) for j in range(i + 1, len(source) + 1) if starts[i]}
    whole = {tuple(source[i:j]) for i in range(len(source)) for j in range(i + 1, len(source) + 1)
             if starts[i] and ends[j]}
    return prefixes, whole


@pytest.mark.parametrize("greedy", [True, False])
def test_span_constraint_against_brute_force(greedy):
    """Constrained decoding from a random model: at every step the allowed tokens are exactly those
    that keep the answer a run of the source starting at a word start (brute force over all its
    spans), plus the end where the run ends before a word start; what is generated is such a span."""
    from kazgpt.engine import SpanConstraint
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    end = 31
    for trial in range(8):
        g = torch.Generator().manual_seed(trial)
        source = torch.randint(0, 8, (20,), generator=g).tolist()
        starts = (torch.rand(20, generator=g) < (1.0 if trial == 0 else 0.5)).tolist()
        prefixes, whole = word_spans(source, starts)
        constraint, answer = SpanConstraint(source, [end], starts), []
        assert set(constraint.allowed()) == {s[0] for s in prefixes}
        for token in generate_tokens(model, torch.randint(0, 30, (1, 5)), 12, greedy=greedy, constraint=constraint,
                                     generator=g):
            token = token.item()
            if token == end:
                break
            answer.append(token)
            expected = {t for t in range(32) if tuple(answer + [t]) in prefixes} | ({end} if tuple(answer) in whole
                                                                                     else set())
            assert set(constraint.allowed()) == expected
        assert tuple(answer) in whole or len(answer) == 12


def test_word_starts_of_text_pieces():
    from kazgpt.engine import word_starts
    assert word_starts(["Абай", " 18", "45", " ж", "ылы", ".", "\n", "Ол", "\ufffd", "\ufffdр"]) == [
        True, True, False, True, False, True, True, True, False, False]


def test_span_constraint_leaves_an_allowed_argmax_alone():
    """Where the model's own greedy choice continues a run of the source, the constraint changes nothing."""
    from kazgpt.engine import SpanConstraint
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=64, vocab_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 16, (1, 6))
    free = [t.item() for t in generate_tokens(model, idx, 8, greedy=True)]
    constrained = [t.item() for t in generate_tokens(model, idx, 8, greedy=True, constraint=SpanConstraint(free, [15]))]
    assert constrained == free
    other = [t.item() for t in generate_tokens(model, idx, 8, greedy=True, constraint=SpanConstraint([3, 4], [15]))]
    assert other[0] in (3, 4) and set(other) <= {3, 4, 15}
