"""Leaderboard entries from records: one JSON entry per (model, dataset, threat).

An entry holds RobustBench's fields (name, link, authors, venue, architecture, eps, clean_acc, reported,
autoattack_acc, unreliable, footnote) and, for every number, a *cell*: the mean over the experiment's seeds,
their spread, the examples it was measured on, its 95% Wilson interval where it is an accuracy, and its
provenance (config hashes, git revisions, seeds, run ids, data fingerprints, hardware, seconds). Nothing here
is typed by hand: every cell is computed from `records.parquet` files; reported numbers come from the
presets' `paper` blocks in conf/experiment/.

Families (the records' `scenario`):
- evasion: one entry per (experiment, norm, eps): clean, worst-case robust accuracy of the suite, each
  attack, the transfer check, each further evaluation of the same trained parameters (`load_params` runs, such
  as `suite=autoattack`), certified accuracy; `best_known` is the lowest robust accuracy any of them found.
- privacy: one entry per experiment, threat `dp eps=<epsilon>` (PLD accountant; inf when not private).
- poisoning: one entry per experiment, threat `poisoning <attack> <ratio>`.
- theft: one entry per (experiment, API output and defense), threat `theft <output>/<defense>`.
- blackbox: one entry per (experiment, attack, norm, eps), threat `blackbox <attack> <norm> <eps>`.
- any other scenario (transfer, blackbox, physical, and those to come): one entry per experiment with a cell
  per (evaluator, metric, distinguishing columns), not ranked.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from bench.errors import BenchError
from bench.records import RECORDS_FILE, read_records, wilson_interval
from bench.report import latest_runs, with_experiment

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "conf" / "experiment"
MACHINE_FILE = "machine.json"  # written beside the records by `python -m bench.reproduce` (hardware)
SCHEMA = 1
# Columns that tell apart rows of one evaluator and metric in the families without a specific rule.
_DISTINGUISH = ("target", "budget", "transform", "round", "query_set", "method", "api_output", "api_defense",
                "shadows", "attack", "poison_ratio")
_NOT_SUITE_ATTACKS = {"clean", "worst_case", "sanity", "train", "transfer_check", "soundness"}


# --- reading --------------------------------------------------------------------------------------------------

def read_runs(*paths) -> pd.DataFrame:
    """Every record under the given run folders or records files, with the folder it came from (`run_dir`),
    the Hydra preset choice where the folder has one (`preset`) and the hardware note (`hardware`)."""
    files = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob(RECORDS_FILE)))
        else:
            raise BenchError(f"{p} does not exist; pass run folders (searched recursively) or records.parquet files")
    if not files:
        raise BenchError(f"no {RECORDS_FILE} under {', '.join(map(str, paths))}; run `python -m bench` (or "
                         "`python -m bench.reproduce PRESET`) first")
    frames = []
    for f in files:
        try:
            frame = read_records(f)
        except BenchError as err:  # a damaged file: one line, the others still count
            print(f"warning: {err}; skipped", file=sys.stderr)
            continue
        # machine.json beside the run (bench.reproduce, bench.byom), else the records' own hardware column
        hardware = _hardware(f.parent)
        if hardware == "not recorded" and "hardware" in frame:
            hardware = frame["hardware"].fillna("not recorded")
        frames.append(frame.assign(run_dir=str(f.parent.resolve()), preset=_preset(f.parent),
                                   hardware=hardware, command=_command(f.parent)))
    if not frames:
        raise BenchError("no readable records; rerun the runs whose records are damaged")
    return pd.concat(frames, ignore_index=True)


# overrides that do not change what a preset measures (where it writes, progress bars, resume, the further
# AutoAttack evaluation of its parameters)
_NEUTRAL = ("progress=", "hydra.", "checkpoint.", "load_params=", "suite=autoattack", "suite.eps=", "suite.norm=")


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))] if path.is_file() else []
    except Exception:  # an unreadable overrides.yaml only loses the command
        return []


def _preset(run_dir: Path) -> str | None:
    """The `+experiment=` choice of the run (Hydra's saved choices), with the overrides that change it appended
    ("madry_mnist_reduced + train.epochs=1"), so an overridden run never passes for the preset; None without."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        choice = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices.experiment", default=None)
    except Exception:  # an unreadable hydra.yaml only loses the preset name
        return None
    if choice in (None, "None", "null"):
        return None
    extra = [o for o in _overrides(run_dir) if not o.lstrip("+").startswith(("experiment=", *_NEUTRAL))]
    return str(choice) + (" + " + " ".join(extra) if extra else "")


