import dataclasses
from dataclasses import dataclass
from typing import Optional

import pytest

from kazgpt.cli import UserError
from configurator import load_config
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


@pytest.mark.parametrize("text, fragment", [
    ("batch_size = 10**5000", "batch_size must be at most 9,223,372,036,854,775,807 in size, got an integer of "
                              "16610 bits"),
    ("batch_size = -2**63", "batch_size must be at most"),
    ("learning_rate = 10**400", "learning_rate is too large for a float (at most about 1.8e308), got an integer "
                                "of 1329"),
    ("out_dir = 10**5000", "out_dir must be str, got an integer of 16610 bits (int)"),
    ("out_dir = ['x'] * 1000", "out_dir must be str, got ['x', 'x', "),
])
def test_numbers_past_what_a_run_can_hold(tmp_path, text, fragment):
    """Integers past 64 bits (Python has no text for one of over 4300 digits) and past a float's
    range are refused by name, and a long value is shown cut short, in one line."""
    f = tmp_path / "c.py"
    f.write_text(text + "\n")
    with pytest.raises(UserError) as refused:
        load_config(Cfg, [str(f)], verbose=False)
    assert fragment in str(refused.value) and len(str(refused.value)) < 300


def test_the_largest_int_is_taken_and_a_float_past_range_refused_on_the_command_line():
    assert load_config(Cfg, ["--batch_size=9223372036854775807"], verbose=False).batch_size == 2**63 - 1
    with pytest.raises(UserError, match="learning_rate is too large for a float"):
        load_config(Cfg, ["--learning_rate=1" + "0" * 400], verbose=False)
