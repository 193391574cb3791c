"""Run every reduced paper preset and write measured numbers next to the papers' into results/presets.md.

    python scripts/run_presets.py                 # run all conf/experiment/*_reduced.yaml, then write the table
    python scripts/run_presets.py --reuse         # keep runs whose records match the preset file, run the rest
    python scripts/run_presets.py --only trades_mnist_reduced --only madry_mnist_reduced
    python scripts/run_presets.py --reuse --autoattack  # also evaluate each trained model with suite=autoattack
    python scripts/run_presets.py --report-only         # rewrite results/presets.md from the existing runs

Each preset runs as `python -m bench +experiment=NAME` into results/runs/presets/NAME (ignored by git); with
--autoattack its saved parameters are then evaluated (no training) with `suite=autoattack` at the preset's
epsilon into results/runs/presets/NAME/autoattack.
Every measured number comes from that run's records; every reported number comes from the `paper.reported`
block of the full-scale preset named by the reduced preset's `reduced_of` field. Nothing is typed here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "conf" / "experiment"
sys.path.insert(0, str(ROOT))

from bench.records import RECORDS_FILE, atomic_write_bytes, read_records  # noqa: E402


def _scenario(name: str) -> str:
    """The scenario a preset runs (composed, so presets built on other presets count as theirs)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return str(compose(config_name="config", overrides=[f"+experiment={name}"]).scenario.name)


def reduced_presets() -> list[str]:
    """The reduced presets of the evasion scenario (this table's columns are robust and certified accuracy; the
    other scenarios' presets are reported by their own tables: `python -m bench.report RUN_DIR`)."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*_reduced.yaml") if _scenario(p.stem) == "evasion")


def _leaves(node, prefix=""):
    """(dotted key, value) for every leaf of a plain dict; lists are leaves."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def stale_reason(name: str, run_dir: Path) -> str:
    """Why an existing run no longer matches its preset file ("" when it does), so --reuse never keeps a stale run.

    Compares the preset's config-group choices with the run's saved Hydra choices and every value the preset
    sets with the run's saved config.
    """
    preset = OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / f"{name}.yaml"))
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    choices = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
    for entry in preset.pop("defaults", []):
        for key, value in (entry.items() if isinstance(entry, dict) else ()):
            group = key.split("/")[-1]
            if group in choices and choices[group] != value:
                return f"{group}={choices[group]} in the run, {value} in the preset"
    for key, value in _leaves(preset):
        have = OmegaConf.select(saved, key, default="<missing>")
        have = OmegaConf.to_container(have) if OmegaConf.is_config(have) else have
        if have != value:
            return f"{key}={have} in the run, {value} in the preset"
    return ""


FRESH = "checkpoint.resume=false"  # a preset run starts over, so its recorded training time is a whole run's


def run_preset(name: str, run_dir: Path, extra: list[str]) -> None:
    """One preset through the normal entry point, in a subprocess (one Hydra run, fresh JAX state).

    It never resumes from a training checkpoint left by an earlier run of the same config (bench/checkpoint.py
    keys them by config hash, not by run directory): pass `checkpoint.resume=true` as an extra override to
    finish a killed preset run instead, at the price of a training time that covers only the resumed part.
    """
    command = [sys.executable, "-m", "bench", f"+experiment={name}", "progress=false", f"hydra.run.dir={run_dir}",
               *([] if any(o.startswith("checkpoint.resume=") for o in extra) else [FRESH]), *extra]
    print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed with exit status {done.returncode}")
    print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)


def run_autoattack(name: str, run_dir: Path, extra: list[str]) -> None:
    """Evaluate a finished preset run's parameters with the AutoAttack suite at the preset's largest epsilon."""
    eps = max(float(e) for e in OmegaConf.load(run_dir / ".hydra" / "config.yaml").suite.eps)
    run_preset(name, run_dir / "autoattack", [f"load_params={run_dir / 'params.msgpack'}", "suite=autoattack",
                                              f"suite.eps=[{eps}]", *extra])