def _command(run_dir: Path) -> str | None:
    overrides = [o for o in _overrides(run_dir) if not o.startswith(("hydra.run.dir=", "progress="))]
    return "python -m bench " + " ".join(overrides) if overrides else None


def _hardware(run_dir: Path) -> str:
    path = run_dir / MACHINE_FILE
    if not path.is_file():
        return "not recorded"
    try:
        return str(json.loads(path.read_text()).get("summary", "not recorded"))
    except (ValueError, OSError):
        return "not recorded"


# --- cells ----------------------------------------------------------------------------------------------------

def _num(value):
    """A JSON-safe float (None for NaN; inf stays a string, which JSON cannot hold as a number)."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _unique(series) -> list:
    return sorted({str(v) for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))})


_RUN_SECONDS: dict[str, float] = {}  # run id -> the time the run recorded (set by build_entries)


def run_seconds(records: pd.DataFrame) -> dict[str, float]:
    """Per run: the longest training time it recorded plus every other evaluator's seconds."""
    out = {}
    for run_id, rows in records.groupby("run_id"):
        train = rows[rows["evaluator"] == "train"]["seconds"].astype(float)
        out[str(run_id)] = float((train.max() if len(train) else 0.0)
                                 + rows[rows["evaluator"] != "train"]["seconds"].astype(float).sum())
    return out


def make_cell(rows: pd.DataFrame, *, label: str, share: bool | None = None, seconds: float | None = None) -> dict:
    """One number from the rows of one quantity of one experiment (one row per seed, or several to average within
    a seed): mean over seeds, spread (sample sd over seeds), n, the Wilson interval for accuracies, provenance."""
    if rows.empty:
        raise BenchError(f"no records for cell {label}")
    per_seed = rows.groupby("seed")["value"].mean()
    mean = float(per_seed.mean())
    sd = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None
    n = int(rows["n"].max())
    metric = str(rows["metric"].iloc[0])
    if share is None:
        share = metric.endswith(("accuracy", "rate", "success", "agreement_test", "agreement_uniform"))
    cell = {"label": label, "evaluator": str(rows["evaluator"].iloc[0]), "metric": metric,
            "value": _num(mean), "sd": _num(sd), "seeds": sorted(int(s) for s in per_seed.index), "n": n,
            "share": bool(share)}
    if share and n > 0 and math.isfinite(mean):
        low, high = wilson_interval(mean, n)
        cell["ci95"] = [_num(low), _num(high)]
    cell["provenance"] = {
        "run_ids": _unique(rows["run_id"]), "config_hashes": _unique(rows["config_hash"]),
        "experiment_hash": _unique(rows["experiment"])[0] if "experiment" in rows else None,
        "git_revs": _unique(rows["git_rev"]), "data_fingerprints": _unique(rows["data_fingerprint"]),
        "hardware": _unique(rows["hardware"]) if "hardware" in rows else ["not recorded"],
        "seconds": _num(rows["seconds"].astype(float).sum() if seconds is None else seconds),
        "run_seconds": _num(sum(_RUN_SECONDS.get(str(r), 0.0) for r in set(rows["run_id"]))),
        "run_dirs": [Path(d).name for d in _unique(rows["run_dir"])] if "run_dir" in rows else [],
        "commands": _unique(rows["command"]) if "command" in rows else [],
        "versions": _unique(rows["versions"])[:1],
    }
    return cell


def _select(frame: pd.DataFrame, evaluator=None, metric=None, norm=None, eps=None) -> pd.DataFrame:
    rows = frame
    if evaluator is not None:
        rows = rows[rows["evaluator"] == evaluator]
    if metric is not None:
        rows = rows[rows["metric"] == metric]
    if norm is not None:
        rows = rows[rows["norm"] == norm]
    if eps is not None:
        rows = rows[np.isclose(rows["eps"].astype(float), float(eps))]
    return rows


# --- paper blocks ---------------------------------------------------------------------------------------------

