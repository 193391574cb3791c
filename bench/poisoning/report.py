"""The poisoning table from records (poisoning.md, poisoning.csv).

One row per (experiment, trained model): the experiment is the config without its seed (bench/report.py's
`with_experiment`: seeds of one experiment are averaged, mean ± spread over seeds, and `variant` names what
else differs), the trained model is `clean_training` (the clean set, ratio 0), `poisoned` (the poisoned set,
defense = the training objective only) or a filter (defense = objective + filter, retrained without what it
flagged). Columns: attack, ratio (the share of the training set modified), defense, CA, ASR, RA (%), the
filter's detection TPR and FPR (%), DER (in [0, 1]), targeted success (%), gradient matching's cosine between the
poisons' and the adversarial gradient on the surrogate before and after crafting (mean over targets), epsilon (DP-SGD's, PLD accountant;
shown when some row trained with DP: inf for the others), split (the split scored), seeds (the list), targets (per
seed, for targeted attacks) and the command that made the row (`python -m bench -m <overrides> seed=<seeds>`).
Shares carry the 95% Wilson interval of the mean on the examples they were measured on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.records import atomic_write_bytes
from bench.report import _cells, _format, latest_runs, to_markdown, with_experiment

COLUMNS = {"CA": "clean_accuracy", "ASR": "attack_success_rate", "RA": "robust_accuracy", "TPR": "tpr",
           "FPR": "fpr", "DER": "der", "targeted": "targeted_success", "cos before": "alignment_before",
           "cos after": "alignment"}
NOT_SHARES = ("DER", "cos before", "cos after")  # printed as they are (3 decimals), not as %
ORDER = {"surrogate": 0, "clean_training": 0, "poisoned": 1}
_NAMED_BY_ROW = ("scenario.attack=", "scenario.ratio=")  # shown as columns, not as the variant


def poisoning_table(records: pd.DataFrame, *, with_ci: bool = False) -> pd.DataFrame:
    """The poisoning table (see the module docstring); with `with_ci`, cells are text with spread and interval."""
    records = records[records.scenario == "poisoning"]
    if records.empty:
        raise BenchError("no poisoning records found; run `python -m bench scenario=poisoning` first")
    records = with_experiment(latest_runs(records))
    picked = records[records.metric.isin(list(COLUMNS.values()))]
    keys = ["experiment", "evaluator"]
    column = picked["evaluator"] + "\x00" + picked["metric"]
    cells = _cells(picked, column)
    for column, default in (("dp_epsilon", float("inf")), ("split", "test"), ("command", ""), ("targets", "")):
        if column not in picked.columns:
            picked = picked.assign(**{column: default})
    picked = picked.assign(dp_epsilon=picked.dp_epsilon.fillna(float("inf")), split=picked.split.fillna("test"),
                           command=picked.command.fillna(""), targets=picked.targets.fillna(""))
    seed_list = lambda s: ",".join(map(str, sorted(set(int(v) for v in s))))
    table = picked.groupby(keys).agg(dataset=("dataset", "first"), model=("model", "first"),
                                     attack=("attack", "first"), ratio=("poison_ratio", "mean"),
                                     defense=("defense", "first"), variant=("variant", "first"),
                                     epsilon=("dp_epsilon", "max"), split=("split", "first"),
                                     seeds=("seed", seed_list), command=("command", "first"),
                                     rev=("git_rev", lambda s: ",".join(sorted({str(v)[:7] for v in s}))),
                                     targets=("targets", lambda s: " / ".join(dict.fromkeys(v for v in s if v))))
    table = table.reset_index()
    table["command"] = [f"python -m bench -m {c} seed={s}" if c else "" for c, s in zip(table.command, table.seeds)]
    named = {"clean_training": "{} (clean data)", "surrogate": "{} (attacker's surrogate, clean data)",
             "poisoned": "{}"}
    table["defense"] = [named.get(e, "{}+" + e).format(d) for d, e in zip(table.defense, table.evaluator)]
    table["variant"] = [", ".join(p for p in str(v).split(", ") if p and not p.startswith(_NAMED_BY_ROW))
                        for v in table.variant]
    for label, metric in COLUMNS.items():
        values = []
        for experiment, evaluator in zip(table.experiment, table.evaluator):
            key = (experiment, f"{evaluator}\x00{metric}")
            if key not in cells.index:
                values.append("" if with_ci else float("nan"))
                continue
            c = cells.loc[key]
            if not with_ci:
                values.append(c["mean"] if label in NOT_SHARES else 100 * c["mean"])
            elif label in NOT_SHARES:
                spread = f" ± {c['sd']:.3f}" if c["seeds"] > 1 and pd.notna(c["sd"]) else ""
                values.append(f"{c['mean']:.3f}{spread}" if pd.notna(c["mean"]) else "")
            else:
                values.append(_format(c["mean"], c["sd"], c["seeds"], c["low"], c["high"]))
        table[label] = values
    seconds = picked_seconds(records)
    table["train s"] = [seconds.get(key, float("nan")) for key in zip(table.experiment, table.evaluator)]
    if with_ci:
        table["train s"] = [f"{v:.0f}" if pd.notna(v) else "" for v in table["train s"]]
    table["ratio"] = 100 * table["ratio"]
    table = table.assign(_order=table.evaluator.map(ORDER).fillna(2)).sort_values(
        ["dataset", "model", "attack", "ratio", "split", "defense", "epsilon", "variant", "_order", "evaluator"])
    empty = [label for label in COLUMNS if (table[label].astype(str).isin(["", "nan"])).all()]
    table = table.drop(columns=["experiment", "evaluator", "_order", *empty])
    if table["command"].astype(bool).all():  # the command says what differs, in full
        table = table.drop(columns="variant")
    for column in ("variant", "targets", "command"):
        if column in table.columns and not table[column].astype(bool).any():
            table = table.drop(columns=column)
    if not np.isfinite(table["epsilon"].astype(float)).any():
        table = table.drop(columns="epsilon")
    if set(table["split"]) == {"test"}:
        table = table.drop(columns="split")
    if "command" not in table.columns:
        table = table.drop(columns="rev")
    last = [c for c in ("seeds", "targets", "command", "rev") if c in table.columns]
    table = table[[c for c in table.columns if c not in last] + last].rename(columns={"ratio": "ratio %"})
    return table.reset_index(drop=True)


def picked_seconds(records: pd.DataFrame) -> dict:
    """(experiment, evaluator) -> mean over seeds of the recorded training time (s) of that trained model (for
    gradient matching: all the victims of a seed together)."""
    rows = with_experiment(latest_runs(records[records.scenario == "poisoning"]))
    rows = rows[rows.metric == "train_seconds"]
    return rows.groupby(["experiment", "evaluator"])["value"].mean().to_dict()


# What the papers report, for comparison (typed from the papers; every measured number above comes from records).
PUBLISHED = """## Published anchors (full scale; not reproduced here)