def _value(records, **match) -> float | None:
    rows = records
    for column, wanted in match.items():
        rows = rows[rows[column] == wanted]
    return None if rows.empty else float(rows["value"].iloc[-1])


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def measured_row(name: str, run_dir: Path) -> dict:
    """The numbers of one reduced run, from its records and its saved config only."""
    records = read_records(run_dir / RECORDS_FILE)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    suite = config.suite
    eps = max(float(e) for e in suite.eps)
    attacks = ", ".join(
        f"{k}-{a.get('steps', '')}" + (f"x{a.restarts}" if a.get("restarts", 1) != 1 else "")
        for k, a in suite.attacks.items())
    stopped = _value(records, evaluator="train", metric="stopped_epoch")
    overrides = [o for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
                 if not o.startswith("progress=") and o != FRESH]
    autoattack, flags = None, []
    if (run_dir / "autoattack" / RECORDS_FILE).exists():
        aa_records = read_records(run_dir / "autoattack" / RECORDS_FILE)
        autoattack = _value(aa_records, evaluator="worst_case", metric="robust_accuracy", eps=eps)
        raised = aa_records[(aa_records.evaluator == "sanity") & (aa_records.value > 0)]
        flags = sorted(set(raised.metric))
    flags += sorted(set(records[(records.evaluator == "sanity") & (records.value > 0)].metric) - set(flags))
    return {
        "preset": name,
        "defense": str(records["defense"].iloc[0]),
        "model": str(records["model"].iloc[0]),
        "clean %": _pct(_value(records, evaluator="clean", metric="accuracy")),
        "threat": f"{suite.norm} {eps:g}",
        "attacks": attacks,
        "robust %": _pct(_value(records, evaluator="worst_case", metric="robust_accuracy", eps=eps)),
        "AutoAttack %": _pct(autoattack),
        "sanity flags": ", ".join(flags),
        "train s": f"{_value(records, evaluator='train', metric='seconds'):.0f}",
        "epochs": f"{int(stopped)} of {config.train.epochs} (early stop)" if stopped else f"{config.train.epochs}",
        "n test": str(int(records[(records.evaluator == "clean") & (records.metric == "accuracy")]["n"].iloc[-1])),
        "run_id": str(records["run_id"].iloc[0]),
        "git_rev": str(records["git_rev"].iloc[0]),
        "reduced_of": str(config.get("reduced_of") or ""),
        "command": "`python -m bench " + " ".join(overrides) + "`",
    }


def _parse_table(lines: list[str]) -> list[dict]:
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")))) for line in lines[2:]]


def carried_rows(out: Path, measured: set[str]) -> list[dict]:
    """Rows of the existing table for presets not run on this machine (their runs live elsewhere), with the
    run_id and git_rev that made them, so a partial rerun never drops the others. A row is carried only when
    its provenance is in the file, and only for a preset that still exists."""
    if not out.exists():
        return []
    text = out.read_text().splitlines()

    def block(title):
        start = text.index(title) + 2
        end = next((i for i in range(start, len(text)) if not text[i].startswith("|")), len(text))
        return _parse_table(text[start:end])

    try:
        measured_rows, provenance = block("## Measured (reduced scale)"), block("## Provenance")
    except (ValueError, IndexError):
        return []
    origin = {r["preset"]: r for r in provenance}
    carried = []
    for row in measured_rows:
        name = row.get("preset")
        if name in measured or name not in origin or name not in reduced_presets():
            continue
        full = OmegaConf.load(EXPERIMENTS / f"{name}.yaml").get("reduced_of") or ""
        carried.append({**row, "run_id": origin[name]["run_id"], "git_rev": origin[name]["git_rev"],
                        "command": origin[name]["command"], "reduced_of": str(full)})
    return carried


def reported_rows(full_preset: str) -> list[dict]:
    """The reported numbers (with sources) of a full-scale preset's `paper` block."""
    path = EXPERIMENTS / f"{full_preset}.yaml"
    if not full_preset or not path.exists():
        return []
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):  # composed: presets that build
        paper = compose(config_name="config", overrides=[f"+experiment={full_preset}"]).get("paper")  # on others
    if paper is None or "title" not in paper:
        return []
    own = (OmegaConf.load(path).get("paper") or {}).get("reported")  # its own numbers, not those of the preset it
    reported = own if own is not None else paper.get("reported") or {}  # builds on (merged by composition)
    return [{"preset": full_preset, "paper": str(paper.title), "metric": metric, "reported %": f"{entry.value:.2f}",
             "source": str(entry.source)} for metric, entry in reported.items()]