def _preset_file(name: str) -> dict:
    path = EXPERIMENTS / f"{name}.yaml"
    if not name or not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def preset_paper(name: str | None) -> dict:
    """The `paper` block of a preset, following presets it builds on (their `defaults` entries) for what it does
    not set itself."""
    seen, merged = set(), {}
    while name and name not in seen:
        seen.add(name)
        data = _preset_file(name)
        for key, value in (data.get("paper") or {}).items():
            merged.setdefault(key, value)
        parents = [d for d in data.get("defaults", []) if isinstance(d, str) and d not in ("_self_",)]
        name = parents[0] if parents else None
    return merged


def _config(frame: pd.DataFrame) -> dict:
    text = frame["config"].dropna().iloc[0] if "config" in frame and frame["config"].notna().any() else "{}"
    return json.loads(text)


def paper_info(frame: pd.DataFrame) -> dict:
    """Title, link, the reported numbers and the tolerance that apply to one experiment's records.

    A reduced preset (`reduced_of`) is held to its full-scale preset's reported numbers; a preset with
    numbers in its own `paper` block to those. `tolerance` (percentage points) is the reduced preset's own."""
    config = _config(frame)
    own = config.get("paper") or {}
    full = config.get("reduced_of")
    paper = preset_paper(full) if full else {}
    title = paper.get("title") or own.get("title")
    info = {"title": title, "url": paper.get("url") or own.get("url"), "code": paper.get("code") or own.get("code"),
            "reduced_of": full, "tolerance": own.get("tolerance", paper.get("tolerance")), "reported": []}
    reported = paper.get("reported") if full else None
    if reported:
        for key, entry in reported.items():
            if isinstance(entry, dict):
                info["reported"].append({"key": str(key), **{k: v for k, v in entry.items()}})
    else:  # numbers written straight into the preset's own block (the poisoning presets)
        for key, value in own.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "tolerance":
                info["reported"].append({"key": str(key), "value": float(value), "source": own.get("source", "")})
    if not info["title"] and own.get("source"):
        info["title"] = str(own["source"])
    return info


def _reported_target(key: str, family: str) -> str | None:
    """Which cell a reported number is compared with."""
    key = key.lower()
    if family == "evasion":
        if "clean" in key:
            return "clean"
        if key.startswith(("verified", "certified")):
            return "certified"
        if "autoattack" in key:
            return "best_known"
        return "robust"
    if family == "poisoning":
        if "clean" in key:
            return "clean"
        if "success" in key and "rate" in key and "attack" in key:
            return "asr"
        if "flip" in key or "success_rate" in key:
            return "targeted_success"
    if family == "privacy":
        return "accuracy"
    return None


# --- entries --------------------------------------------------------------------------------------------------

def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._]+", "-", str(text).lower()).strip("-") or "x"


def threat_label(norm: str, eps: float) -> str:
    return f"{norm} {float(eps):g}"


def _base(frame: pd.DataFrame, family: str, threat: str, *, model_key=None) -> dict:
    first = frame.iloc[0]
    paper = paper_info(frame)
    preset = next((p for p in frame["preset"] if isinstance(p, str) and p), None) if "preset" in frame else None
    variant = str(first.get("variant") or "")
    model, defense, dataset = str(first["model"]), str(first["defense"]), str(first["dataset"])
    name = preset or (f"{model} {defense}" + (f" ({variant})" if variant else ""))
    experiment = str(first["experiment"])
    model_id = model_key or slug(f"{dataset}-{model}-{defense}")
    return {
        "schema": SCHEMA, "id": slug(f"{family}-{dataset}-{threat}-{name}")[:96].rstrip("-.") + f"-{experiment[:6]}",
        "name": name, "family": family, "dataset": dataset, "threat": threat, "architecture": model,
        "defense": defense, "variant": variant, "preset": preset, "model_id": model_id, "experiment": experiment,
        "link": paper.get("url"), "authors": None, "venue": paper.get("title"), "paper": paper,
        "cells": {}, "flags": [], "sanity_flags": [], "footnote": "",
        "config": {k: v for k, v in _config(frame).items() if k != "seed"},
    }


