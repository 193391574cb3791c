"""The privacy-vs-utility table from records (privacy.md, privacy.csv).

    python -m bench.privacy.report RUN_DIR [RUN_DIR ...] [--out DIR] [--note TEXT]

One row per experiment (the config without its seed: dataset, model, training
method, epsilon, and a `variant` column naming what differs where several share
those), averaged over seeds, accuracy with its 95% Wilson interval;
non-private training has epsilon = inf. Columns: test accuracy (%), epsilon
under the RDP and PLD accountants, the canary audit's empirical epsilon lower
bound, loss-threshold AUC, LiRA (online) AUC and TPR at 0.1% and 1% FPR.
Only records of the privacy scenario are read; runs with the same config hash
and seed are the same experiment and only the newest is kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.records import atomic_write_bytes, read_records, wilson_interval
from bench.report import latest_runs, with_experiment

ROW_KEYS = ["dataset", "model", "defense", "epsilon"]
COLUMNS = {  # column -> (evaluator, metric, scale)
    "accuracy": ("utility", "test_accuracy", 100.0),
    "eps_rdp": ("accountant_rdp", "epsilon", 1.0),
    "eps_pld": ("accountant_pld", "epsilon", 1.0),
    "eps_audit_lb": ("canary_audit", "epsilon_lower_bound", 1.0),
    "loss_auc": ("loss_threshold", "auc", 1.0),
    "lira_auc": ("lira_online", "auc", 1.0),
    "lira_tpr@0.1%": ("lira_online", "tpr_at_0.1%_fpr", 100.0),
    "lira_tpr@1%": ("lira_online", "tpr_at_1%_fpr", 100.0),
}


def privacy_table(records: pd.DataFrame) -> pd.DataFrame:
    """The privacy-vs-utility table (accuracy and TPRs in %); see the module docstring."""
    records = records[records.scenario == "privacy"]
    if records.empty:
        raise BenchError("no privacy records found; run `python -m bench scenario=privacy` first")
    records = with_experiment(latest_runs(records))
    pld = records[(records.evaluator == "accountant_pld") & (records.metric == "epsilon")]
    run_eps = pld.groupby("run_id")["value"].first()
    records = records.assign(epsilon=records.run_id.map(run_eps).fillna(np.inf).round(2))
    # one row per experiment (the config without its seed), labelled by what differs; seeds averaged
    rows = records.groupby("experiment").agg(**{k: (k, "first") for k in ROW_KEYS + ["variant"]},
                                             seeds=("seed", "nunique"))
    for column, (evaluator, metric, scale) in COLUMNS.items():
        picked = records[(records.evaluator == evaluator) & (records.metric == metric)]
        if not picked.empty:
            rows[column] = picked.groupby("experiment")["value"].mean().mul(scale)
            if column == "accuracy":  # its 95% Wilson interval on the test examples (bench/records.py)
                n = picked.groupby("experiment")["n"].max().reindex(rows.index)
                low, high = wilson_interval(rows[column] / scale, n)
                rows["accuracy_ci"] = [f"[{100 * a:.1f}, {100 * b:.1f}]" for a, b in zip(low, high)]
    table = rows.reset_index(drop=True).sort_values(["dataset", "model", "defense", "epsilon", "variant"])
    if not table["variant"].astype(bool).any():
        table = table.drop(columns="variant")
    order = ["dataset", "model", "defense", "variant", "epsilon", "accuracy", "accuracy_ci", *COLUMNS, "seeds"]
    return table[[c for c in dict.fromkeys(order) if c in table.columns]]


def write_privacy_tables(records: pd.DataFrame, out: str | Path, note: str | None = None) -> dict[str, Path]:
    """Write privacy.md (with `note`, if any, under the title) and privacy.csv into `out`; returns the paths."""
    table = privacy_table(records)
    text = ("# Privacy vs utility\n\n" + (note.strip() + "\n\n" if note else "")
            + "accuracy and LiRA TPRs in %; epsilon = inf is non-private; eps_audit_lb is "
            "the one-run canary audit's lower bound (95% confidence).\n\n"
            + table.to_markdown(index=False, floatfmt=".3g") + "\n")
    out = Path(out)
    return {"md": atomic_write_bytes(out / "privacy.md", text.encode()),
            "csv": atomic_write_bytes(out / "privacy.csv", table.to_csv(index=False).encode())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories (searched recursively) or records.parquet files")
    parser.add_argument("--out", help="folder for privacy.md/.csv (default: the first path)")
    parser.add_argument("--note", help="a paragraph for privacy.md under its title (how the runs were made)")
    args = parser.parse_args(argv)
    try:
        records = read_records(*args.paths)
        out = args.out or (args.paths[0] if Path(args.paths[0]).is_dir() else Path(args.paths[0]).parent)
        paths = write_privacy_tables(records, out, args.note)
        print(privacy_table(records).to_markdown(index=False, floatfmt=".3g"))
        print(f"\nwrote {paths['md']} and {paths['csv']}")
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
