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
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import configurator
from kazgpt.cli import UserError, not_a_file, run_main
from kazgpt.files import check_output, commit, temporary_name

MADE_BY = "kazgpt plot.py"  # the image's Creator: plot.py replaces only images it made
FORMATS = ("png", "pdf", "svg")  # those that carry the Creator


@dataclass
class PlotConfig:
    out_dir: str = "out"
    png: Optional[str] = None  # the image (.png, .pdf or .svg); None: <out_dir>/loss.png
    title: Optional[str] = None
    compare: Optional[str] = None  # comma-separated out_dirs: val bpb against training time


def read_run_log(out_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training steps, evaluations) of a run, the later entry winning where a resumed run repeats an iteration."""
    path = out_dir / "log.jsonl"
    problem = not_a_file(path)
    if problem:
        raise UserError(f"{path} {problem}: train.py writes it into out_dir while training")
    steps, evals, skipped = {}, {}, []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        entry = log_entry(line)
        if entry is None:
            skipped.append(n)
        else:
            (evals if "val_loss" in entry else steps)[entry["iter"]] = entry
    if skipped:
        print(f"warning: skipped {len(skipped)} line(s) of {path} that are not train.py log entries "
              f"(line {', '.join(map(str, skipped[:5]))}{', ...' if len(skipped) > 5 else ''})", file=sys.stderr)
    return [steps[k] for k in sorted(steps)], [evals[k] for k in sorted(evals)]


def log_entry(line: str) -> Optional[dict]:
    """A log.jsonl line as train.py writes it (a step: iter, loss, ms; an eval: iter, train_loss,
    val_loss), or None for anything else: a truncated line, another program's, a non-finite value."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or type(entry.get("iter")) is not int:
        return None
    keys = ("train_loss", "val_loss") if "val_loss" in entry else ("loss", "ms")
    numbers = [entry.get(k) for k in keys] + ([entry["val_bpb"]] if entry.get("val_bpb") is not None else [])
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers)
    return entry if ok else None


def image_path(png: Path) -> Path:
    """Check the image path before drawing: a known format, a folder that exists, and no file there
    that plot.py did not make."""
    if png.suffix.lower().lstrip(".") not in FORMATS:
        raise UserError(f"plot.py writes {', '.join('.' + f for f in FORMATS)} images; got '{png.name}': "
                        "end the name in one of them")
    check_output(png, lambda p: p.is_file() and MADE_BY.encode() in p.read_bytes(), "image")
    return png


def save_image(fig, png: Path) -> None:
    """Write the figure atomically, marked as plot.py's."""
    tmp = temporary_name(png)
    try:
        fig.savefig(tmp, format=png.suffix.lower().lstrip("."), metadata={"Creator": MADE_BY})
        commit({tmp: png})
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {png} ({e.strerror or e})") from None
    print(f"wrote {png}")


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


def main() -> None:
    cfg = configurator.load_config(PlotConfig, sys.argv[1:], verbose=False)
    runs = [Path(d) for d in (cfg.compare or "").split(",") if d] or [Path(cfg.out_dir)]
    logs = [read_run_log(run) for run in runs]  # (steps, evals) of each run: a missing log is reported first
    png = image_path(Path(cfg.png or ("compare.png" if cfg.compare else runs[0] / "loss.png")))
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
    run_main(main)