def _finish(entry: dict) -> dict:
    """RobustBench's top-level fields from the cells (percent, 2 decimals), the reported-vs-measured differences,
    the reliability grade and the footnote."""
    cells = entry["cells"]

    def pct(name):
        cell = cells.get(name)
        if not cell or not isinstance(cell.get("value"), float):
            return None
        return round(100 * cell["value"], 2) if cell["share"] else round(cell["value"], 4)

    entry["clean_acc"] = pct("clean")
    entry["robust_acc"] = pct("robust")
    entry["best_known_acc"] = pct("best_known")
    entry["certified_acc"] = pct("certified")
    entry["autoattack_acc"] = pct("autoattack")
    comparisons = []
    for rep in entry["paper"]["reported"]:
        target = _reported_target(rep["key"], entry["family"])
        value = rep.get("accuracy", rep.get("value"))
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            comparisons.append({**rep, "cell": None, "measured": None, "difference": None})
            continue
        if entry["family"] == "privacy" and "epsilon" in rep:  # only at a comparable privacy budget
            eps = cells.get("epsilon", {}).get("value")
            if not isinstance(eps, float) or not (0.67 <= float(rep["epsilon"]) / eps <= 1.5):
                comparisons.append({**rep, "cell": None, "measured": None, "difference": None,
                                    "note": "another privacy budget"})
                continue
        measured = pct(target) if target in cells else None
        comparisons.append({**rep, "cell": target if target in cells else None, "measured": measured,
                            "difference": None if measured is None else round(measured - float(value), 2)})
    entry["reported"] = comparisons
    grade = "reliable"
    for flag in entry["flags"]:
        if flag["severity"] == "major":
            grade = "unreliable"
        elif grade == "reliable":
            grade = "caution"
    entry["reliability"] = grade
    entry["unreliable"] = grade == "unreliable"
    entry["footnote"] = "; ".join(f"{f['flag']}: {f['reason']}" for f in entry["flags"])
    return entry


def _flag(entry, flag, severity, reason):
    entry["flags"].append({"flag": flag, "severity": severity, "reason": reason})


def _suite_name(frame: pd.DataFrame) -> str:
    attacks = sorted({e for e in frame["evaluator"] if e not in _NOT_SUITE_ATTACKS
                      and not str(e).startswith("certif")})
    if any(a.startswith("apgd") for a in attacks):
        return "autoattack" if {"apgd_ce", "apgd_t", "square"} <= set(attacks) else "+".join(attacks)
    return "+".join(attacks) or "suite"


