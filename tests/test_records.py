"""Records you can trust: one row per experiment, a folder per run, bad data refused, sweeps that survive a bad job,
loaded models that are the trained ones, intervals on every accuracy."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bench import data, records, report, sanity
from bench.__main__ import _check_overrides
from bench.contracts import Attack, Capabilities
from bench.errors import BenchError
from bench.evaluate import SuiteOutcome

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
ENV = cli_env(ROOT)
QUICK = ["debug=tiny", "suite.sanity=false", "progress=false"]


def _bench(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**ENV, "PYTHONPATH": str(ROOT)})


def _frame(config: dict, seed: int, clean: float, robust: float, n: int = 1000) -> pd.DataFrame:
    rows = [records.row("clean", "accuracy", clean, n), records.row("worst_case", "robust_accuracy", robust, n,
                                                                     norm="linf", eps=0.1)]
    context = dict(scenario="evasion", dataset="digits", model="mlp", defense="standard",
                   **records.provenance({**config, "seed": seed}, seed=seed, data_fingerprint="f"))
    return records.make_rows(rows, context)


# ---- tables: one row per experiment, seeds aggregated, intervals -------------------------------------------------

def test_report_keeps_experiments_apart_and_aggregates_seeds():
    ten, zero = {"train": {"epochs": 10}}, {"train": {"epochs": 0}}
    frame = pd.concat([_frame(ten, 0, 0.96, 0.50), _frame(ten, 1, 0.98, 0.52), _frame(zero, 0, 0.07, 0.0)],
                      ignore_index=True)
    table = report.evasion_table(frame)
    assert len(table) == 2  # never one row "clean 51.83" for two different experiments
    by_variant = table.set_index("variant")
    assert by_variant.loc["train.epochs=10", "seeds"] == 2
    assert by_variant.loc["train.epochs=10", "clean"] == pytest.approx(97.0)
    assert by_variant.loc["train.epochs=0", "clean"] == pytest.approx(7.0)
    shown = report.evasion_table(frame, with_ci=True).set_index("variant")
    low, high = records.wilson_interval(0.97, 1000)
    assert shown.loc["train.epochs=10", "clean"] == f"97.00 ± 1.41 [{100 * low:.2f}, {100 * high:.2f}]"
    assert shown.loc["train.epochs=0", "clean"].startswith("7.00 [")  # one seed: no spread, an interval


def test_every_record_names_its_hardware():
    """provenance() records the machine (CPU, cores, JAX devices) in every row, not only reproduce's runs."""
    frame = _frame({"train": {"epochs": 1}}, 0, 0.9, 0.5)
    import jax
    import os

    summary = records.machine()["summary"]
    assert set(frame["hardware"]) == {summary}
    assert f"{os.cpu_count()} cores" in summary and jax.devices()[0].platform in summary


def test_one_experiment_has_no_variant_column():
    frame = pd.concat([_frame({"a": 1}, 0, 0.9, 0.5), _frame({"a": 1}, 1, 0.8, 0.4)], ignore_index=True)
    table = report.evasion_table(frame)
    assert "variant" not in table.columns and len(table) == 1 and table.seeds.iloc[0] == 2


