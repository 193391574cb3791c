"""Choose a preset's recipe on the validation split, never on the test split; write the trials to results/.

    python scripts/tune_preset.py wong2020_fgsm_rs_mnist_reduced      # the trials listed in TRIALS below
    python scripts/tune_preset.py wong2020_fgsm_rs_mnist_reduced --report-only

Every trial is `python -m bench +experiment=PRESET validation=N suite.split=validation <trial overrides>`: the
model trains on the training split minus N stratified validation images, the overfitting monitor reads the
validation split, and the attack suite scores the validation split. The test split is not touched; the chosen
recipe is then written into the preset by hand and run once on the test split (scripts/run_presets.py).
Writes results/tuning/PRESET.md (each trial's command, validation clean and robust accuracy with its 95% Wilson
interval, training time) from the runs' records.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.records import RECORDS_FILE, atomic_write_bytes, read_records  # noqa: E402

VALIDATION = 500
# name -> overrides. The FGSM-RS trials are the ones first tried on the test split (see the preset's history),
# now judged on validation, plus a longer eps warm-up. mnist5k with validation=500 trains on 3,500 images:
# 70 steps per epoch at batch 50, 35 at batch 100.
TRIALS = {
    "wong2020_fgsm_rs_mnist_reduced": {
        "20x100, no warm-up": ["train.epochs=20", "train.batch_size=100", "defense.warmup_steps=0"],
        "20x50, warm-up 5 ep": ["train.epochs=20", "defense.warmup_steps=350"],
        "20x50, warm-up 10 ep": ["train.epochs=20", "defense.warmup_steps=700"],
        "20x50, warm-up 5 ep, peak 2e-3": ["train.epochs=20", "defense.warmup_steps=350", "train.learning_rate=2e-3"],
        "40x50, warm-up 10 ep": ["train.epochs=40", "defense.warmup_steps=700"],
        "40x50, warm-up 20 ep": ["train.epochs=40", "defense.warmup_steps=1400"],
    },
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def command(preset: str, overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bench", f"+experiment={preset}", f"validation={VALIDATION}",
            "suite.split=validation", "suite.n_examples=null", "checkpoint.resume=false", "progress=false",
            *overrides, f"hydra.run.dir={run_dir}"]


def _value(records, evaluator, metric):
    rows = records[(records.evaluator == evaluator) & (records.metric == metric)]
    return None if rows.empty else rows.iloc[-1]


def _pct(row) -> str:
    if row is None:
        return ""
    interval = f" [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}]" if "ci_low" in row and row.ci_low == row.ci_low else ""
    return f"{100 * row.value:.2f}{interval}"


def report(preset: str, root: Path, out: Path) -> Path:
    lines = [f"# Tuning {preset} on the validation split", "",
             "Written by `python scripts/tune_preset.py " + preset + "` from the trials' records; do not edit by "
             "hand. Each trial trains on mnist5k's training split minus " + f"{VALIDATION:,}" + " stratified "
             "validation images and is scored on those validation images only (`suite.split=validation`); the test "
             "split is never read. Robust accuracy: the preset's attack suite at its epsilon, per-example worst "
             "case, with its 95% Wilson interval. Times are wall seconds on a shared 2-core CPU.", "",
             "| trial | validation clean % | validation robust % | early stop | train s | overrides |",
             "|---|---|---|---|---|---|"]
    for name, overrides in TRIALS[preset].items():
        path = root / slug(name) / RECORDS_FILE
        if not path.exists():
            lines.append(f"| {name} | (not run) | | | | `{' '.join(overrides)}` |")
            continue
        records = read_records(path)
        worst = records[(records.evaluator == "worst_case") & (records.metric == "robust_accuracy")]
        worst = None if worst.empty else worst.sort_values("eps").iloc[-1]
        stopped = _value(records, "train", "stopped_epoch")
        seconds = _value(records, "train", "seconds")
        lines.append(f"| {name} | {_pct(_value(records, 'clean', 'accuracy'))} | {_pct(worst)} | "
                     f"{'' if stopped is None else 'epoch ' + str(int(stopped.value))} | "
                     f"{'' if seconds is None else f'{seconds.value:.0f}'} | `{' '.join(overrides)}` |")
    lines += ["", "Command of each trial: `python -m bench +experiment=" + preset + f" validation={VALIDATION} "
              "suite.split=validation suite.n_examples=null checkpoint.resume=false <overrides>`", ""]
    return atomic_write_bytes(out, "\n".join(lines).encode())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=sorted(TRIALS))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--only", action="append", default=[], help="run only these trials (by name)")
    args = parser.parse_args(argv)
    root = ROOT / "results" / "runs" / "tuning" / args.preset
    if not args.report_only:
        for name, overrides in TRIALS[args.preset].items():
            if args.only and name not in args.only:
                continue
            cmd = command(args.preset, overrides, root / slug(name))
            print("$", " ".join(cmd[1:]), flush=True)
            started = time.perf_counter()
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                print(f"  {name}: FAILED", flush=True)
                continue
            print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    print(report(args.preset, root, ROOT / "results" / "tuning" / f"{args.preset}.md"))


if __name__ == "__main__":
    main()