def _evasion_entries(frame: pd.DataFrame, evaluations: dict[str, list[pd.DataFrame]]) -> list[dict]:
    """Entries of one evasion experiment; `evaluations` maps its experiment to further evaluations of its params."""
    out = []
    if "split" in frame.columns:
        # measured on the validation split: tuning, never a leaderboard number
        frame = frame[frame["split"].fillna("test") != "validation"]
    clean = _select(frame, "clean", "accuracy")
    threats = frame[(frame["metric"].isin(["robust_accuracy", "certified_accuracy"])) & (frame["norm"] != "none")
                    & (frame["evaluator"] != "sanity")][["norm", "eps"]].drop_duplicates()
    if clean.empty and threats.empty:
        return []
    extra = evaluations.get(str(frame["experiment"].iloc[0]), [])
    for norm, eps in sorted(threats.itertuples(index=False), key=lambda t: (t[0] != "linf", t[0], t[1])):
        threat = threat_label(norm, eps)
        entry = _base(frame, "evasion", threat)
        entry["eps"], entry["norm"] = float(eps), str(norm)
        cells = entry["cells"]
        if not clean.empty:
            cells["clean"] = make_cell(clean, label="clean accuracy")
        worst = _select(frame, "worst_case", "robust_accuracy", norm, eps)
        if not worst.empty:
            attack_rows = _select(frame, None, None, norm, eps)
            attack_rows = attack_rows[~attack_rows["evaluator"].isin(_NOT_SUITE_ATTACKS)
                                      & attack_rows["metric"].isin(["robust_accuracy", "cumulative_robust_accuracy"])]
            cells["robust"] = make_cell(worst, label=f"robust accuracy, worst case over {_suite_name(frame)}",
                                        seconds=float(attack_rows["seconds"].astype(float).sum()))
        for attack in sorted(set(frame["evaluator"]) - _NOT_SUITE_ATTACKS):
            rows = _select(frame, attack, "robust_accuracy", norm, eps)
            if not rows.empty and not attack.startswith("certif"):
                cells[f"attack:{attack}"] = make_cell(rows, label=f"{attack} alone")
        transfer = _select(frame, "transfer_check", "robust_accuracy", norm, eps)
        if not transfer.empty:
            cells["transfer"] = make_cell(transfer, label="after the transfer check (surrogate attacks)")
        certified = _select(frame, "certified_any", "certified_accuracy", norm, eps)
        if not certified.empty:
            cells["certified"] = make_cell(certified, label="certified accuracy (any certifier)")
        for certifier in sorted(set(frame["evaluator"]) - {"certified_any"}):
            rows = _select(frame, certifier, "certified_accuracy", norm, eps)
            if not rows.empty:
                cells[f"certifier:{certifier}"] = make_cell(rows, label=f"certified by {certifier}")
        for other in extra:
            rows = _select(other, "worst_case", "robust_accuracy", norm, eps)
            if rows.empty:
                continue
            name = _suite_name(other)
            cells[f"eval:{name}"] = make_cell(rows, label=f"robust accuracy under a further evaluation ({name})")
            if name == "autoattack":
                cells["autoattack"] = make_cell(rows, label="robust accuracy under AutoAttack (APGD-CE, APGD-T, "
                                                            "Square)")
            for flag in _sanity(other, norm, eps):
                entry["sanity_flags"].append({**flag, "evaluation": name})
        if _suite_name(frame) == "autoattack" and "robust" in cells:
            cells["autoattack"] = cells["robust"]
        # best known: the lowest robust accuracy any attack or evaluation of these parameters found
        candidates = [k for k in cells if k == "robust" or k == "transfer" or k.startswith("eval:")]
        if candidates:
            best = min(candidates, key=lambda k: cells[k]["value"])
            cells["best_known"] = {**cells[best], "label": f"best-known robust accuracy (from {best})",
                                   "from": best}
        entry["sanity_flags"] += _sanity(frame, norm, eps)
        _evasion_flags(entry)
        out.append(_finish(entry))
    return out


def _sanity(frame, norm, eps) -> list[dict]:
    rows = frame[(frame["evaluator"] == "sanity") & (frame["value"] > 0)]
    rows = rows[(rows["norm"] == "none") | ((rows["norm"] == norm) & np.isclose(rows["eps"], eps))
                | (rows["metric"] == "unbounded_attack_fails")]
    reason = rows["reason"] if "reason" in rows else pd.Series([""] * len(rows), index=rows.index)
    return [{"check": str(m), "reason": "" if pd.isna(r) else str(r), "run_id": str(i)}
            for m, r, i in zip(rows["metric"], reason, rows["run_id"])]


def _evasion_flags(entry):
    cells = entry["cells"]
    if "robust" not in cells:
        _flag(entry, "evaluation missing", "major" if "certified" not in cells else "minor",
              "no empirical robust accuracy at this threat (only " + ", ".join(sorted(cells)) + ")")
    elif "autoattack" not in cells:
        _flag(entry, "evaluation missing", "minor", "no AutoAttack-class evaluation (APGD-CE, APGD-T, Square) at "
              "this threat: the robust accuracy is an upper bound from the standard suite only")
    if entry["sanity_flags"]:
        checks = sorted({f["check"] for f in entry["sanity_flags"]})
        _flag(entry, "gradient masking signs", "major", "sanity checks tripped: " + ", ".join(checks))
    best, robust = cells.get("best_known"), cells.get("robust")
    if best and robust and best.get("from") != "robust":
        gap = robust["value"] - best["value"]
        examples = gap * robust["n"]
        if examples >= 1:
            severity = "major" if gap > 0.02 else "minor"
            _flag(entry, "stronger attack beats the suite", severity,
                  f"{best['from']} finds {100 * gap:.2f} points ({examples:.0f} examples) lower robust accuracy than "
                  "the standard suite's worst case")
    certified = cells.get("certified")
    if certified and robust and certified["value"] > robust["value"] + 1e-12:
        _flag(entry, "certified above robust", "major", "certified accuracy exceeds the attacked accuracy: a "
              "certifier or an attack is wrong")