- BadNets (Gu, Dolan-Gavitt & Garg 2017), MNIST, their CNN, full training set, pattern backdoor: clean accuracy
  98.2%, backdoor success 99.95% (a 5x5 trigger; conf/experiment/gu2017_badnets_mnist_reduced.yaml).
- BackdoorBench (Wu et al. 2022), CIFAR-10, PreAct-ResNet18, BadNets at 10%: 86% ASR left after activation
  clustering, 92% after spectral signatures.
- Gradient matching (Geiping et al. 2021, Witches' Brew), CIFAR-10, ResNet-18 trained from scratch, eps 16/255,
  1% poisons, 8 restarts and differentiable augmentation: high targeted success (the paper's Table 1).
"""


def write_poisoning_tables(records: pd.DataFrame, out) -> dict:
    """poisoning.md (cells with spread over seeds and 95% intervals; the test split's table, then the validation
    split's (recipe trials), then the published anchors) and poisoning.csv (means, every split) into `out`."""
    from pathlib import Path

    out = Path(out)
    records = records[records.scenario == "poisoning"]
    split = records["split"].fillna("test") if "split" in records.columns else pd.Series("test", records.index)
    text = ("# Poisoning and backdoors\n\nOne row per experiment and trained model (seeds averaged: mean ± spread "
            "over seeds, 95% Wilson interval of the mean). ratio: share of the training set modified (%). CA, ASR, "
            "RA, TPR, FPR, targeted success in %; DER in [0, 1] (0.5: no change); epsilon: DP-SGD's (PLD "
            "accountant, delta in the records; inf: not private); train s: training time of that model (s, mean "
            "over seeds). Definitions: bench/poisoning/metrics.py. Each row's command made it, at the git revision in "
            "`rev` (the working tree was shared, so the revision is the nearest commit); targets: the target test "
            "images of each seed (targeted attacks). This file: `python -m bench.report <run folders> --out results` "
            "(bench/poisoning/report.py, from the records only).\n\n")
    test = records[split == "test"]
    if not test.empty:
        text += "## Test split\n\n" + to_markdown(poisoning_table(test, with_ci=True)) + "\n\n"
    validation = records[split == "validation"]
    if not validation.empty:
        text += ("## Recipe trials on the validation split\n\nScored on the validation split carved from the "
                 "training split (`validation=N suite.split=validation`); the test split was not read to choose. The "
                 "commands name the presets as they were at `rev`.\n\n"
                 + to_markdown(poisoning_table(validation, with_ci=True)) + "\n\n")
    for picture in sorted(out.glob("poisoning*.png")):
        text += (f"![{picture.stem}]({picture.name})\n\n{picture.name}: a run's poisons.png (target, clean images, "
                 "poisons, and each perturbation scaled from [-eps, eps] to [0, 1]).\n\n")
    text += PUBLISHED
    return {"md": atomic_write_bytes(out / "poisoning.md", text.encode()),
            "csv": atomic_write_bytes(out / "poisoning.csv", poisoning_table(records).to_csv(index=False).encode())}
