"""results/certified.md from the records of certified-training runs: the sandwich per model and epsilon.

    python scripts/certified_table.py                       # the default runs below, if present
    python scripts/certified_table.py RUN_DIR ... --out results/certified.md

For each run folder (a finished `python -m bench` run) it reads `records.parquet` and, when present,
`certified_records.parquet` (written by `python -m bench.certify RUN_DIR`, which adds certifiers or
epsilons to a run that had none, e.g. the standard and PGD-trained models). Rows of records.parquet win
where both have the same (evaluator, eps, metric). Columns, in %, on the run's held-out examples:
clean >= PGD-40 (the run's attack suite, per-example worst case) >= suite-certified (an example is
certified when any certifier certifies it) >= each certifier's figure. `n` < 1,000: the certify CLI run
on the first n test examples (`--n-examples`), its own clean and PGD numbers on them. Bound seconds per example are the
certifier's wall time in that run (compilation included) divided by its example count. Reported numbers
come from the `paper.reported` block of the full-scale preset named by the run's `reduced_of`.
Nothing here is typed by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [
    "results/runs/presets/standard_mnist_reduced",
    "results/runs/presets/madry_mnist_reduced",
    "results/runs/presets/ibp_gowal2018_mnist_reduced",
    "results/runs/presets/crown_ibp_zhang2020_mnist_reduced",
    "results/runs/presets/ibp_gowal2018_mnist_eps03_reduced",
    "results/runs/presets/crown_ibp_zhang2020_mnist_eps03_reduced",
]
CERTIFIERS = {"ibp": "IBP", "crown": "CROWN", "crown_ibp": "CROWN-IBP", "alpha_crown": "alpha-CROWN"}


def load_records(run: Path) -> list[pd.DataFrame]:
    """The run's records, then the certify CLI's (each with its own clean accuracy and example count)."""
    frames = [pd.read_parquet(run / name) for name in ("records.parquet", "certified_records.parquet")
              if (run / name).is_file()]
    if not frames:
        raise SystemExit(f"error: {run} has no records.parquet; pass finished run folders")
    for frame in frames:
        frame["eps_key"] = frame.eps.round(6)
    return frames


def pick(frames: list[pd.DataFrame], eps: float) -> pd.DataFrame:
    """Records for one eps from one source: the run's own where it has certified accuracy at eps, else the
    certify CLI's where that has it, else the run's (so clean, PGD and certified share their examples)."""
    for frame in frames:
        if ((frame.eps_key == eps) & (frame.metric == "certified_accuracy")).any():
            return frame
    return frames[0]


def reported(config) -> dict[float, float]:
    """{eps: reported verified accuracy %} of the full preset this reduced one stands for."""
    name = config.get("reduced_of")
    path = ROOT / "conf" / "experiment" / f"{name}.yaml"
    if not name or not path.is_file():
        return {}
    paper = OmegaConf.load(path).get("paper") or {}
    out = {}
    for metric, entry in (paper.get("reported") or {}).items():
        if str(metric).startswith("verified_eps_"):
            out[round(float(str(metric).removeprefix("verified_eps_")), 6)] = float(entry.value)
    return out


def run_rows(run: Path) -> tuple[list[dict], list[dict]]:
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    frames = load_records(run)
    defense = str(config.defense._target_).rsplit(".", 1)[-1]
    train_eps = config.defense.get("eps")
    model = str(config.model._target_).rsplit(".", 1)[-1]
    train = frames[0][(frames[0].evaluator == "train") & (frames[0].metric == "seconds")].value
    papers = reported(config)
    rows, timing = [], []
    bound_eps = sorted({e for f in frames for e in f[f.metric.isin(["robust_accuracy", "certified_accuracy"])
                                                     & (f.evaluator != "smoothing")].eps_key})
    for eps in bound_eps:
        frame = pick(frames, eps)
        clean = frame[(frame.evaluator == "clean") & (frame.metric == "accuracy")]
        at = frame[frame.eps_key == eps]
        get = lambda evaluator, metric: at[(at.evaluator == evaluator) & (at.metric == metric)].value
        pgd, worst = get("pgd", "robust_accuracy"), get("worst_case", "robust_accuracy")
        row = {"run": run.name, "model": model, "defense": defense,
               "train eps": "-" if train_eps is None else f"{float(train_eps):g}",
               "train min": f"{train.iloc[0] / 60:.1f}" if len(train) else "-",
               "eps": f"{eps:g}", "n": str(int(clean.n.iloc[0])) if len(clean) else "-",
               "clean": _pct(clean.value), "PGD-40": _pct(pgd),
               "worst case": _pct(worst) if len(worst) and (not len(pgd) or worst.iloc[0] != pgd.iloc[0]) else "=",
               "suite-certified": _pct(get("certified_any", "certified_accuracy"))}
        for name, label in CERTIFIERS.items():
            row[f"{label}-certified"] = _pct(get(name, "certified_accuracy"))
            hit = at[(at.evaluator == name) & (at.metric == "certified_accuracy")]
            if len(hit):
                timing.append({"run": run.name, "model": model, "certifier": label, "eps": f"{eps:g}",
                               "examples": int(hit.n.iloc[0]),
                               "ms / example": f"{1e3 * hit.seconds.iloc[0] / max(int(hit.n.iloc[0]), 1):.2f}"})
        row["paper verified (full scale)"] = f"{papers[eps]:.2f}" if eps in papers else "-"
        rows.append(row)
    return rows, timing


def _rel(path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _overrides(run) -> list[str]:
    path = Path(run) / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else ["?"]


def _pct(series) -> str:
    return f"{100 * float(series.iloc[0]):.1f}" if len(series) else "-"


def table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(none)"]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = [c for c in columns if any(r.get(c, "-") != "-" for r in rows)]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
        ["| " + " | ".join(str(r.get(c, "-")) for c in columns) + " |" for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help=f"run folders (default: those of {DEFAULT_RUNS} present)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "certified.md")
    args = parser.parse_args(argv)
    runs = args.runs or [ROOT / r for r in DEFAULT_RUNS if (ROOT / r / "records.parquet").is_file()]
    rows, timing = [], []
    for run in runs:
        r, t = run_rows(run)
        rows += r
        timing += t
    speed = ROOT / "results" / "certified_speed.md"
    lines = [
        "# Certified robustness: the sandwich on mnist5k",
        "",
        "Made by `scripts/certified_table.py` from the runs' records (see its docstring); nothing typed.",
        "Accuracies in % on the first `n` of the 1,000 held-out mnist5k test images, L-inf. For every row",
        "clean >= PGD-40 (empirical robust accuracy, an upper bound on the true robust accuracy) >=",
        "suite-certified (a lower bound: certified by any certifier) >= each certifier. Every run and",
        "`python -m bench.certify` checks soundness (no certified example broken by PGD): a failure fails the",
        "run, and makes the CLI exit 2 after writing its records. `CROWN` uses CROWN intermediate bounds,",
        "`CROWN-IBP` IBP ones. `worst case` is shown only where it differs from PGD-40. `train min`: wall",
        "minutes of training in that run on a shared 2-core machine whose load varied (see",
        "`results/certified_speed.md` for step times measured side by side). `paper verified` is the",
        "full-scale number (MNIST, DM-large) that the reduced preset stands for, not a target for cnn_small on",
        "4,000 training images.",
        "",
        "Runs (`python -m bench` with these overrides; `+ certify CLI`: the folder also holds",
        "`certified_records.parquet` from `python -m bench.certify`):",
        "",
        *[f"- `{_rel(r)}`: `{' '.join(_overrides(r))}`"
          + (" + certify CLI" if (Path(r) / "certified_records.parquet").is_file() else "") for r in runs],
        "",
        "## Accuracy",
        "",
        *table(rows),
        "",
        "## Bound time in these runs",
        "",
        "Wall time of each certifier over the run's examples (batches of 100, compilation included, on a",
        "shared 2-core machine), per example.",
        "",
        *table(timing),
        "",
        f"Per-example bound time on cnn_small and cnn_large without compilation: `{speed.relative_to(ROOT)}`.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
