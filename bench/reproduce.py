"""Reproduce a paper preset and say whether it reproduced: `python -m bench.reproduce PRESET [--full]`.

    python -m bench.reproduce madry_mnist_reduced              # run the reduced preset, then the verdicts
    python -m bench.reproduce madry_mnist_reduced --full       # run its full-scale preset (reduced_of) instead
    python -m bench.reproduce madry_mnist_reduced --reuse DIR  # no run: the verdicts of the run in DIR
    python -m bench.reproduce madry_mnist_reduced --autoattack # then also suite=autoattack on the trained params
    python -m bench.reproduce standard_mnist_reduced train.epochs=1   # extra overrides (then not the preset)

The run goes through the normal entry point (`python -m bench +experiment=PRESET`) into
results/runs/reproduce/<preset> (ignored by git), with the machine it ran on in machine.json beside its records.
Its leaderboard entries are built from those records (bench/publish/entries.py) and every number is compared
with two targets:

- the paper's reported number (the full-scale preset's `paper.reported`, or the preset's own `paper` block):
  for a reduced run this is a full-scale number on another dataset size and model, shown for the record;
- the reference: the preset's own earlier measured number, the committed leaderboard entry of the same preset,
  family and threat (results/leaderboard), else the preset's row of results/presets.md (both machine-written
  from earlier runs' records).

Verdict per number, with d = measured - target in percentage points:
- reproduced:      |d| <= the 95% sampling noise of the difference, 1.96 * sqrt(m(1-m)/n_m + t(1-t)/n_t) for an
                   accuracy (Agresti-Coull: each share with two successes and two failures added, over n + 4; the
                   target's term only when its n is known), or equal to 1e-6 (relative) for numbers that are not
                   accuracies (epsilon);
- within tolerance: |d| <= the tolerance written in the preset (`paper.tolerance`, percentage points);
- not reproduced:  otherwise (also when the preset states no tolerance and the difference exceeds the noise).
Writes results/leaderboard/reproduce/<preset>.md and .json and the summary README.md there over every preset
reproduced so far. Exit status 0 when the run and the comparison worked (whatever the verdicts), 1 with
--strict when a number is not reproduced against its reference, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from bench.errors import BenchError
from bench.publish import entries as entries_mod
from bench.records import RECORDS_FILE, atomic_write_bytes, machine

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "conf" / "experiment"
Z95 = 1.959963984540054
# the numbers compared, per family (cell names of bench/publish/entries.py)
COMPARED = {"evasion": ("clean", "robust", "autoattack", "best_known", "certified"),
            "privacy": ("accuracy", "epsilon", "audit_lower_bound", "mia_loss_auc", "mia_lira_auc"),
            "poisoning": ("clean", "asr", "ra", "targeted_success", "clean_training"),
            "theft": ("clean", "copy_accuracy", "copy_agreement_test"),
            "blackbox": ("clean", "substitute", "transferred")}
PRESETS_TABLE_COLUMNS = {"clean %": "clean", "robust %": "robust", "AutoAttack %": "autoattack"}


def presets() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def resolve(name: str, full: bool) -> str:
    """The preset to run: `name`, or with --full its full-scale preset (`reduced_of`)."""
    if not (EXPERIMENTS / f"{name}.yaml").is_file():
        reduced = [p for p in presets() if p.endswith("_reduced")]
        raise BenchError(f"no preset '{name}' in conf/experiment; choose one of {', '.join(reduced)}")
    if not full:
        return name
    data = OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / f"{name}.yaml")) or {}
    target = data.get("reduced_of")
    if target is None and not name.endswith("_reduced"):
        return name  # already a full-scale preset
    if not target or not (EXPERIMENTS / f"{target}.yaml").is_file():
        raise BenchError(f"{name} names no full-scale preset (`reduced_of`); run it without --full")
    return str(target)


def run_autoattack(name: str, run_dir: Path, overrides: list[str]) -> None:
    """Evaluate the run's saved parameters with suite=autoattack at the preset's largest epsilon (no training), into
    RUN_DIR/autoattack: its numbers join the same entries (bench/publish/entries.py follows load_params)."""
    params = run_dir / "params.msgpack"
    if not params.is_file():
        raise BenchError(f"--autoattack: {run_dir} has no params.msgpack (only evasion runs save the parameters the "
                         "AutoAttack suite evaluates)")
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    eps = max(float(e) for e in saved.suite.eps)
    run(name, run_dir / "autoattack", [*overrides, f"load_params={params}", "suite=autoattack", f"suite.eps=[{eps}]",
                                       f"suite.norm={saved.suite.norm}"])


def run(name: str, run_dir: Path, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "bench", f"+experiment={name}", "progress=false", f"hydra.run.dir={run_dir}",
               *([] if any(o.startswith("checkpoint.resume=") for o in overrides) else ["checkpoint.resume=false"]),
               *overrides]
    print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0:
        raise BenchError(f"the run of {name} failed with exit status {done.returncode} (its output is above); fix "
                         "that first, or pass --reuse RUN_DIR to judge a finished run")
    print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    atomic_write_bytes(run_dir / entries_mod.MACHINE_FILE, json.dumps(machine(), indent=1).encode())


# --- targets --------------------------------------------------------------------------------------------------

def _pct(cell: dict):
    value = cell.get("value")
    if not isinstance(value, float):
        return None
    return 100 * value if cell.get("share") else value


def reference_from_entries(entry: dict, leaderboard: Path, exclude_runs: set[str]) -> dict | None:
    """The committed entry of the same preset, family, dataset and threat made by other runs."""
    if not (leaderboard / "entries").is_dir():
        return None
    for other in entries_mod.load_entries(leaderboard):
        if (other.get("preset"), other["family"], other["dataset"], other["threat"]) != \
                (entry.get("preset"), entry["family"], entry["dataset"], entry["threat"]):
            continue
        runs = {r for c in other["cells"].values() for r in c["provenance"]["run_ids"]}
        if runs & exclude_runs:
            continue  # made from this very run: not an earlier measurement
        return {"source": f"results/leaderboard entry {other['id']} (runs {', '.join(sorted(runs))})",
                "cells": {k: {"value": _pct(c), "n": c["n"], "share": c["share"]} for k, c in other["cells"].items()
                          if _pct(c) is not None}}
    return None


def reference_from_presets_table(preset: str, threat: str, table: Path) -> dict | None:
    """The preset's row of results/presets.md (written by scripts/run_presets.py from earlier runs' records)."""
    if not table.is_file():
        return None
    lines = table.read_text().splitlines()

    def block(title):
        if title not in lines:
            return []
        start = lines.index(title) + 2
        rows = []
        for line in lines[start:]:
            if not line.startswith("|"):
                break
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        return [dict(zip(rows[0], r)) for r in rows[2:]] if len(rows) > 2 else []

    measured = {r.get("preset"): r for r in block("## Measured (reduced scale)")}
    origin = {r.get("preset"): r for r in block("## Provenance")}
    row = measured.get(preset)
    if row is None or row.get("threat") != threat:
        return None
    n = int(row["n test"]) if row.get("n test", "").isdigit() else None
    cells = {}
    for column, cell in PRESETS_TABLE_COLUMNS.items():
        try:
            cells[cell] = {"value": float(row[column]), "n": n, "share": True}
        except (KeyError, ValueError):
            continue
    run_id = origin.get(preset, {}).get("run_id", "unknown run")
    return {"source": f"results/presets.md (run {run_id})", "cells": cells}


# --- verdicts -------------------------------------------------------------------------------------------------

def verdict(measured: float, n_measured: int | None, target: float, n_target: int | None, *, share: bool,
            tolerance: float | None) -> tuple[str, float, float | None]:
    """(verdict, difference, noise) for one number; values in % for shares (the module docstring's rule)."""
    difference = measured - target
    noise = None
    if share:
        variance = 0.0
        for value, n in ((measured, n_measured), (target, n_target)):
            if n:  # Agresti-Coull: two successes and two failures added, so 0% or 100% still has a spread
                p = (value / 100 * n + 2) / (n + 4)
                variance += p * (1 - p) / (n + 4)
        noise = 100 * Z95 * math.sqrt(variance)
        if abs(difference) <= noise + 1e-9:
            return "reproduced", difference, noise
    elif abs(difference) <= 1e-6 * max(abs(measured), abs(target), 1e-12):
        return "reproduced", difference, 0.0
    if tolerance is not None and abs(difference) <= float(tolerance) + 1e-9:
        return "within tolerance", difference, noise
    return "not reproduced", difference, noise


def compare(entries: list[dict], *, leaderboard: Path, presets_table: Path, preset: str) -> list[dict]:
    """One row per compared number: measured, paper, reference, tolerance, the two verdicts."""
    rows = []
    this_runs = {r for e in entries for c in e["cells"].values() for r in c["provenance"]["run_ids"]}
    for entry in entries:
        tolerance = (entry.get("paper") or {}).get("tolerance")
        reference = reference_from_entries(entry, leaderboard, this_runs) or \
            reference_from_presets_table(preset, entry["threat"], presets_table)
        reported = [r for r in entry.get("reported", []) if r.get("cell") and r.get("measured") is not None]
        for cell_name in COMPARED.get(entry["family"], ("clean",)):
            cell = entry["cells"].get(cell_name)
            if cell is None or _pct(cell) is None:
                continue
            measured = _pct(cell)
            base = {"entry": entry["id"], "family": entry["family"], "threat": entry["threat"], "number": cell_name,
                    "measured": measured, "n": cell["n"], "share": cell["share"], "tolerance": tolerance,
                    "run_ids": cell["provenance"]["run_ids"]}
            ref = (reference or {}).get("cells", {}).get(cell_name)
            if ref is not None:
                v, d, noise = verdict(measured, cell["n"], ref["value"], ref.get("n"), share=cell["share"],
                                      tolerance=tolerance)
                base.update(reference=ref["value"], reference_source=reference["source"], reference_verdict=v,
                            reference_difference=d, noise=noise)
            papers = [r for r in reported if r["cell"] == cell_name]
            for paper in papers or [None]:  # one row per reported number the cell is held to
                row = dict(base)
                if paper is not None:
                    value = float(paper.get("accuracy", paper.get("value")))
                    row.update(paper=value, paper_key=paper["key"], paper_source=paper.get("source", ""))
                    v, d, _ = verdict(measured, cell["n"], value, None, share=cell["share"], tolerance=tolerance)
                    row.update(paper_verdict=v, paper_difference=d)
                rows.append(row)
    return rows


def _f(value, digits=2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def report_markdown(preset: str, ran: str, run_dir: Path, rows: list[dict], overrides: list[str],
                    hardware: str) -> str:
    lines = [f"# Reproduce {preset}" + (f" (ran {ran})" if ran != preset else ""), "",
             f"`python -m bench.reproduce {preset}{' --full' if ran != preset else ''}"
             f"{' ' + ' '.join(overrides) if overrides else ''}` on {hardware}; run folder `{run_dir.name}` (ignored "
             "by git), its records made every measured number. Written by bench/reproduce.py; do not edit by hand.",
             ""]
    if overrides:
        lines += [f"**Overridden** ({' '.join(overrides)}): this is not the preset as written, so its verdicts do "
                  "not speak for the preset.", ""]
    lines += ["Verdict rule: d = measured - target (percentage points); *reproduced* when |d| is within the 95% "
              "sampling noise of the difference (accuracies; equal for other numbers), *within tolerance* when |d| "
              "<= the preset's `paper.tolerance`, else *not reproduced*. Paper numbers are full-scale (MNIST, the "
              "papers' models); a reduced run is held to them only for the record: its own target is the "
              "reference, the preset's earlier measured number.", "",
              "| threat | number | measured | n | reference | d | noise | verdict (reference) | paper | paper number | d "
              "| verdict (paper) | tolerance |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threat']} | {r['number']} | {_f(r['measured'])} | {r['n']} | {_f(r.get('reference'))} | "
                     f"{_f(r.get('reference_difference'))} | {_f(r.get('noise'))} | {r.get('reference_verdict', '')} "
                     f"| {r.get('paper_key', '')} | {_f(r.get('paper'))} | {_f(r.get('paper_difference'))} | "
                     f"{r.get('paper_verdict', '')} | "
                     f"{'' if r['tolerance'] is None else r['tolerance']} |")
    sources = sorted({r["reference_source"] for r in rows if r.get("reference_source")})
    papers = sorted({f"{r['paper_key']}: {r['paper_source']}" for r in rows if r.get("paper_key")})
    lines += ["", "References: " + ("; ".join(sources) if sources else "none (no earlier measurement of this "
                                                                          "preset)"),
              "", "Paper numbers: " + ("; ".join(papers) if papers else "none stated in the preset"), ""]
    return "\n".join(lines)


def summary(out: Path) -> Path:
    """README.md in `out`: the verdicts of every preset reproduced so far (from their JSON files there)."""
    lines = ["# Reproduce: verdicts per preset", "",
             "Written by `python -m bench.reproduce` from the *.json files beside it; one row per compared number.", "",
             "| preset | ran | threat | number | measured | reference | verdict (reference) | paper number | paper | "
             "verdict (paper) | overridden |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        for r in data["rows"]:
            lines.append(f"| {data['preset']} | {data['ran']} | {r['threat']} | {r['number']} | {_f(r['measured'])} | "
                         f"{_f(r.get('reference'))} | {r.get('reference_verdict', '')} | {r.get('paper_key', '')} | "
                         f"{_f(r.get('paper'))} | "
                         f"{r.get('paper_verdict', '')} | {'yes' if data['overrides'] else ''} |")
    return atomic_write_bytes(out / "README.md", ("\n".join(lines) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="a preset of conf/experiment (e.g. madry_mnist_reduced)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for the run (the verdicts then say so)")
    parser.add_argument("--full", action="store_true", help="run the full-scale preset the reduced one names")
    parser.add_argument("--reuse", metavar="RUN_DIR", help="judge the finished run in RUN_DIR instead of running")
    parser.add_argument("--runs", default=str(ROOT / "results" / "runs" / "reproduce"))
    parser.add_argument("--out", default=str(ROOT / "results" / "leaderboard" / "reproduce"))
    parser.add_argument("--leaderboard", default=str(ROOT / "results" / "leaderboard"),
                        help="committed entries to take references from (default: %(default)s)")
    parser.add_argument("--presets-table", default=str(ROOT / "results" / "presets.md"))
    parser.add_argument("--strict", action="store_true", help="exit 1 when a number is not reproduced")
    parser.add_argument("--autoattack", action="store_true",
                        help="also evaluate the trained parameters with suite=autoattack (evasion presets)")
    args = parser.parse_args(argv)
    try:
        ran = resolve(args.preset, args.full)
        if args.reuse:
            run_dir = Path(args.reuse)
            if not (run_dir / RECORDS_FILE).is_file():
                raise BenchError(f"--reuse {run_dir}: no {RECORDS_FILE} there; pass the folder of a finished run")
        else:
            run_dir = Path(args.runs) / ran
            shutil.rmtree(run_dir / "autoattack", ignore_errors=True)  # it evaluated the parameters being replaced
            run(ran, run_dir, args.overrides)
        if args.autoattack and not (run_dir / "autoattack" / RECORDS_FILE).is_file():
            run_autoattack(ran, run_dir, args.overrides)
        made_by = entries_mod._preset(run_dir)
        if made_by is not None and made_by.split(" + ")[0] != ran:
            raise BenchError(f"the run in {run_dir} is of preset {made_by.split(' + ')[0]}, not {ran}; pass that "
                             "preset's name, or the folder of a run of this one")
        if made_by is None and args.reuse:
            print(f"warning: {run_dir} does not say which preset made it (no .hydra/hydra.yaml); judged as {ran}",
                  file=sys.stderr)
        entries = entries_mod.build_entries(entries_mod.read_runs(run_dir))
        for e in entries:
            e["preset"] = e.get("preset") or ran
        rows = compare(entries, leaderboard=Path(args.leaderboard), presets_table=Path(args.presets_table),
                       preset=ran)
        if not rows:
            raise BenchError(f"the run in {run_dir} has no number this command compares (families "
                             f"{sorted(COMPARED)}); see its records with `python -m bench.report {run_dir}`")
        hardware = entries_mod._hardware(run_dir)
        out = Path(args.out)
        text = report_markdown(args.preset, ran, run_dir, rows, args.overrides, hardware)
        atomic_write_bytes(out / f"{ran}.md", text.encode())
        atomic_write_bytes(out / f"{ran}.json", json.dumps(
            {"preset": args.preset, "ran": ran, "run_dir": run_dir.name, "overrides": args.overrides,
             "hardware": hardware, "rows": rows}, indent=1, sort_keys=True, default=str).encode())
        summary(out)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {out / (ran + '.md')}, {out / (ran + '.json')}, {out / 'README.md'}")
    failed = [r for r in rows if r.get("reference_verdict") == "not reproduced"]
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