def _privacy_entries(frame: pd.DataFrame) -> list[dict]:
    pld = _select(frame, "accountant_pld", "epsilon")
    eps = float(pld["value"].mean()) if not pld.empty else math.inf
    entry = _base(frame, "privacy", f"dp eps={eps:.3g}" if math.isfinite(eps) else "dp eps=inf")
    entry["eps"] = _num(eps)
    cells = entry["cells"]
    spec = [("accuracy", "utility", "test_accuracy", "test accuracy"),
            ("epsilon", "accountant_pld", "epsilon", "epsilon (PLD accountant)"),
            ("epsilon_rdp", "accountant_rdp", "epsilon", "epsilon (RDP accountant)"),
            ("delta", "accountant_pld", "delta", "delta"),
            ("audit_lower_bound", "canary_audit", "epsilon_lower_bound", "one-run canary audit: epsilon lower bound"),
            ("mia_loss_auc", "loss_threshold", "auc", "loss-threshold membership inference AUC"),
            ("mia_lira_auc", "lira_online", "auc", "LiRA (online) AUC"),
            ("mia_lira_tpr_0.1", "lira_online", "tpr_at_0.1%_fpr", "LiRA (online) TPR at 0.1% FPR"),
            ("mia_loss_tpr_0.1", "loss_threshold", "tpr_at_0.1%_fpr", "loss-threshold TPR at 0.1% FPR"),
            ("pate_label_accuracy", "pate", "label_accuracy", "PATE: accuracy of the teachers' labels")]
    for key, evaluator, metric, label in spec:
        rows = _select(frame, evaluator, metric)
        if not rows.empty:
            cells[key] = make_cell(rows, label=label, share=metric.endswith(("accuracy", "fpr")))
    if "accuracy" in cells:
        cells["clean"] = {**cells["accuracy"], "label": "test accuracy"}
    violation = _select(frame, "canary_audit", "violation")
    if not violation.empty and (violation["value"] > 0).any():
        _flag(entry, "audit violation", "major", "the canary audit's lower bound exceeds the accountant's epsilon")
    if "audit_lower_bound" not in cells:
        _flag(entry, "evaluation missing", "minor", "no canary audit in this run")
    if "mia_lira_auc" not in cells:
        _flag(entry, "evaluation missing", "minor", "no LiRA membership inference (shadows=0)")
    return [_finish(entry)]


def _poisoning_entries(frame: pd.DataFrame) -> list[dict]:
    poisoned = frame[frame["evaluator"] == "poisoned"]
    attack = str(poisoned["attack"].dropna().iloc[0]) if "attack" in poisoned and poisoned["attack"].notna().any() \
        else "attack"
    ratio = float(poisoned["poison_ratio"].dropna().iloc[0]) if "poison_ratio" in poisoned and \
        poisoned["poison_ratio"].notna().any() else float("nan")
    entry = _base(frame, "poisoning", f"poisoning {attack} {100 * ratio:.3g}%")
    entry["eps"] = _num(ratio)
    cells = entry["cells"]
    for key, evaluator, metric, label in [
            ("clean", "poisoned", "clean_accuracy", "clean accuracy of the poisoned model"),
            ("asr", "poisoned", "attack_success_rate", "attack success rate (triggered test inputs)"),
            ("ra", "poisoned", "robust_accuracy", "accuracy on triggered test inputs"),
            ("targeted_success", "poisoned", "targeted_success", "targeted success (flipped targets)"),
            ("clean_training", "clean_training", "clean_accuracy", "clean accuracy without poisons")]:
        rows = _select(frame, evaluator, metric)
        if not rows.empty:
            cells[key] = make_cell(rows, label=label)
    for name in sorted(set(frame["evaluator"]) - {"poisoned", "clean_training"}):
        for metric, label in (("attack_success_rate", "ASR after filtering"), ("clean_accuracy", "CA after filtering"),
                              ("der", "defense effectiveness rating"), ("tpr", "poisons flagged (TPR)"),
                              ("fpr", "clean images flagged (FPR)")):
            rows = _select(frame, name, metric)
            if not rows.empty:
                cells[f"{name}:{metric}"] = make_cell(rows, label=f"{name}: {label}",
                                                      share=metric != "der")
    return [_finish(entry)]


