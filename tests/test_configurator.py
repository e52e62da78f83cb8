import dataclasses
from dataclasses import dataclass
from typing import Optional

import pytest

from kazgpt.cli import UserError
from configurator import load_config, setting
from conftest import REPO


@dataclass
class Cfg:
    out_dir: str = "out"
    batch_size: int = 12
    learning_rate: float = 6e-4
    compile: Optional[bool] = None
    decay_lr: bool = True
    top_k: Optional[int] = 200
    device: Optional[str] = None


def test_defaults_and_cli_overrides():
    cfg = load_config(Cfg, ["--batch_size=32", "--learning_rate=1", "--compile=False", "--decay_lr=false",
                            "--top_k=None", "--out_dir=123", "--device=cpu"], verbose=False)
    assert cfg == Cfg(
        out_dir="123", batch_size=32, learning_rate=1.0, compile=False, decay_lr=False, top_k=None, device="cpu"
    )
    assert isinstance(cfg.learning_rate, float)


def test_bare_flag_sets_bool(tmp_path):
    assert load_config(Cfg, ["--decay_lr=False", "--decay_lr"], verbose=False).decay_lr is True


def test_config_file_then_cli_in_order(tmp_path):
    f = tmp_path / "c.py"
    f.write_text(
        "import math\n_private = 3\nbatch_size = 2 * 8\nlearning_rate = math.sqrt(4) / 1000\ndef helper(): pass\n"
    )
    cfg = load_config(Cfg, [str(f), "--batch_size=4"], verbose=False)
    assert (cfg.batch_size, cfg.learning_rate) == (4, 0.002)
    assert load_config(Cfg, ["--batch_size=4", str(f)], verbose=False).batch_size == 16


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch_sise=3"], "unknown config key 'batch_sise' in the command line (did you mean 'batch_size'?)"),
        (["--batch_size=3.5"], "batch_size must be int, got 3.5"),
        (["--batch_size=True"], "batch_size must be int"),
        (["--learning_rate=fast"], "learning_rate must be float"),
        (["--decay_lr=2"], "decay_lr must be bool"),
        (["--batch_size=None"], "batch_size must be int, got None"),
        (["--batch_size"], "option --batch_size has no value"),
        (["--batch_sise"], "unknown config key 'batch_sise' in the command line (did you mean 'batch_size'?)"),
        (["--zzz=1"], "unknown config key 'zzz' in the command line (--help lists the keys)"),
        (["missing_config.py"], "config file missing_config.py does not exist"),
    ],
)
def test_rejected(argv, message):
    with pytest.raises(UserError, match=None) as e:
        load_config(Cfg, argv, verbose=False)
    assert message in str(e.value)


def test_config_file_errors(tmp_path):
    bad_key = tmp_path / "bad_key.py"
    bad_key.write_text("learning_rte = 1e-3\n")
    with pytest.raises(
        UserError, match=r"unknown config key 'learning_rte' in config file .*did you mean 'learning_rate'"
    ):
        load_config(Cfg, [str(bad_key)], verbose=False)
    raises = tmp_path / "raises.py"
    raises.write_text("batch_size = 1 / 0\n")
    with pytest.raises(UserError, match="config file .*raises.py failed: ZeroDivisionError"):
        load_config(Cfg, [str(raises)], verbose=False)
    wrong_type = tmp_path / "wrong.py"
    wrong_type.write_text("batch_size = '12'\n")
    with pytest.raises(UserError, match="batch_size must be int, got '12'"):
        load_config(Cfg, [str(wrong_type)], verbose=False)


def test_repo_configs_load():
    """Every config file in config/ loads against train.py's defaults."""
    from pathlib import Path

    from train import TrainConfig

    configs = sorted((Path(__file__).parents[1] / "config").glob("*.py"))
    assert len(configs) >= 7
    for path in configs:
        load_config(TrainConfig, [str(path)], verbose=False)


@pytest.mark.parametrize("script, flag, key", [("train.py", "--help", "--learning_rate=0.0006"),
                                               ("sample.py", "-h", "--temperature=0.8"),
                                               ("eval_qa.py", "--help", "--modes="),
                                               ("export_hf.py", "-h", "--export_dir='hf-export'"),
                                               ("plot.py", "--help", "--png=None")])
def test_help_lists_the_keys(tmp_path, script, flag, key):
    """--help (or -h), even among other flags, prints the script's description and each key with its
    default and comment, exits 0, and does nothing else (no out_dir made)."""
    from conftest import run

    proc = run(script, f"--out_dir={tmp_path / 'out'}", flag, "--no_such_key=1")
    first_doc_line = (REPO / script).read_text().split('"""')[1].strip().splitlines()[0]
    assert first_doc_line in proc.stdout
    assert any(line.strip().startswith(key) for line in proc.stdout.splitlines()), proc.stdout
    assert "  # " in proc.stdout  # the keys' comments come along
    assert not (tmp_path / "out").exists() and proc.stderr == ""


def test_help_text_lists_every_key_once():
    """Each field of the config class appears exactly once in --help, with its default."""
    from configurator import help_text

    lines = help_text(Cfg).splitlines()
    for f in dataclasses.fields(Cfg):
        assert sum(line.startswith(f"  --{f.name}=") for line in lines) == 1, f.name
    assert "  --batch_size=12" in lines


@dataclass
class Bounded:
    batch_size: int = setting(12, min=1)
    dropout: float = setting(0.0, min=0, below=1)
    learning_rate: float = setting(6e-4, above=0)
    top_p: Optional[float] = setting(None, above=0, max=1)
    schedule: str = setting("cosine", choices=("cosine", "wsd"))


@pytest.mark.parametrize("flag, message", [
    ("--batch_size=0", "batch_size must be at least 1, got 0"),
    ("--dropout=1", "dropout must be at least 0, below 1, got 1.0"),
    ("--dropout=-0.1", "dropout must be at least 0, below 1, got -0.1"),
    ("--learning_rate=0", "learning_rate must be above 0, got 0.0"),
    ("--learning_rate=nan", "learning_rate must be float, got 'nan'"),
    ("--learning_rate=float('inf')", "learning_rate must be float"),
    ("--top_p=1.5", "top_p must be above 0, at most 1, got 1.5"),
    ("--schedule=linear", "schedule must be 'cosine' or 'wsd', got 'linear'"),
])
def test_declared_bounds_are_checked_in_one_place(flag, message):
    """A value outside the bounds or choices declared beside its setting is one line naming both."""
    with pytest.raises(UserError) as e:
        load_config(Bounded, [flag], verbose=False)
    assert message in str(e.value)


def test_values_inside_the_bounds_and_none_pass(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("learning_rate = float('inf')\n")
    with pytest.raises(UserError, match="learning_rate must be above 0, got inf"):  # not finite
        load_config(Bounded, [str(f)], verbose=False)
    cfg = load_config(Bounded, ["--batch_size=1", "--dropout=0", "--top_p=1", "--top_p=None", "--schedule=wsd"],
                      verbose=False)
    assert (cfg.batch_size, cfg.dropout, cfg.top_p, cfg.schedule) == (1, 0.0, None, "wsd")
