"""This repo's GPT to and from classes that ship with `transformers`, so that a model leaves the repo
for anything that loads a Hugging Face folder, and comes back (no custom code either way):

    GPT-2's architecture (learned positions)    <-> GPT2LMHeadModel
    the newer one (rotary positions, ReLU², QK-norm) <-> PersimmonForCausalLM

Persimmon holds the newer architecture as it is: sequential pre-LayerNorm blocks, a non-gated MLP
with any activation (relu2), per-head query/key LayerNorm before rotary positions (theta 10000,
rotate-half layout), tied embeddings. What it has and this GPT lacks is set to do nothing: zero
biases for a model trained without them, unit gains and zero biases in the query/key LayerNorms.
The way back refuses a model whose weights use what this GPT lacks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from kazgpt.kernels import ROPE_BASE
from model import GPT, LAYER_NORM_EPS, GPTConfig

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
EXPORT_RECORD = "kazgpt_export.json"  # written beside an export: its source and this repo's tokenizer spec
ACTIVATIONS = {  # (mlp_activation, gelu_approximate) -> transformers' name
    ("gelu", "none"): "gelu", ("gelu", "tanh"): "gelu_new", ("relu2", "none"): "relu2", ("relu2", "tanh"): "relu2"}
FROM_ACTIVATION = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
                   "relu2": ("relu2", "none")}
# transformers keeps GPT-2's Conv1D layers, whose weights are the transpose of nn.Linear's
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
QK_NORMS = ("q_layernorm", "k_layernorm")  # Persimmon's, with gain and bias: this GPT's QK-norm has neither
PERSIMMON_NAMES = {  # this repo's modules (in a block: after transformer.h.{i}.) -> Persimmon's
    "ln_1": "input_layernorm", "attn.c_attn": "self_attn.query_key_value", "attn.c_proj": "self_attn.dense",
    "ln_2": "post_attention_layernorm", "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h",
    "transformer.wte": "model.embed_tokens", "transformer.ln_f": "model.final_layernorm", "lm_head": "lm_head"}


def gpt2_name(ours: str) -> str:
    return ours


def persimmon_name(ours: str) -> str:
    module, kind = ours.rsplit(".", 1)
    if module.startswith("transformer.h."):
        _, _, layer, inner = module.split(".", 3)
        return f"model.layers.{layer}.{PERSIMMON_NAMES[inner]}.{kind}"
    return f"{PERSIMMON_NAMES[module]}.{kind}"


def qkv_rows(weight: torch.Tensor, n_head: int, to_persimmon: bool) -> torch.Tensor:
    """The fused q, k, v projection reordered: this GPT stacks all queries, then keys, then values
    (3, nh, hs); Persimmon interleaves them head by head (nh, 3, hs)."""
    shape = (3, n_head, -1) if to_persimmon else (n_head, 3, -1)
    rows = weight.reshape(*shape, *weight.shape[1:]).transpose(0, 1)
    return rows.reshape(weight.shape).contiguous()


def convert_weight(name: str, tensor: torch.Tensor, config: GPTConfig, to_hf: bool) -> torch.Tensor:
    if config.position_encoding == "learned":
        return tensor.t() if name.endswith(GPT2_CONV1D) else tensor
    if "attn.c_attn" in name:
        return qkv_rows(tensor, config.n_head, to_persimmon=to_hf)
    return tensor


def to_transformers(model: GPT, vocab_size: int, eot_token: Optional[int]):
    """The transformers model holding this GPT's weights, its vocabulary cut to the tokenizer's
    vocab_size (the rows that pad it to a multiple of 64 are never a token, so never sampled).
    ValueError for the one mix of choices that neither class holds."""
    import transformers

    c = model.config
    rotary = c.position_encoding == "rope"
    if c.qk_norm and not rotary:
        raise ValueError("GPT-2's class has no QK-norm and Persimmon's no learned positions: train with "
                         "--qk_norm=False or --position_encoding=rope to export")
    activation = ACTIVATIONS[(c.mlp_activation, c.gelu_approximate)]
    if rotary:
        hf_config = transformers.PersimmonConfig(
            vocab_size=vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head, hidden_act=activation, max_position_embeddings=c.block_size,
            layer_norm_eps=LAYER_NORM_EPS, qk_layernorm=c.qk_norm, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": ROPE_BASE, "partial_rotary_factor": 1.0},
            bos_token_id=eot_token, eos_token_id=eot_token, pad_token_id=None)
        hf, name_of = transformers.PersimmonForCausalLM(hf_config), persimmon_name
    else:
        hf_config = transformers.GPT2Config(
            vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_inner=c.mlp_hidden, n_layer=c.n_layer,
            n_head=c.n_head, activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=LAYER_NORM_EPS, tie_word_embeddings=True, bos_token_id=eot_token,
            eos_token_id=eot_token)
        hf, name_of = transformers.GPT2LMHeadModel(hf_config), gpt2_name
    theirs, copied = hf.state_dict(), set()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(("span_head.", "question_match")):  # a reader's parts have no place in an LM class
                continue
            if name.endswith(("wte.weight", "lm_head.weight")):
                tensor = tensor[:vocab_size]
            theirs[name_of(name)].copy_(convert_weight(name, tensor, c, to_hf=True))
            copied.add(name_of(name))
        for name, p in hf.named_parameters():
            if name not in copied:  # what this GPT lacks does nothing: zero biases, unit query/key LayerNorm gains
                p.fill_(0.0 if name.endswith("bias") else 1.0)
    return hf


def from_transformers(hf, dropout: float = 0.0) -> GPT:
    """This repo's GPT with the weights of a transformers GPT-2 or Persimmon model; ValueError for
    one that uses what this GPT lacks."""
    c, state = hf.config, hf.state_dict()
    if c.model_type == "gpt2":
        activation, name_of = c.activation_function, gpt2_name
        shape = dict(block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                     mlp_ratio=(c.n_inner or 4 * c.n_embd) / c.n_embd, position_encoding="learned", qk_norm=False)
    else:
        rope = c.rope_parameters
        if (rope.get("rope_type", "default"), rope.get("rope_theta"), rope.get("partial_rotary_factor", 1.0)) != \
                ("default", ROPE_BASE, 1.0):
            raise ValueError(f"its rotary positions ({rope}) are not this GPT's (theta {ROPE_BASE:g} on whole heads)")
        learned_qk = [k for k, v in state.items() if k.split(".")[-2] in QK_NORMS
                      and not torch.equal(v, torch.full_like(v, float(k.endswith("weight"))))]
        if learned_qk:
            raise ValueError(f"its query/key LayerNorms are learned ({learned_qk[0]}); this GPT's QK-norm has no "
                             "gain or bias")
        activation, name_of = c.hidden_act, persimmon_name
        shape = dict(block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
                     n_embd=c.hidden_size, mlp_ratio=c.intermediate_size / c.hidden_size, position_encoding="rope",
                     qk_norm=c.qk_layernorm)
    if activation not in FROM_ACTIVATION:
        raise ValueError(f"it uses activation '{activation}'; this GPT has {', '.join(FROM_ACTIVATION)}")
    if not torch.equal(state["lm_head.weight"], state[name_of("transformer.wte.weight")]):
        raise ValueError("its output layer is not tied to its input embeddings, as this GPT's is")
    mlp_activation, approximate = FROM_ACTIVATION[activation]
    bias = any(v.any() for k, v in state.items() if k.endswith("bias") and k.split(".")[-2] not in QK_NORMS)
    config = GPTConfig(vocab_size=state["lm_head.weight"].shape[0], dropout=dropout, bias=bias,
                       mlp_activation=mlp_activation, gelu_approximate=approximate, **shape)
    model = GPT(config)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(convert_weight(name, state[name_of(name)], config, to_hf=False))
    return model


def load_transformers(name_or_path: str, dropout: float = 0.0) -> tuple[GPT, dict]:
    """A transformers GPT-2 or Persimmon (a folder, or a hub name) as this repo's GPT, with the spec of
    its tokenizer: this repo's own for its exports, GPT-2's BPE for GPT-2 by name or a folder without
    tokenizer.json, else its tokenizer.json."""
    import transformers
    from transformers.utils import cached_file

    kind = transformers.AutoConfig.from_pretrained(name_or_path).model_type
    classes = {"gpt2": transformers.GPT2LMHeadModel, "persimmon": transformers.PersimmonForCausalLM}
    if kind not in classes:
        raise ValueError(f"it is a '{kind}' model; this GPT loads {' and '.join(classes)} models")
    model = from_transformers(classes[kind].from_pretrained(name_or_path), dropout)
    record = cached_file(name_or_path, EXPORT_RECORD, _raise_exceptions_for_missing_entries=False)
    tokenizer_file = cached_file(name_or_path, "tokenizer.json", _raise_exceptions_for_missing_entries=False)
    if record:
        spec = json.loads(Path(record).read_text(encoding="utf-8"))["tokenizer"]
    elif tokenizer_file and name_or_path not in GPT2_NAMES:
        spec = {"kind": "hf", "tokenizer_json": Path(tokenizer_file).read_text(encoding="utf-8")}
    else:
        spec = {"kind": "tiktoken", "name": "gpt2"}
    return model, spec