def _theft_entries(frame: pd.DataFrame) -> list[dict]:
    out = []
    copies = frame[frame["evaluator"] == "copy"]
    keys = ["api_output", "api_defense", "query_set", "method"]
    keys = [k for k in keys if k in copies]
    groups = copies.groupby(keys, dropna=False) if keys and not copies.empty else []
    for values, rows in groups:
        values = values if isinstance(values, tuple) else (values,)
        setting = dict(zip(keys, values))
        threat = f"theft {setting.get('method', '')} {setting.get('api_output', '')}/{setting.get('api_defense', '')}"
        entry = _base(frame, "theft", " ".join(threat.split()))
        cells = entry["cells"]
        victim = _select(frame, "victim", "accuracy")
        if not victim.empty:
            cells["clean"] = make_cell(victim, label="victim test accuracy")
        budget = float(rows["budget"].max()) if "budget" in rows and rows["budget"].notna().any() else None
        top = rows if budget is None else rows[rows["budget"] == budget]
        entry["eps"] = _num(budget)
        for metric, label in (("accuracy", "copy test accuracy"), ("agreement_test", "copy agrees with the victim "
                              "(test)"), ("agreement_uniform", "agreement on uniform noise"),
                              ("total_variation", "total variation to the victim")):
            sel = top[top["metric"] == metric]
            if not sel.empty:
                cells[f"copy_{metric}"] = make_cell(sel, label=f"{label} at {budget:g} queries" if budget else label,
                                                    share=metric != "total_variation")
        out.append(_finish(entry))
    if not out:
        out = _generic_entries(frame)
    return out


def _blackbox_entries(frame: pd.DataFrame) -> list[dict]:
    """One entry per (attack, norm, eps) crafted on the substitute: the oracle's accuracy on what transferred after
    the last round, the substitute's accuracy then, the oracle's clean accuracy and the queries spent."""
    out = []
    transfer = frame[(frame["evaluator"] == "transfer") & (frame["metric"] == "oracle_accuracy")]
    if transfer.empty or "round" not in transfer:
        return _generic_entries(frame)
    last = transfer["round"].max()
    for (attack, norm, eps), rows in transfer[transfer["round"] == last].groupby(["attack", "norm", "eps"]):
        entry = _base(frame, "blackbox", f"blackbox {attack} {threat_label(norm, eps)}")
        entry["eps"], entry["norm"] = float(eps), str(norm)
        cells = entry["cells"]
        oracle = _select(frame, "oracle", "accuracy")
        if not oracle.empty:
            cells["clean"] = make_cell(oracle, label="oracle clean accuracy")
        cells["transferred"] = make_cell(rows, label=f"oracle accuracy on {attack} examples crafted on the "
                                                     f"substitute (round {last:g})")
        error = _select(frame[frame["round"] == last], "transfer", "error_rate", norm, eps)
        error = error[error["attack"] == attack] if "attack" in error else error
        if not error.empty:
            cells["error_rate"] = make_cell(error, label="transfer error rate on the oracle's correct examples")
        substitute = frame[(frame["evaluator"] == "substitute") & (frame["round"] == last)]
        if not substitute.empty:
            cells["substitute"] = make_cell(substitute, label=f"substitute accuracy (round {last:g})")
        queries = _select(frame, "api", "queries")
        if not queries.empty:
            cells["queries"] = make_cell(queries, label="oracle queries spent", share=False)
        out.append(_finish(entry))
    return out


def _generic_entries(frame: pd.DataFrame) -> list[dict]:
    family = str(frame["scenario"].iloc[0])
    entry = _base(frame, family, family)
    keys = [c for c in _DISTINGUISH if c in frame.columns]
    rows = frame[~frame["evaluator"].isin(["train", "sanity"])]
    for values, group in rows.groupby(["evaluator", "metric", "norm", "eps"] + keys, dropna=False, sort=True):
        evaluator, metric, norm, eps, *rest = values
        parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(keys, rest)
                 if not (isinstance(v, float) and math.isnan(v)) and v is not None]
        threat = f" @{norm} {float(eps):g}" if norm != "none" else ""
        name = f"{evaluator}:{metric}{threat}" + (f" [{', '.join(parts)}]" if parts else "")
        entry["cells"][name] = make_cell(group, label=name)
    clean = _select(frame, "clean", "accuracy")
    if clean.empty:
        clean = _select(frame, "oracle", "accuracy")
    if not clean.empty and clean.groupby("seed").size().max() == 1:  # one model's clean accuracy, not several
        entry["cells"]["clean"] = make_cell(clean, label="clean accuracy")
    return [_finish(entry)]