def test_wilson_interval_matches_scipy_and_records_carry_it():
    from scipy.stats import binomtest

    for k, n in ((746, 1000), (0, 100), (100, 100), (3, 17)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = records.wilson_interval(k / n, n)
        assert low == pytest.approx(ci.low, abs=1e-9) and high == pytest.approx(ci.high, abs=1e-9)
    frame = _frame({}, 0, 0.746, 0.5)
    clean = frame[frame.metric == "accuracy"].iloc[0]
    assert clean.ci_low == pytest.approx(0.7181, abs=1e-4) and clean.ci_high == pytest.approx(0.7720, abs=1e-4)


def test_report_skips_a_corrupt_run_with_one_warning(tmp_path, capsys):
    good = tmp_path / "good" / records.RECORDS_FILE
    records.write_records(good.parent, _frame({}, 0, 0.9, 0.5))
    bad = tmp_path / "bad" / records.RECORDS_FILE
    bad.parent.mkdir()
    bad.write_bytes(b"not parquet")
    assert report.main([str(tmp_path), "--out", str(tmp_path / "tables")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and str(bad) in err
    assert pd.read_csv(tmp_path / "tables" / "evasion.csv").clean.iloc[0] == pytest.approx(90.0)


def test_written_files_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        importlib.reload(records)  # the umask is read once at import
        path = records.atomic_write_bytes(tmp_path / "x.bin", b"1")
    finally:
        os.umask(old)
        importlib.reload(records)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# ---- data: bad labels and shapes are one clear error -------------------------------------------------------------

_X = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
_Y = np.arange(20) % 3
BAD_DATA = {
    "negative label": (dict(y_train=_Y - 1), "label -1"),
    "label 1000": (dict(y_train=np.where(_Y == 2, 1000, _Y)), "1001-class"),
    "fractional labels": (dict(y_train=_Y + 0.5), "not whole numbers"),
    "length mismatch": (dict(y_train=_Y[:-1]), "20 images but 19 labels"),
    "one-hot labels": (dict(y_train=np.eye(3)[_Y]), "one-hot"),
    "empty test split": (dict(x_test=_X[:0], y_test=_Y[:0]), "empty"),
    "NCHW images": (dict(x_train=np.random.rand(20, 1, 8, 8), x_test=np.random.rand(20, 1, 8, 8)), "NCHW"),
    "one class": (dict(y_train=_Y * 0, y_test=_Y * 0), "at least two classes"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_before_any_work(case, tmp_path):
    changes, message = BAD_DATA[case]
    arrays = {**dict(x_train=_X, y_train=_Y, x_test=_X, y_test=_Y), **changes}
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(BenchError, match=message):
        data.files(str(tmp_path / "d.npz"))


def test_damaged_files_are_one_clear_error(tmp_path):
    (tmp_path / "text.npz").write_text("x_train,y_train\n1,2\n")
    with pytest.raises(BenchError, match="not an .npz archive"):
        data.files(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "objects.npz", x_train=np.array([None, 1], dtype=object), y_train=_Y, x_test=_X, y_test=_Y)
    with pytest.raises(BenchError, match="pickled data are never loaded"):
        data.files(str(tmp_path / "objects.npz"))
    import gzip

    folder = tmp_path / "idx"
    folder.mkdir()
    payload = gzip.compress(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(10))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(payload[: len(payload) // 2])  # truncated
    with pytest.raises(BenchError, match="damaged or truncated"):
        data.read_idx(folder / "train-labels-idx1-ubyte.gz")


def test_good_data_still_loads(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=_X, y_train=_Y.astype(float), x_test=_X, y_test=_Y)
    assert data.files(str(tmp_path / "d.npz")).num_classes == 3


# ---- the command line: unknown keys with +, sweeps checked value by value ---------------------------------------

@pytest.mark.parametrize("args,message", [
    (["+train.nosuch=3"], "unknown key train.nosuch"),
    (["++train.nosuch=3"], "unknown key train.nosuch"),
    (["+nosuch=1"], "unknown key nosuch"),
    (["scenario=privacy", "+scenario.dp.nosuch=1"], "unknown key scenario.dp.nosuch"),
    (["-m", "train.epochs=1,ten"], "in the sweep: train.epochs=ten"),
    (["hydra.run.dir=" + __file__], "is a file, not a folder"),
    (["hydra.run.dir=/tmp/" + "x" * 300], "longer than 255 bytes"),
])
def test_command_line_problems_are_one_line(args, message):
    problem = _check_overrides(args)
    assert problem is not None and message in problem and "\n" not in problem


@pytest.mark.parametrize("args", [["+model.hidden=[32]"], ["++suite.sanity=false"], ["+experiment=madry_mnist_reduced"],
                                  # a key the experiment brings, overridden after it (the tuning script does this)
                                  ["+experiment=wong2020_fgsm_rs_mnist_reduced", "defense.warmup_steps=350"],
                                  ["-m", "seed=0,1", "model=mlp,cnn_small"]])
def test_good_command_lines_pass(args):
    assert _check_overrides(args) is None


# ---- sanity checks judge what the evaluation ran on --------------------------------------------------------------

def test_black_box_check_sees_every_evaluated_example():
    """Square-only breaks far past the sanity sample still trip the check, and its n says 200 were judged."""
    w = jax.random.normal(jax.random.key(0), (16, 3))
    linear = lambda p, x: x.reshape(x.shape[0], -1) @ p
    x = np.asarray(jax.random.uniform(jax.random.key(1), (200, 4, 4, 1)))
    y = np.asarray(jnp.argmax(linear(w, x), -1))
    noop = lambda logits_fn, params, x, y, key: x
    suite = {(0.1, "white"): Attack(noop), (0.1, "free"): Attack(noop, Capabilities(gradient_free=True))}
    everywhere = np.ones(200, bool)
    broken_free = np.zeros(200, bool)
    broken_free[150:160] = True  # 5%: beyond the first 20, where the old check looked
    outcome = SuiteOutcome([], {(0.0, "clean"): everywhere, (0.1, "worst_case"): ~broken_free},
                           {(0.1, "white"): ~everywhere, (0.1, "free"): broken_free},
                           {(0.1, "white"): everywhere, (0.1, "free"): everywhere})
    rows = sanity.sanity_checks(linear, w, x, y, suite, "linf", jax.random.key(2), outcome, batch_size=200,
                                n_examples=20)
    black_box = [r for r in rows if r["metric"] == "black_box_beats_white_box"][0]
    assert black_box["value"] == 1.0 and black_box["n"] == 200 and "10 of 200" in black_box["reason"]
    converged = [r for r in rows if r["metric"] == "not_converged"][0]
    assert converged["n"] == 20 and "first 20 of 200" in converged["reason"]


# ---- runs: a folder each, sweeps that survive a bad job, loaded models that are the trained ones ----------------

@pytest.mark.slow
def test_four_runs_started_at_once_get_four_folders(tmp_path):
    light = [*QUICK, "suite.n_examples=16", "suite.attacks.pgd.steps=2", "dataset.n_test=16"]
    procs = [subprocess.Popen([sys.executable, "-m", "bench", *light, f"seed={10 + i}"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "PYTHONPATH": str(ROOT)}) for i in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    files = sorted((tmp_path / "results" / "runs").rglob(records.RECORDS_FILE))
    assert len(files) == 4 and len({f.parent for f in files}) == 4
    for f in files:  # each folder's config and records are the same run's
        config_seed = int([line for line in (f.parent / ".hydra" / "config.yaml").read_text().splitlines()
                           if line.startswith("seed:")][0].split()[1])
        assert set(pd.read_parquet(f).seed) == {config_seed}
    frame = records.read_records(tmp_path / "results" / "runs")
    assert frame.run_id.nunique() == 4 and report.evasion_table(frame).seeds.sum() == 4


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "laptop"])
def test_a_failing_job_does_not_take_the_sweep_with_it(launcher, tmp_path):
    # dataset.n_train=1 cannot fill a batch of 64: that job fails after data loading, the others finish
    args = ["-m", *QUICK, "suite.n_examples=16", "dataset.n_train=1,400,200", f"hydra.sweep.dir={tmp_path}"]
    if launcher != "basic":
        args.append(f"hydra/launcher={launcher}")
    out = _bench(*args)
    assert out.returncode == 1, out.stderr[-2000:]
    assert len(list(tmp_path.rglob(records.RECORDS_FILE))) == 2
    failures = list(tmp_path.rglob("failure.json"))
    assert len(failures) == 1 and json.loads(failures[0].read_text())["job"] == 0
    assert "3 jobs ran, 2 wrote records, 1 failed" in out.stderr
    assert "job 0 (" in out.stderr and "dataset.n_train=1" in out.stderr and "exceeds the 1 training" in out.stderr


@pytest.mark.slow
def test_loaded_params_reproduce_the_trained_model_on_other_data(tmp_path):
    """The normalization constants travel with the parameters; evaluating needs no training settings."""
    out = _bench(*QUICK, f"hydra.run.dir={tmp_path / 'trained'}")
    assert out.returncode == 0, out.stderr[-2000:]
    trained = pd.read_parquet(tmp_path / "trained" / records.RECORDS_FILE)
    params = tmp_path / "trained" / "params.msgpack"
    # other training data (so other mean/std) and a batch size larger than it: neither matters for evaluation
    out = _bench(*QUICK, f"load_params={params}", "dataset.n_train=50", "train.batch_size=512",
                 f"hydra.run.dir={tmp_path / 'loaded'}")
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = pd.read_parquet(tmp_path / "loaded" / records.RECORDS_FILE)
    pick = lambda f: f[f.metric.isin(["accuracy", "robust_accuracy"])].set_index(["evaluator", "eps"]).value
    pd.testing.assert_series_equal(pick(trained), pick(loaded))


# ---- a validation split for tuning; the test split for the reported number ---------------------------------------

def test_validation_split_is_carved_from_training_and_never_trained_on(digits_data):
    d = data.with_validation(digits_data, 200)
    assert len(d.y_val) == 200 and len(d.y_train) == len(digits_data.y_train) - 200
    np.testing.assert_array_equal(d.x_test, digits_data.x_test)  # the test split is untouched
    train_rows = {row.tobytes() for row in d.x_train.reshape(len(d.x_train), -1)}
    assert not any(row.tobytes() in train_rows for row in d.x_val.reshape(len(d.x_val), -1))
    assert set(np.bincount(d.y_val)) <= {19, 20, 21}  # stratified
    again = data.with_validation(digits_data, 200)
    np.testing.assert_array_equal(again.x_val, d.x_val)  # the same images every time
    assert d.fingerprint != digits_data.fingerprint and d.mean != digits_data.mean
    with pytest.raises(BenchError, match="validation=N"):
        digits_data.split("validation")


def test_attacking_the_validation_split_needs_one(tmp_path):
    from hydra import compose, initialize_config_dir

    from bench.experiment import prepare

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=["debug=tiny", "suite.split=validation"])
    with pytest.raises(BenchError, match="validation=N"):
        prepare(cfg, tmp_path, {}, ("init",))
