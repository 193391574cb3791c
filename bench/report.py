"""Tables from records: `python -m bench.report RUN_DIR [RUN_DIR ...] [--out DIR]`.

The robustness-vs-accuracy table has one row per experiment (the config without
its seed: dataset x model x defense, and a `variant` naming what differs where
several share those; seeds averaged, mean ± spread) and columns: clean accuracy,
then per (norm, eps) the worst-case robust accuracy
over the attacks and, where the suite has certifiers, the certified accuracy,
then, when any sanity check tripped (bench/sanity.py), `flags`: the checks
that tripped for that row, each with its threat where it has one; their reasons
are listed under the table in evasion.md.
Every cell of the markdown carries its 95% Wilson interval. Runs with the same
config hash and seed are the same run: only the newest is reported. Writes evasion.md and evasion.csv (and the per-attack
detail) and prints the table. `python -m bench.report` asks the scenario
registry (bench/scenarios) for each scenario's tables: privacy runs get the
privacy-vs-utility table (bench/privacy/report.py: privacy.md and privacy.csv).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.records import flatten, read_records, wilson_interval

ROW_KEYS = ["dataset", "model", "defense"]
CERTIFIED = "certified_any"  # bench.certify.evaluate: certified by at least one certifier
# Config keys that name a run, not an experiment: never shown as what differs.
_NOT_A_DIFFERENCE = ("paper", "reduced_of")
_MAX_SHOWN = 4  # differing keys named in a row's variant label


def latest_runs(records: pd.DataFrame) -> pd.DataFrame:
    """Keep only the newest run for each (config_hash, seed)."""
    newest = records.groupby(["config_hash", "seed"])["created"].transform("max")
    return records[records["created"] == newest]


def with_experiment(records: pd.DataFrame) -> pd.DataFrame:
    """Records with an `experiment` column (the experiment hash: the config without its seed) and `variant`:
    what differs from the other experiments of the same dataset x model x defense ("" when there is one)."""
    if "experiment_hash" in records.columns:  # records written before it existed: their config hash
        experiment = records["experiment_hash"].fillna(records["config_hash"])
    else:
        experiment = records["config_hash"]
    records = records.assign(experiment=experiment)
    configs = records.drop_duplicates("experiment")
    variant = {}
    for _, group in configs.groupby(ROW_KEYS):
        if len(group) == 1:
            variant[group.experiment.iloc[0]] = ""
            continue
        texts = list(group["config"]) if "config" in group.columns else [None] * len(group)
        if not all(isinstance(c, str) for c in texts):  # records from before configs were kept: the hash says it
            variant.update({e: f"experiment {e}" for e in group.experiment})
            continue
        flats = {e: flatten(json.loads(c)) for e, c in zip(group.experiment, texts)}
        keys = sorted(set().union(*flats.values()))
        shown = lambda v: json.dumps(v, sort_keys=True, default=str)
        differ = [k for k in keys if k != "seed" and not k.startswith(_NOT_A_DIFFERENCE)
                  and len({shown(f.get(k)) for f in flats.values()}) > 1]
        for e, flat in flats.items():
            parts = [f"{k}={shown(flat.get(k))}" for k in differ[:_MAX_SHOWN]]
            if len(differ) > _MAX_SHOWN:
                parts.append(f"+{len(differ) - _MAX_SHOWN} more keys (experiment {e})")
            variant[e] = ", ".join(parts) or f"experiment {e}"
    return records.assign(variant=records.experiment.map(variant))


def _threat_label(norm: str, eps: float) -> str:
    return f"{norm} {eps:g}"


def _cells(rows: pd.DataFrame, column: pd.Series) -> pd.DataFrame:
    """Per (experiment, column): mean and spread over seeds (shares), seeds, and the 95% Wilson interval of the
    mean on the examples it was measured on."""
    rows = rows.assign(column=column.to_numpy())
    grouped = rows.groupby(["experiment", "column"])
    cells = grouped.agg(mean=("value", "mean"), sd=("value", "std"), seeds=("seed", "nunique"), n=("n", "max"))
    low, high = wilson_interval(cells["mean"], cells["n"])
    return cells.assign(low=low, high=high)


def _format(mean, sd, seeds, low, high) -> str:
    """"96.70 [95.40, 97.60]", or with several seeds "96.70 ± 0.40 [95.40, 97.60]" (mean ± sd over seeds)."""
    if pd.isna(mean):
        return ""
    spread = f" ± {100 * sd:.2f}" if seeds > 1 and pd.notna(sd) else ""
    ci = f" [{100 * low:.2f}, {100 * high:.2f}]" if pd.notna(low) else ""
    return f"{100 * mean:.2f}{spread}{ci}"


def evasion_table(records: pd.DataFrame, evaluator: str = "worst_case", *, with_ci: bool = False) -> pd.DataFrame:
    """One row per experiment (seeds averaged); columns: clean, then robust and certified accuracy (%) per threat.

    Rows are experiments (same config but the seed), labelled dataset x model x defense and, where several
    experiments share those, `variant`: the config keys that differ. With `with_ci`, each cell is text:
    the mean, ± the spread over seeds when there are several, and the 95% Wilson interval (records.py).
    """
    records = with_experiment(latest_runs(records))
    records = records[records.scenario == "evasion"]
    clean = records[(records.evaluator == "clean") & (records.metric == "accuracy")]
    if clean.empty:
        raise BenchError("no clean-accuracy records of evasion runs found; run `python -m bench` first")
    # Per threat: robust accuracy (attacks, an upper bound), then certified accuracy (certifiers, a lower bound).
    robust = records[(records.evaluator == evaluator) & (records.metric == "robust_accuracy")]
    certified = records[(records.evaluator == CERTIFIED) & (records.metric == "certified_accuracy")]
    parts = [clean.assign(column="clean", order=[(0, 0.0, "")] * len(clean))]
    for prefix, rows in (("", robust), ("certified ", certified)):
        parts.append(rows.assign(column=[prefix + _threat_label(n, e) for n, e in zip(rows.norm, rows.eps)],
                                 order=[(1 + (n != "linf"), e, prefix) for n, e in zip(rows.norm, rows.eps)]))
    rows = pd.concat(parts, ignore_index=True)
    cells = _cells(rows, rows["column"])
    columns = list(dict.fromkeys(rows.sort_values("order", key=lambda o: o.map(str)).column))
    columns = ["clean"] + sorted((c for c in columns if c != "clean"),
                                 key=lambda c: min(o for o, k in zip(rows.order, rows.column) if k == c))
    table = clean.drop_duplicates("experiment").set_index("experiment")[ROW_KEYS + ["variant"]]
    if "split" in clean.columns and (clean["split"].fillna("test") != "test").any():  # tuning runs say so
        table.insert(len(ROW_KEYS), "split", clean.drop_duplicates("experiment").set_index("experiment")["split"]
                     .fillna("test"))
    for label in columns:
        c = cells.xs(label, level="column").reindex(table.index)
        table[label] = ([_format(*v) for v in zip(c["mean"], c["sd"], c["seeds"], c["low"], c["high"])]
                        if with_ci else c["mean"] * 100)
        if label == "clean":
            table["seeds"] = c["seeds"].astype(int)
    flags = flags_table(records)
    if not flags.empty:  # the column appears only when some check tripped, so clean tables keep their shape
        by_experiment = flags.groupby("experiment")["flag"].agg(lambda f: ", ".join(dict.fromkeys(f)))
        table["flags"] = by_experiment.reindex(table.index).fillna("")
    table = table.sort_values(ROW_KEYS + ["variant"]).reset_index(drop=True)
    if not table["variant"].astype(bool).any():
        table = table.drop(columns="variant")
    return table


def flags_table(records: pd.DataFrame) -> pd.DataFrame:
    """Tripped sanity checks: one row per (experiment, check, threat) with its reason."""
    records = with_experiment(latest_runs(records))
    columns = ROW_KEYS + ["variant", "experiment", "flag", "reason"]
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
    records = with_experiment(latest_runs(records))
    robust = records[records.metric.isin(["robust_accuracy", "cumulative_robust_accuracy"])]
    keys = ROW_KEYS + ["variant", "evaluator", "norm", "eps", "metric"]
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
    text = ("# Robustness vs accuracy (%)\n\nWorst case over the attack suite, per example. One row per experiment "
            "(its seeds averaged: mean ± spread over seeds), each cell with its 95% Wilson interval on the test "
            "examples it was measured on.\n\n" + to_markdown(evasion_table(records, with_ci=True)))
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