FAMILIES = {"evasion": None, "privacy": _privacy_entries, "poisoning": _poisoning_entries, "theft": _theft_entries,
            "blackbox": _blackbox_entries}


def _parent_experiment(frame: pd.DataFrame, by_dir: dict[str, str]) -> str | None:
    """For a run that evaluated loaded parameters, the experiment that trained them (when its run is read too)."""
    load = _config(frame).get("load_params")
    if not load:
        return None
    parent = str(Path(load).resolve().parent)
    return by_dir.get(parent)


def build_entries(records: pd.DataFrame) -> list[dict]:
    """All entries of the given records (`read_runs`), sorted by id."""
    if records.empty:
        raise BenchError("no records to build entries from")
    for column, default in (("run_dir", ""), ("preset", None), ("hardware", "not recorded"), ("command", None)):
        if column not in records:
            records = records.assign(**{column: default})
    records = latest_runs(records)
    parts = [with_experiment(group) for _, group in records.groupby("scenario", sort=True)]
    records = pd.concat(parts, ignore_index=True)
    _RUN_SECONDS.clear()
    _RUN_SECONDS.update(run_seconds(records))
    by_dir = {d: e for d, e in zip(records["run_dir"], records["experiment"]) if d}
    evaluations: dict[str, list[pd.DataFrame]] = {}
    trained = []
    for experiment, frame in records[records["scenario"] == "evasion"].groupby("experiment", sort=True):
        parent = _parent_experiment(frame, by_dir)
        if parent is not None and parent != experiment:
            evaluations.setdefault(parent, []).append(frame)
        else:
            trained.append(frame)
    entries = []
    for frame in trained:
        entries += _evasion_entries(frame, evaluations)
    for (scenario, _), frame in records[records["scenario"] != "evasion"].groupby(["scenario", "experiment"],
                                                                                  sort=True):
        entries += (FAMILIES.get(scenario) or _generic_entries)(frame)
    ids = [e["id"] for e in entries]
    if len(set(ids)) != len(ids):
        raise BenchError(f"two entries share an id: {sorted({i for i in ids if ids.count(i) > 1})}")
    return sorted(entries, key=lambda e: e["id"])


# --- files ----------------------------------------------------------------------------------------------------

def entry_path(entry: dict) -> Path:
    """entries/<dataset>/<threat>/<id>.json, as RobustBench's model_info/<dataset>/<threat>/<name>.json."""
    return Path("entries") / slug(entry["dataset"]) / slug(entry["threat"]) / f"{entry['id']}.json"


def _json_safe(value):
    """NaN and inf (which JSON cannot hold) as strings, numpy scalars as Python numbers, everywhere in a value."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def dumps(entry: dict) -> str:
    return json.dumps(_json_safe(entry), indent=1, sort_keys=True, allow_nan=False) + "\n"


def load_entries(folder) -> list[dict]:
    """Every entry JSON under `folder`/entries; a clear error for a damaged or foreign file."""
    folder = Path(folder)
    root = folder / "entries"
    if not root.is_dir():
        raise BenchError(f"no entries under {folder} (expected {root}/<dataset>/<threat>/<id>.json); build them "
                         "with `python -m bench.leaderboard RUN_DIR... --out " + str(folder) + "`")
    entries = [load_entries_file(path) for path in sorted(root.rglob("*.json"))]
    if not entries:
        raise BenchError(f"{root} holds no entries; build them with `python -m bench.leaderboard RUN_DIR...`")
    return entries


def load_entries_file(path) -> dict:
    """One entry JSON; a BenchError naming the file and the fix when it is damaged or not an entry."""
    path = Path(path)
    try:
        entry = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise BenchError(f"{path} is not valid JSON ({err}); rebuild it with `python -m bench.leaderboard`") from None
    missing = [k for k in ("id", "name", "family", "dataset", "threat", "cells") if not isinstance(entry, dict)
               or k not in entry]
    if missing or entry.get("schema") != SCHEMA:
        raise BenchError(f"{path} is not a leaderboard entry of schema {SCHEMA} (missing {missing}); rebuild it "
                         "with `python -m bench.leaderboard`")
    return entry
