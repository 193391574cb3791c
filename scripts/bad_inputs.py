"""Run every bad input and fault case we know of and write results/bad_inputs.md.

    .venv/bin/python scripts/bad_inputs.py [--out results/bad_inputs.md] [--jobs 2]

Each case is a real command (`python -m bench ...`, `python -m bench.report`, `python -m bench.certify`) on
small data (debug=tiny), run in a fresh temporary folder. For each: the exit status, whether the answer was
one line (no traceback), the message, and the "nothing lost" verdict: files that existed before the command
(a trained model, a checkpoint, records) are byte-identical afterwards, and where training had finished its
parameters are on disk. The table and the counts at the top come from this run only.
The cheap cases are also tests (tests/test_records.py, tests/test_cli.py, tests/test_scale.py).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "suite.sanity=false", "progress=false"]
ENV = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(ROOT), "PYTHONPATH": str(ROOT)}


@dataclass
class Case:
    name: str
    args: list[str]                      # after `python -m`; {tmp} is the case's folder
    expect: int = 2                      # the exit status a correct answer has
    setup: str | None = None             # a function below that prepares files in {tmp}
    keep: list[str] = field(default_factory=list)  # files under {tmp} that must be unchanged


def bench(*args):
    return ["bench", *TINY, "hydra.run.dir={tmp}/run", "checkpoint.dir=null", *args]


def privacy(*args):
    return bench("scenario=privacy", "scenario.membership.lira.shadows=0", "scenario.audit.canaries=100", *args)


X = np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)
Y = np.arange(40) % 4


def _npz(tmp: Path, **changes):
    np.savez(tmp / "data.npz", **{**dict(x_train=X, y_train=Y, x_test=X, y_test=Y), **changes})


SETUPS = {
    "npz_missing_key": lambda t: np.savez(t / "data.npz", x_train=X, y_train=Y, x_test=X),
    "npz_objects": lambda t: _npz(t, x_train=np.array([None, 1], dtype=object)),
    "npz_text": lambda t: (t / "data.npz").write_text("x_train,y_train\n0.1,1\n"),
    "npz_single_array": lambda t: np.save(t / "data.npy", X) or os.replace(t / "data.npy", t / "data.npz"),
    "labels_negative": lambda t: _npz(t, y_train=Y - 1),
    "labels_1000": lambda t: _npz(t, y_train=np.where(Y == 3, 1000, Y)),
    "labels_fractional": lambda t: _npz(t, y_train=Y + 0.5),
    "labels_one_hot": lambda t: _npz(t, y_train=np.eye(4)[Y]),
    "labels_text": lambda t: _npz(t, y_train=np.array([str(v) for v in Y])),
    "labels_one_class": lambda t: _npz(t, y_train=Y * 0, y_test=Y * 0),
    "length_mismatch": lambda t: _npz(t, y_test=Y[:-3]),
    "empty_test": lambda t: _npz(t, x_test=X[:0], y_test=Y[:0]),
    "nan_pixels": lambda t: _npz(t, x_train=np.where(X > 0.99, np.nan, X)),
    "pixels_255": lambda t: _npz(t, x_train=X * 255),
    "nchw": lambda t: _npz(t, x_train=np.random.rand(40, 1, 8, 8), x_test=np.random.rand(40, 1, 8, 8)),
    "images_3d_flat": lambda t: _npz(t, x_train=X.reshape(40, 64), x_test=X.reshape(40, 64)),
    "idx_missing": lambda t: _idx(t, skip="t10k-labels-idx1-ubyte"),
    "idx_truncated_gz": lambda t: _idx(t, truncate="train-images-idx3-ubyte"),
    "idx_bad_magic": lambda t: _idx(t, magic="train-labels-idx1-ubyte"),
    "idx_short": lambda t: _idx(t, short="train-labels-idx1-ubyte"),
    "idx_label_mismatch": lambda t: _idx(t, fewer_labels=True),
    "trained_run": lambda t: _train(t),
    "checkpoint_damaged": lambda t: _checkpoint(t, damage=True),
    "checkpoint_dir_file": lambda t: (t / "ckpt").write_text("a file"),
    "run_dir_file": lambda t: (t / "run").write_text("a file"),
    "params_corrupt": lambda t: (t / "params.msgpack").write_bytes(b"\x85\xa6garbage"),
    "records_corrupt": lambda t: _records(t, good=False),
    "records_corrupt_and_good": lambda t: _records(t, good=True),
    "records_empty_file": lambda t: (t / "runs" / "a").mkdir(parents=True) or (t / "runs" / "a" / "records.parquet").write_bytes(b""),
}


def _idx(tmp: Path, skip=None, truncate=None, magic=None, short=None, fewer_labels=False):
    folder = tmp / "idx"
    folder.mkdir()
    images = (X[..., 0] * 255).astype(np.uint8)
    labels = Y.astype(np.uint8)
    for stem, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels[:-5] if fewer_labels else labels)):
        if stem == skip:
            continue
        raw = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
        if stem == magic:
            raw = b"\x12\x34" + raw[2:]
        if stem == short:
            raw = raw[:-7]
        if stem == truncate:
            packed = gzip.compress(raw)
            (folder / (stem + ".gz")).write_bytes(packed[: len(packed) // 2])
        else:
            (folder / stem).write_bytes(raw)


def _run(args, tmp: Path, timeout=600):
    return subprocess.run([sys.executable, "-m", *[a.replace("{tmp}", str(tmp)) for a in args]], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=ENV)


def _train(tmp: Path):
    out = _run(["bench", *TINY, "hydra.run.dir={tmp}/trained", "checkpoint.dir=null"], tmp)
    assert out.returncode == 0, out.stderr[-1000:]


def _checkpoint(tmp: Path, damage: bool):
    out = _run(["bench", *TINY, "hydra.run.dir={tmp}/first", "checkpoint.dir={tmp}/ckpt"], tmp)
    assert out.returncode == 0, out.stderr[-1000:]
    if damage:
        state = next((tmp / "ckpt").rglob("train_state.msgpack"))
        state.write_bytes(state.read_bytes()[:100])


def _records(tmp: Path, good: bool):
    bad = tmp / "runs" / "bad" / "records.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 not really")
    if good:
        _train(tmp)
        shutil.copytree(tmp / "trained", tmp / "runs" / "good")


CASES = [
    # --- the command line: types, ranges, unknown options and keys -----------------------------------------
    Case("seed is not an integer", bench("seed=1.5")),
    Case("epochs is a word", bench("train.epochs=ten")),
    Case("negative epochs", bench("train.epochs=-1")),
    Case("batch size 0", bench("train.batch_size=0")),
    Case("learning rate 0", bench("train.learning_rate=0")),
    Case("learning rate is a word", bench("train.learning_rate=fast")),
    Case("unknown optimizer", bench("train.optimizer=adagrad")),
    Case("unknown schedule", bench("train.schedule=exponential")),
    Case("unknown model", bench("model=resnet9000")),
    Case("unknown dataset", bench("dataset=imagenet21k")),
    Case("unknown defense", bench("defense=magic")),
    Case("unknown suite", bench("suite=everything")),
    Case("unknown scenario", bench("scenario=quantum")),
    Case("unknown key", bench("train.nosuch=3")),
    Case("unknown key added with +", bench("+train.nosuch=3")),
    Case("unknown key added with ++", bench("++train.nosuch=3")),
    Case("unknown top-level key with +", bench("+nosuch=1")),
    Case("override without a value", bench("train.epochs")),
    Case("malformed override", bench("train.epochs==3")),
    Case("empty epsilon list", bench("suite.eps=[]")),
    Case("epsilon above 1", bench("suite.eps=[1.5]")),
    Case("negative epsilon", bench("suite.eps=[-0.1]")),
    Case("unknown norm", bench("suite.norm=l3")),
    Case("attack batch size 0", bench("suite.batch_size=0")),
    Case("no examples to attack", bench("suite.n_examples=0")),
    Case("PGD with 0 steps", bench("suite.attacks.pgd.steps=0")),
    Case("PGD with 0 restarts", bench("suite.attacks.pgd.restarts=0")),
    Case("unknown attack loss", bench("suite.attacks.pgd.loss=hinge")),
    Case("unknown attack argument", bench("+suite.attacks.pgd.momentum=0.9")),
    Case("unknown model argument", bench("+model.depth=3")),
    Case("unknown defense argument", bench("defense=pgd_at", "+defense.momentum=0.9")),
    Case("C&W at L-inf", bench("+attack@suite.attacks.cw=cw")),
    Case("negative checkpoint interval", bench("checkpoint.every_steps=-1")),
    Case("type error inside a sweep", ["bench", "-m", *TINY, "train.epochs=1,ten", "hydra.sweep.dir={tmp}/sweep"]),
    Case("certified suite on a max-pool model", bench("suite=certified", "model=madry_cnn", "train.epochs=0")),
    # --- the privacy scenario ------------------------------------------------------------------------------
    Case("unknown privacy method", privacy("scenario.method=homomorphic")),
    Case("delta 2", privacy("scenario.dp.delta=2")),
    Case("delta 1", privacy("scenario.dp.delta=1.0")),
    Case("clip norm 0", privacy("scenario.dp.clip_norm=0")),
    Case("negative noise multiplier", privacy("scenario.dp.noise_multiplier=-1")),
    Case("target epsilon 0", privacy("scenario.dp.target_epsilon=0")),
    Case("unknown accountant", privacy("scenario.dp.accountant=moments")),
    Case("too many canaries", privacy("scenario.audit.canaries=1000")),
    Case("no members to attack", privacy("scenario.membership.n_members=0")),
    Case("LiRA on a PATE student", privacy("scenario.method=pate", "scenario.membership.lira.shadows=2")),
    Case("unknown DP key", privacy("+scenario.dp.nosuch=1")),
    Case("DP batch not a multiple of the microbatch", privacy("scenario.dp.microbatch_size=5",
                                                              "scenario.dp.pad_multiple=32")),
    # --- data ----------------------------------------------------------------------------------------------
    Case("tfds dataset offline and unprepared", bench("dataset=tfds", "+dataset.name=mnist")),
    Case("data path does not exist", bench("dataset=files", "dataset.path=/nonexistent/data.npz")),
    Case("more training examples asked than batch", bench("dataset.n_train=1")),
    Case("n_train 0", bench("dataset.n_train=0")),
    *[Case(f"npz: {name.replace('_', ' ')}", bench("dataset=files", "dataset.path={tmp}/data.npz"), setup=name)
      for name in ("npz_missing_key", "npz_objects", "npz_text", "npz_single_array", "labels_negative",
                   "labels_1000", "labels_fractional", "labels_one_hot", "labels_text", "labels_one_class",
                   "length_mismatch", "empty_test", "nan_pixels", "pixels_255", "nchw", "images_3d_flat")],
    *[Case(f"IDX: {name.replace('_', ' ')}", bench("dataset=files", "dataset.path={tmp}/idx"), setup=name)
      for name in ("idx_missing", "idx_truncated_gz", "idx_bad_magic", "idx_short", "idx_label_mismatch")],
    # --- files and state -----------------------------------------------------------------------------------
    Case("params file does not exist", bench("load_params=/nonexistent/params.msgpack")),
    Case("params file is corrupt", bench("load_params={tmp}/params.msgpack"), setup="params_corrupt",
         keep=["params.msgpack"]),
    Case("params of another model", bench("load_params={tmp}/trained/params.msgpack", "model=cnn_small"),
         setup="trained_run", keep=["trained/params.msgpack"]),
    Case("params for another input shape", bench("load_params={tmp}/trained/params.msgpack", "dataset=mnist5k",
                                                 "dataset.n_train=200", "dataset.n_test=64"),
         setup="trained_run", keep=["trained/params.msgpack"]),
    Case("damaged checkpoint", ["bench", *TINY, "hydra.run.dir={tmp}/run", "checkpoint.dir={tmp}/ckpt"],
         setup="checkpoint_damaged"),
    Case("checkpoint.dir is a file", ["bench", *TINY, "hydra.run.dir={tmp}/run", "checkpoint.dir={tmp}/ckpt"],
         setup="checkpoint_dir_file", keep=["ckpt"]),
    Case("run folder is a file", ["bench", *TINY, "hydra.run.dir={tmp}/run"], setup="run_dir_file", keep=["run"]),
    Case("run folder name too long", ["bench", *TINY, "hydra.run.dir={tmp}/" + "r" * 300]),
    Case("NaN loss", bench("train.optimizer=sgd", "train.learning_rate=1e30", "train.momentum=0")),
    Case("report on a folder without records", ["bench.report", "{tmp}"]),
    Case("report on a corrupt records file", ["bench.report", "{tmp}/runs"], setup="records_corrupt",
         keep=["runs/bad/records.parquet"]),
    Case("report on an empty records file", ["bench.report", "{tmp}/runs"], setup="records_empty_file"),
    Case("report: one corrupt run among good ones", ["bench.report", "{tmp}/runs", "--out", "{tmp}/tables"],
         expect=0, setup="records_corrupt_and_good", keep=["runs/bad/records.parquet", "runs/good/records.parquet"]),
    Case("report on a path that does not exist", ["bench.report", "/nonexistent/runs"]),
    Case("certify a folder that is not a run", ["bench.certify", "{tmp}"]),
    Case("certify with an unknown certifier", ["bench.certify", "{tmp}/trained", "--certifiers", "exact"],
         setup="trained_run", keep=["trained/params.msgpack", "trained/records.parquet"]),
    Case("a sweep with one failing job", ["bench", "-m", *TINY, "dataset.n_train=1,400",
                                          "hydra.sweep.dir={tmp}/sweep"], expect=1),
]


def _digest(path: Path) -> str | None:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return "folder" if path.is_dir() else None


def run_case(case: Case) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bad-input-"))
    try:
        if case.setup:
            SETUPS[case.setup](tmp)
        before = {k: _digest(tmp / k) for k in case.keep}
        started = time.perf_counter()
        out = _run(case.args, tmp)
        seconds = time.perf_counter() - started
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        traceback = "Traceback" in out.stderr or (out.returncode not in (0, 2) and not errors)
        if errors:
            message = errors[0]
        elif lines:
            message = lines[-1]
        else:
            message = (out.stdout.strip().splitlines() or [""])[-1]
        if case.expect == 1:  # a sweep: its summary names the failed job
            message = next((line for line in lines if line.startswith("sweep:")), message)
        kept = all(_digest(tmp / k) == before[k] for k in case.keep)
        if case.keep:
            verdict = "kept unchanged: " + ", ".join(case.keep)
        elif (tmp / "run" / "params.msgpack").is_file():
            verdict = "trained parameters kept (params.msgpack)"
        else:
            verdict = "nothing computed to keep"
        verdict = verdict if kept else "LOST: " + verdict
        return dict(case=case.name, command="python -m " + " ".join(case.args).replace("{tmp}", "TMP"),
                    exit=out.returncode, one_line=not traceback and (len(errors) == 1 or case.expect != 2),
                    ok=out.returncode == case.expect and not traceback, message=message[:220],
                    verdict=verdict, seconds=seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "bad_inputs.md"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", help="run the cases whose name contains this")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or args.only in c.name]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_case, cases))
    for i, r in enumerate(rows, 1):
        print(f"{i:3d} {'ok ' if r['ok'] else 'BAD'} exit {r['exit']}  {r['case']}: {r['message'][:120]}", flush=True)
    one_line = sum(r["one_line"] for r in rows)
    tracebacks = sum(not r["ok"] for r in rows)
    lost = sum(r["verdict"].startswith("LOST") for r in rows)
    load = os.getloadavg()
    text = [
        "# Bad inputs and faults",
        "",
        f"Made by `.venv/bin/python scripts/bad_inputs.py` ({len(rows)} cases, {args.jobs} at a time, "
        f"{time.perf_counter() - started:.0f} s, load {load[0]:.1f} at the end). Each case is a real command on "
        "small data (debug=tiny) in a fresh temporary folder (TMP below).",
        "",
        f"- cases tried: {len(rows)}",
        f"- answered with one clear line (exit 2; a sweep: its summary, exit 1; the report: one warning, exit 0): "
        f"{one_line}",
        f"- tracebacks or unexpected exit codes left: {tracebacks}",
        f"- cases where something already computed was lost: {lost}",
        "",
        "| # | case | exit | one line | message | nothing lost | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        message = r["message"].replace("|", "\\|")
        text.append(f"| {i} | {r['case']}<br>`{r['command'][:150]}` | {r['exit']} | {'yes' if r['one_line'] else 'NO'} "
                    f"| {message} | {r['verdict']} | {r['seconds']:.1f} |")
    Path(args.out).write_text("\n".join(text) + "\n")
    print(f"wrote {args.out}: {len(rows)} cases, {one_line} one-line answers, {tracebacks} left, {lost} lost")
    return 0 if tracebacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
