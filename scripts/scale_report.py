"""Measure what issue 6 asks for and write results/scale.md (nothing typed by hand):

1. one run on 1 and on 2 simulated CPU devices: wall time of each, largest record difference;
2. a sweep of 8 short jobs with the joblib launcher (2 workers) and one after another (basic launcher): wall ratio;
3. a run killed with SIGKILL at a random moment after its first checkpoint, then rerun: the step it resumed at,
   the checkpoint interval, and whether it ends with the parameters of an uninterrupted run;
4. every bad input we try, with the message and exit status it gives.

    python scripts/scale_report.py                # about 10 minutes on a 2-core laptop
    python scripts/scale_report.py --out /tmp/scale.md
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import records  # noqa: E402
from bench.checkpoint import CHECKPOINT_FILE  # noqa: E402

RUN = ["dataset=mnist5k", "model=cnn_small", "train.epochs=2", "suite=pgd", "suite.eps=[0.1,0.3]",
       "suite.n_examples=500", "suite.batch_size=250", "suite.sanity=false", "progress=false"]
SWEEP = ["dataset=digits", "model=mlp", "train.epochs=2", "suite=pgd", "suite.eps=[0.1]", "suite.n_examples=128",
         "suite.sanity=false", "progress=false", "seed=0,1,2,3,4,5,6,7"]
BAD = [
    ["train.epochs=ten"], ["seed=1.5"], ["train.epochs=[1"], ["train.nosuch=3"], ["progress=maybe"],
    ["dataset=nosuchset"], ["model=nosuchnet"], ["dataset=files"], ["suite.eps=[-0.1]"], ["suite.eps=[1.5]"],
    ["suite.norm=l3"], ["train.batch_size=0"], ["train.batch_size=100000"], ["train.learning_rate=-1"],
    ["train.optimizer=adagrad"], ["checkpoint.every_steps=-1"], ["load_params=/nonexistent/params.msgpack"],
]


def env(devices: int = 1) -> dict:
    out = {"JAX_PLATFORMS": "cpu", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT)}
    if devices > 1:
        out["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return out


def bench(args, devices=1, check=True):
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                         env=env(devices))
    if check and out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{out.stderr[-3000:]}")
    return out, time.perf_counter() - started


def values(run_dir: Path):
    frame = records.read_records(run_dir)
    frame = frame[~frame.metric.isin(["seconds", "resumed_from_step"])].sort_values(["evaluator", "eps", "metric"])
    return frame.value.to_numpy()


def params_equal(a: Path, b: Path) -> bool:
    return (a / "params.msgpack").read_bytes() == (b / "params.msgpack").read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "scale.md"))
    parser.add_argument("--seed", type=int, default=0, help="seeds the random kill moment")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    lines = ["# Scale and faults", "", "Written by `python scripts/scale_report.py` on "
             f"{os.cpu_count()} CPU cores (load average at start {os.getloadavg()[0]:.1f}); do not edit by hand.", ""]

    # 1. devices
    print("1/4 devices", flush=True)
    walls = {}
    for n in (1, 2):
        _, walls[n] = bench([*RUN, f"hydra.run.dir={tmp}/dev{n}", f"checkpoint.dir={tmp}/ck-dev{n}"], devices=n)
    diff = float(np.abs(values(tmp / "dev1") - values(tmp / "dev2")).max())
    lines += ["## 1 vs 2 devices (simulated on CPU)", "", f"`python -m bench {' '.join(RUN)}`, with "
              "`XLA_FLAGS=--xla_force_host_platform_device_count=2` for two devices.", "",
              "| devices | wall s |", "|---|---|", f"| 1 | {walls[1]:.1f} |", f"| 2 | {walls[2]:.1f} |", "",
              f"Largest difference between the two runs' record values (accuracies): {diff:.4g}; "
              f"parameters bit-identical: {params_equal(tmp / 'dev1', tmp / 'dev2')}. Two simulated devices share "
              "the same cores, so no speed-up is expected here; the point is that sharded runs give the same "
              "records.", ""]

    # 2. sweep
    print("2/4 sweep", flush=True)
    sweep_walls = {}
    for launcher in ("basic", "laptop"):
        _, sweep_walls[launcher] = bench(["-m", f"hydra/launcher={launcher}", *SWEEP,
                                          f"hydra.sweep.dir={tmp}/sweep-{launcher}",
                                          f"checkpoint.dir={tmp}/ck-sweep-{launcher}"])
    n_records = {k: len(list((tmp / f"sweep-{k}").rglob(records.RECORDS_FILE))) for k in sweep_walls}
    lines += ["## A sweep of 8 short jobs", "", f"`python -m bench -m hydra/launcher=L {' '.join(SWEEP)}`", "",
              "| launcher | wall s | records files |", "|---|---|---|",
              f"| basic (one after another) | {sweep_walls['basic']:.1f} | {n_records['basic']} |",
              f"| laptop (joblib, 2 workers) | {sweep_walls['laptop']:.1f} | {n_records['laptop']} |", "",
              f"Wall-time ratio joblib / sequential: {sweep_walls['laptop'] / sweep_walls['basic']:.2f}.", ""]

    # 3. kill and resume
    print("3/4 kill and resume", flush=True)
    every = 10
    kill_args = [*RUN, "train.epochs=6", f"checkpoint.every_steps={every}"]  # 372 steps: the kill lands in training
    bench([*kill_args, f"hydra.run.dir={tmp}/whole", f"checkpoint.dir={tmp}/ck-whole"])
    ckpt = tmp / "ck-killed"
    proc = subprocess.Popen([sys.executable, "-m", "bench", *kill_args, f"hydra.run.dir={tmp}/killed",
                             f"checkpoint.dir={ckpt}"], cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not list(ckpt.glob(f"*/{CHECKPOINT_FILE}")):
        if proc.poll() is not None:
            raise SystemExit("the run ended before its first checkpoint")
        time.sleep(0.02)
    delay = random.Random(args.seed).uniform(0.0, 2.0)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out, resumed_wall = bench([*kill_args, f"hydra.run.dir={tmp}/resumed", f"checkpoint.dir={ckpt}"])
    resumed = [line for line in out.stderr.splitlines() if line.startswith("resuming from")]
    step = resumed[0].split(" at step ")[1].split()[0] if resumed else "none"
    lines += ["## Kill and resume", "", f"`python -m bench {' '.join(kill_args)}`, killed with SIGKILL "
              f"{delay:.2f} s after its first checkpoint appeared, then the same command again.", "",
              f"- resumed at step {step} (`{resumed[0] if resumed else 'no resume line'}`)",
              f"- checkpoint interval: {every} steps (and every epoch end), so at most {every - 1} finished steps "
              "are redone after a kill",
              f"- final parameters bit-identical to the uninterrupted run: {params_equal(tmp / 'whole', tmp / 'resumed')}",
              f"- records equal to the uninterrupted run: {bool(np.array_equal(values(tmp / 'whole'), values(tmp / 'resumed')))}",
              ""]

    # 4. bad inputs
    print("4/4 bad inputs", flush=True)
    lines += ["## Bad input", "", "Each with `dataset=digits checkpoint.dir=null hydra.run.dir=TMP` added.", "",
              "| override | exit | message |", "|---|---|---|"]
    for i, bad in enumerate(BAD):
        out, _ = bench(["dataset=digits", "progress=false", "checkpoint.dir=null", f"hydra.run.dir={tmp}/bad{i}",
                        *bad], check=False)
        message = (out.stderr.strip().splitlines() or ["(none)"])[-1].replace("|", "\\|")
        lines.append(f"| `{' '.join(bad)}` | {out.returncode} | {message} |")
    lines.append("")
    records.atomic_write_bytes(args.out, "\n".join(lines).encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