def _table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(rows: list[dict], out: Path) -> Path:
    # Presets differ in threat (e.g. L-inf 0.3 for adversarial training, 0.1 for certified training): each row
    # names its own threat and attack suite, and its robust and AutoAttack accuracies are at that threat.
    measured_columns = ["preset", "defense", "model", "clean %", "threat", "attacks", "robust %", "AutoAttack %",
                        "sanity flags", "train s", "epochs", "n test"]
    reported = [r for full in dict.fromkeys(row["reduced_of"] for row in rows) for r in reported_rows(full)]
    text = [
        "# Paper presets: reduced-scale runs next to the papers' numbers",
        "",
        "Written by `python scripts/run_presets.py` (`make presets`) from the runs' records; do not edit by hand.",
        "Reduced presets train on mnist5k (4,000 images; see each `conf/experiment/*_reduced.yaml` for how it",
        "departs from the paper) and are evaluated on its 1,000 held-out test images. Robust accuracy is the",
        "per-example worst case over the row's `attacks` at the row's `threat` (the preset's largest epsilon);",
        "the AutoAttack column (empty where not run: `--autoattack`) is `suite=autoattack` (APGD-CE, APGD-T,",
        "Square) at the same threat on the same trained parameters and test images.",
        "`sanity flags` lists the gradient-masking checks of bench/evaluate.py that fired in either evaluation.",
        "`train s` is wall time from start to the end of training",
        "(data loading and compilation included) on the machine that ran it, which may have been shared: compare",
        "times only between runs made together. Reported numbers are for full",
        "MNIST with the papers' own models: they are the target of the full-scale presets, not of these runs.",
        "Rows of presets not rerun in the latest invocation are carried over from the previous version of this",
        "file with the run_id and git_rev of the run that made them (Provenance below).",
        "",
        "## Measured (reduced scale)",
        "",
        _table(rows, measured_columns),
        "",
        "## Reported by the papers (full scale, MNIST test set)",
        "",
        _table(reported, ["preset", "paper", "metric", "reported %", "source"]) if reported else "(none)",
        "",
        "## Provenance",
        "",
        _table(rows, ["preset", "command", "run_id", "git_rev"]),
        "",
    ]
    return atomic_write_bytes(out, "\n".join(text).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=None, help="run only this preset (repeatable)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep runs that already have records and still match their preset file")
    parser.add_argument("--autoattack", action="store_true",
                        help="also evaluate each trained model with suite=autoattack (reused with --reuse)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; write the table from existing runs")
    parser.add_argument("--runs", default=str(ROOT / "results" / "runs" / "presets"))
    parser.add_argument("--out", default=str(ROOT / "results" / "presets.md"))
    parser.add_argument("overrides", nargs="*", help="extra overrides passed to every run, e.g. seed=1")
    args = parser.parse_args(argv)
    names = args.only or reduced_presets()
    unknown = sorted(set(names) - set(reduced_presets()))
    if unknown:
        raise SystemExit(f"unknown reduced presets {unknown}; choose from {reduced_presets()}")
    runs = Path(args.runs)
    for name in [] if args.report_only else names:
        run_dir = runs / name
        if args.reuse and (run_dir / RECORDS_FILE).exists():
            reason = stale_reason(name, run_dir)
            if not reason:
                print(f"  {name}: reusing {run_dir}", flush=True)
                continue
            print(f"  {name}: rerunning, the preset changed since the run ({reason})", flush=True)
        shutil.rmtree(run_dir / "autoattack", ignore_errors=True)  # it evaluated the parameters being replaced
        run_preset(name, run_dir, args.overrides)
    for name in names if args.autoattack and not args.report_only else []:
        run_dir = runs / name
        if args.reuse and (run_dir / "autoattack" / RECORDS_FILE).exists():
            print(f"  {name}: reusing {run_dir / 'autoattack'}", flush=True)
            continue
        run_autoattack(name, run_dir, args.overrides)
    rows = [measured_row(name, runs / name) for name in reduced_presets() if (runs / name / RECORDS_FILE).exists()]
    rows += carried_rows(Path(args.out), {r["preset"] for r in rows})
    path = write_report(sorted(rows, key=lambda r: r["preset"]), Path(args.out))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
