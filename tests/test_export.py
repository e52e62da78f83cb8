"""export_hf.py and init_from=<folder>: every architecture and tokenizer leaves the repo as a class
that ships with transformers and comes back, against this repo's own model: logits, greedy text
(transformers' generate with its KV cache against sample.py) and weights."""
import json

import pytest
import torch

from conftest import GPT2_ARCHITECTURE, TINY_MODEL, assert_one_line_error, run, write_kazqad_source
from kazgpt.checkpoint import load_checkpoint, model_from_checkpoint, newest_checkpoint
from kazgpt.hf import load_transformers
from kazgpt.engine import generate
from kazgpt.tokenizer import TiktokenTokenizer, tokenizer_from_spec

transformers = pytest.importorskip("transformers")
CLASSES = {"newer": "PersimmonForCausalLM", "gpt2": "GPT2LMHeadModel"}
PREPARE = {"char": ("data/qazdata_char/prepare.py", "config/train_qazdata_char.py", []),
           "kazakh_bpe": ("data/qazdata_bpe/prepare.py", "config/train_qazdata_bpe.py", ["--vocab_size=350"]),
           "gpt2_bpe": ("data/qazdata/prepare.py", "config/finetune_qazdata.py", [])}
PROMPT = "Өзеннің ұзындығы қанша (0)?:"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    src, made = write_kazqad_source(root / "src", 20), {}

    def prepared(kind: str):
        if kind == "gpt2_bpe":
            try:
                TiktokenTokenizer("gpt2")
            except Exception as e:
                pytest.skip(f"GPT-2 BPE files unavailable offline ({e}); set TIKTOKEN_CACHE_DIR")
        if kind not in made:
            script, _, flags = PREPARE[kind]
            run(script, f"--source={src}", f"--out_dir={root / kind}", *flags)
            made[kind] = root / kind
        return made[kind]
    return prepared


def greedy_sample(*args):
    proc = run("sample.py", *args, "--device=cpu", f"--start={PROMPT}", "--num_samples=1", "--max_new_tokens=20",
               "--top_k=1")
    return proc.stdout.split("\n---------------")[0]


@pytest.mark.parametrize("arch", ["newer", "gpt2"])
@pytest.mark.parametrize("kind", PREPARE)
def test_export_and_back(dataset, tmp_path, kind, arch):
    data, out, folder = dataset(kind), tmp_path / "out", tmp_path / "hf"
    # biases in one of the two, so that a model with and one without them both travel
    run("train.py", PREPARE[kind][1], f"--data_dir={data}", f"--out_dir={out}", "--init_from=scratch", *TINY_MODEL,
        *(GPT2_ARCHITECTURE if arch == "gpt2" else []), f"--bias={arch == 'gpt2'}", "--block_size=64",
        "--max_iters=8", "--eval_interval=8", "--eval_iters=2")
    run("export_hf.py", f"--out_dir={out}", f"--export_dir={folder}")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [CLASSES[arch]] and "auto_map" not in config
    ckpt = load_checkpoint(newest_checkpoint(out))
    ours = model_from_checkpoint(ckpt).eval()
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    assert config["vocab_size"] == vocab  # the padding rows (to a multiple of 64) are never a token, so left out
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()  # no custom code
    idx = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(idx, idx)[0][:, :vocab] - hf(idx).logits.view(-1, vocab)).abs().max().item() < 1e-4
    # greedy text: transformers' tokenizer and generate (KV cache on) against sample.py
    text = greedy_sample(f"--out_dir={out}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert prompt.tolist() == [tokenizer_from_spec(ckpt["tokenizer"]).encode(PROMPT)]
    generated = hf.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True)
    assert torch.equal(generated, generate(ours, prompt, 20, greedy=True))  # token for token, and as text
    assert tokenizer.decode(generated[0]) == text
    # the way back: the same weights and tokenizer, and the same text from sample.py
    back, spec = load_transformers(str(folder))
    assert spec == ckpt["tokenizer"] and back.config.bias == (arch == "gpt2")
    mine = ours.state_dict()
    for name, tensor in back.state_dict().items():
        cut = name.endswith(("wte.weight", "lm_head.weight"))
        assert torch.equal(tensor, mine[name][:vocab] if cut else mine[name]), name
    assert greedy_sample(f"--init_from={folder}") == text


def test_finetune_from_an_export(dataset, tmp_path):
    """init_from=<an exported folder> trains on a dataset of its tokenizer, and refuses another's."""
    out, folder = tmp_path / "out", tmp_path / "hf"
    common = [*TINY_MODEL, "--block_size=64", "--max_iters=4", "--eval_interval=2"]
    run("train.py", "config/train_qazdata_char.py", f"--data_dir={dataset('char')}", f"--out_dir={out}", *common)
    run("export_hf.py", f"--out_dir={out}", f"--export_dir={folder}")
    proc = run("train.py", "config/train_qazdata_char.py", f"--data_dir={dataset('char')}",
               f"--out_dir={tmp_path / 'again'}", f"--init_from={folder}", *common)
    assert "initializing from transformers weights" in proc.stdout
    refused = run("train.py", "config/train_qazdata_bpe.py", f"--data_dir={dataset('kazakh_bpe')}",
                  f"--out_dir={tmp_path / 'bpe'}", f"--init_from={folder}", *common, check=False)
    assert_one_line_error(refused, "speaks another tokenizer than this dataset")


def test_what_this_gpt_cannot_hold_is_refused(dataset, tmp_path):
    """A Persimmon whose query/key LayerNorms learned gains, and a model with learned positions and
    QK-norm (which neither class holds), each get one line."""
    config = transformers.PersimmonConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, max_position_embeddings=32, tie_word_embeddings=True,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                           "partial_rotary_factor": 1.0})
    hf = transformers.PersimmonForCausalLM(config)
    with torch.no_grad():
        hf.model.layers[0].self_attn.q_layernorm.weight.fill_(2.0)
    hf.save_pretrained(tmp_path / "persimmon")
    proc = run("sample.py", f"--init_from={tmp_path / 'persimmon'}", "--device=cpu", "--start=x", check=False)
    assert_one_line_error(proc, "query/key LayerNorms are learned")
    run("train.py", "config/train_qazdata_char.py", f"--data_dir={dataset('char')}", f"--out_dir={tmp_path / 'out'}",
        *TINY_MODEL, "--position_encoding=learned", "--qk_norm=True", "--max_iters=1", "--eval_interval=1")
    proc = run("export_hf.py", f"--out_dir={tmp_path / 'out'}", f"--export_dir={tmp_path / 'hf'}", check=False)
    assert_one_line_error(proc, "--qk_norm=False or --position_encoding=rope")
    assert not (tmp_path / "hf").exists()
