"""Tables from records: `python -m bench.report RUN_DIR [RUN_DIR ...] [--out DIR]`.

The robustness-vs-accuracy table has one row per (dataset, model, defense) and
columns: clean accuracy, then per (norm, eps) the worst-case robust accuracy
over the attacks and, where the suite has certifiers, the certified accuracy,
then, when any sanity check tripped (bench/evaluate.py), `flags`: the checks
that tripped for that row, each with its threat where it has one; their reasons
are listed under the table in evasion.md.
Runs with the same config hash and seed are the same experiment: only the
newest is reported. Writes evasion.md and evasion.csv (and the per-attack
detail) and prints the table. `python -m bench.report` asks the scenario
registry (bench/scenarios) for each scenario's tables: privacy runs get the
privacy-vs-utility table (bench/privacy/report.py: privacy.md and privacy.csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.records import read_records

ROW_KEYS = ["dataset", "model", "defense"]
CERTIFIED = "certified_any"  # bench.certify.evaluate: certified by at least one certifier


def latest_runs(records: pd.DataFrame) -> pd.DataFrame:
    """Keep only the newest run for each (config_hash, seed)."""
    newest = records.groupby(["config_hash", "seed"])["created"].transform("max")
    return records[records["created"] == newest]


def _threat_label(norm: str, eps: float) -> str:
    return f"{norm} {eps:g}"


def evasion_table(records: pd.DataFrame, evaluator: str = "worst_case") -> pd.DataFrame:
    """Rows: dataset x model x defense (averaged over seeds); columns: clean, then robust accuracy (%) per threat."""
    records = latest_runs(records)
    records = records[records.scenario == "evasion"]
    clean = records[(records.evaluator == "clean") & (records.metric == "accuracy")]
    if clean.empty:
        raise BenchError("no clean-accuracy records of evasion runs found; run `python -m bench` first")
    table = clean.groupby(ROW_KEYS)["value"].mean().mul(100).rename("clean").to_frame()
    table["seeds"] = clean.groupby(ROW_KEYS)["seed"].nunique()
    # Per threat: robust accuracy (attacks, an upper bound), then certified accuracy (certifiers, a lower bound).
    columns = []
    for prefix, rows in (("", records[(records.evaluator == evaluator) & (records.metric == "robust_accuracy")]),
                         ("certified ", records[(records.evaluator == CERTIFIED) &
                                                (records.metric == "certified_accuracy")])):
        if rows.empty:
            continue
        rows = rows.assign(threat=[prefix + _threat_label(n, e) for n, e in zip(rows.norm, rows.eps)])
        pivot = rows.pivot_table(index=ROW_KEYS, columns="threat", values="value", aggfunc="mean").mul(100)
        table = table.join(pivot)
        columns += [(n, e, prefix, t) for n, e, t in rows[["norm", "eps", "threat"]].drop_duplicates().itertuples(
            index=False)]
    fixed = ["clean", "seeds"]
    table = table[fixed + [t for *_, t in sorted(columns)]]
    flags = flags_table(records)
    if not flags.empty:  # the column appears only when some check tripped, so clean tables keep their shape
        labels = flags.groupby(ROW_KEYS)["flag"].agg(lambda f: ", ".join(dict.fromkeys(f)))
        table["flags"] = labels.reindex(table.index).fillna("")
    return table.reset_index()


def flags_table(records: pd.DataFrame) -> pd.DataFrame:
    """Tripped sanity checks: one row per (dataset, model, defense, check, threat) with its reason."""
    records = latest_runs(records)
    columns = ROW_KEYS + ["flag", "reason"]
    if "reason" not in records.columns:
        return pd.DataFrame(columns=columns)
    tripped = records[(records.evaluator == "sanity") & (records.value > 0)]
    if tripped.empty:
        return pd.DataFrame(columns=columns)
    threat = [f"{m} ({_threat_label(n, e)})" if n != "none" else m
              for m, n, e in zip(tripped.metric, tripped.norm, tripped.eps)]
    return tripped.assign(flag=threat)[columns].drop_duplicates().reset_index(drop=True)


def attack_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per-attack robust accuracy (%) and seconds: one row per (dataset, model, defense, attack, threat, metric).

    metric is "robust_accuracy" (the attack alone) or "cumulative_robust_accuracy" (after it and the attacks
    before it, in a cumulative suite).
    """
    records = latest_runs(records)
    robust = records[records.metric.isin(["robust_accuracy", "cumulative_robust_accuracy"])]
    keys = ROW_KEYS + ["evaluator", "norm", "eps", "metric"]
    table = robust.groupby(keys).agg(robust_accuracy=("value", "mean"), seconds=("seconds", "mean"), n=("n", "max"))
    table["robust_accuracy"] *= 100
    return table.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".2f")


def write_tables(records: pd.DataFrame, out: str | Path) -> dict[str, Path]:
    """Write evasion.md / evasion.csv / attacks.csv into `out`; returns the paths."""
    from bench.records import atomic_write_bytes

    out = Path(out)
    main, detail = evasion_table(records), attack_table(records)
    text = "# Robustness vs accuracy (%)\n\nWorst case over the attack suite, per example.\n\n" + to_markdown(main)
    flags = flags_table(records)
    if not flags.empty:
        text += "\n\n## Sanity flags\n\n" + to_markdown(flags)
    text += "\n\n## Per attack\n\n" + to_markdown(detail) + "\n"
    return {
        "md": atomic_write_bytes(out / "evasion.md", text.encode()),
        "csv": atomic_write_bytes(out / "evasion.csv", main.to_csv(index=False).encode()),
        "attacks": atomic_write_bytes(out / "attacks.csv", detail.to_csv(index=False).encode()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories (searched recursively) or records.parquet files")
    parser.add_argument("--out", help="folder for evasion.md/.csv (default: the first path)")
    args = parser.parse_args(argv)
    try:
        records = read_records(*args.paths)
        out = args.out or (args.paths[0] if Path(args.paths[0]).is_dir() else Path(args.paths[0]).parent)
        from bench.scenarios import SCENARIOS

        for name in dict.fromkeys(records.scenario):  # each scenario's own table, in the order first seen
            scenario = SCENARIOS.get(name)
            if scenario is None:
                print(f"warning: records of scenario '{name}' have no registered table (bench/scenarios); skipped",
                      file=sys.stderr)
                continue
            frame = records[records.scenario == name]
            written = scenario.write_tables(frame, out)
            print(to_markdown(scenario.table(frame)))
            print(f"\nwrote {', '.join(map(str, written))}")
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
