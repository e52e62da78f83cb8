"""
Draw a run's loss curves from out_dir/log.jsonl (written by train.py) to a PNG:

    python plot.py --out_dir=out-qazdata-char                  # -> out-qazdata-char/loss.png
    python plot.py --out_dir=out-qazdata-char --png=assets/quickstart_loss.png --title="char quick start"

Per-iteration training loss (light), evaluated train and val loss (points), and val bits per
byte on a second axis when the dataset records its val bytes.

    python plot.py --compare=out-tok-char,out-tok-bpe,out-tok-gpt2 --png=assets/tokenizers.png

draws several runs' val bits per byte against training time (the summed iteration times of each
log), the comparison across tokenizers.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import configurator
from kazgpt.cli import UserError, run_main
from kazgpt.files import atomic_write

FORMATS = ("png", "pdf", "svg")


def save_image(fig, png: Path) -> None:
    with atomic_write(png) as f:
        fig.savefig(f, format=png.suffix.lower().lstrip("."))
    print(f"wrote {png}")


@dataclass
class PlotConfig:
    out_dir: str = "out"
    png: Optional[str] = None  # the image (.png, .pdf or .svg); None: <out_dir>/loss.png
    title: Optional[str] = None
    compare: Optional[str] = None  # comma-separated out_dirs: val bpb against training time


def read_run_log(out_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training steps, evaluations) of a run, the later entry winning where a resumed run repeats an
    iteration; a line cut short by a kill is skipped."""
    path = out_dir / "log.jsonl"
    if not path.is_file():
        raise UserError(f"{path} does not exist: train.py writes it into out_dir when it saves a checkpoint")
    steps, evals = {}, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        (evals if "val_loss" in entry else steps)[entry["iter"]] = entry
    return [steps[k] for k in sorted(steps)], [evals[k] for k in sorted(evals)]


def plot_comparison(out_dirs: list[Path], logs: list[tuple[list[dict], list[dict]]], ax) -> None:
    """Val bits per byte of each run against its training time so far (seconds). A log line is
    written every log_interval steps with that step's time, which stands for the whole interval."""
    lowest, highest = float("inf"), 0.0
    for out_dir, (steps, evals) in zip(out_dirs, logs):
        elapsed, seconds, previous = {0: 0.0}, 0.0, 0
        for s in steps:
            seconds += s["ms"] / 1000 * (s["iter"] - previous)
            elapsed[s["iter"]], previous = seconds, s["iter"]
        points = [(elapsed[e["iter"]], e["val_bpb"]) for e in evals
                  if e.get("val_bpb") is not None and e["iter"] in elapsed]
        if not points:
            raise UserError(f"{out_dir}/log.jsonl has no val bits per byte: its dataset's meta.json lacks val_bytes")
        best = min(p[1] for p in points)
        lowest, highest = min(lowest, best), max(highest, max(p[1] for p in points))
        ax.plot(*zip(*points), "o-", ms=3, label=f"{out_dir.name} (best {best:.4f})")
    ax.set_ylim(lowest * 0.95, min(highest, 2 * lowest))  # the first evals of an untrained model would flatten the rest
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("val bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")


def main(argv: list[str]) -> None:
    cfg = configurator.load_config(PlotConfig, argv, verbose=False)
    runs = [Path(d) for d in (cfg.compare or "").split(",") if d] or [Path(cfg.out_dir)]
    logs = [read_run_log(run) for run in runs]  # (steps, evals) of each run: a missing log is reported first
    png = Path(cfg.png or ("compare.png" if cfg.compare else runs[0] / "loss.png"))
    if png.suffix.lower().lstrip(".") not in FORMATS:
        raise UserError(f"plot.py writes {', '.join('.' + f for f in FORMATS)} images; got '{png.name}'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if cfg.compare:
        plot_comparison(runs, logs, ax)
        ax.set_title(cfg.title or "val bits per byte against training time")
        fig.tight_layout()
        save_image(fig, png)
        return
    out_dir, (steps, evals) = runs[0], logs[0]
    if steps:
        ax.plot([s["iter"] for s in steps], [s["loss"] for s in steps], color="tab:blue", alpha=0.25, lw=0.8,
                label="train loss (per step)")
    if evals:
        ax.plot([e["iter"] for e in evals], [e["train_loss"] for e in evals], "o-", color="tab:blue", ms=3,
                label="train loss (eval)")
        ax.plot([e["iter"] for e in evals], [e["val_loss"] for e in evals], "o-", color="tab:orange", ms=3,
                label="val loss (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    bpb = [e for e in evals if e.get("val_bpb") is not None]
    if bpb:
        ax2 = ax.twinx()
        ax2.plot([e["iter"] for e in bpb], [e["val_bpb"] for e in bpb], "s--", color="tab:green", ms=3,
                 label="val bits per byte")
        ax2.set_ylabel("val bits per byte")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
    else:
        ax.legend(loc="upper right")
    if evals:
        best = min(evals, key=lambda e: e["val_loss"])
        ax.set_title(cfg.title or f"{out_dir.name}: best val loss {best['val_loss']:.4f} at iteration {best['iter']}")
    fig.tight_layout()
    save_image(fig, png)


if __name__ == "__main__":
    sys.exit(run_main(main))
