"""Scale and faults: 1 vs 2 devices, determinism, kill-and-resume, NaN losses, damaged checkpoints,
evaluation resume, and parallel sweeps (joblib, submitit) that share one results folder."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import serialization

from bench import checkpoint, evaluate, models, records, report, train
from bench.attacks.pgd import pgd
from bench.defenses import standard
from bench.errors import BenchError
from conftest import cli_env, kill_at_first_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# A small run that trains (3 epochs, 22 steps each), attacks (PGD) and certifies (IBP, CROWN) at two radii,
# checkpointing every 5 steps.
SMALL = ["dataset=digits", "model=cnn_small", "train.epochs=3", "suite=certified", "suite.eps=[0.01,0.1]",
         "suite.n_examples=128", "suite.batch_size=64", "suite.certify_batch_size=64", "++suite.sanity=false",
         "progress=false",
         "checkpoint.every_steps=5"]
VOLATILE = ["run_id", "created", "seconds", "git_rev"]


def _env(devices: int = 1) -> dict:
    env = cli_env(ROOT)
    if devices > 1:
        env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
    return env


def _bench_args(run_dir: Path, ckpt: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "bench", *SMALL, f"hydra.run.dir={run_dir}", f"checkpoint.dir={ckpt}", *extra]


def _bench(run_dir, ckpt, *extra, devices=1):
    out = subprocess.run(_bench_args(run_dir, ckpt, *extra), cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=_env(devices))
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _results(run_dir: Path) -> pd.DataFrame:
    """A run's records without the columns that legitimately differ between two runs (ids, times)."""
    frame = records.read_records(run_dir)
    frame = frame[frame.metric != "seconds"].drop(columns=VOLATILE)
    return frame.sort_values(["evaluator", "eps", "metric"]).reset_index(drop=True)


def _params(run_dir: Path) -> list[np.ndarray]:
    return jax.tree.leaves(serialization.msgpack_restore((run_dir / "params.msgpack").read_bytes()))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The small run, uninterrupted, on one device."""
    base = tmp_path_factory.mktemp("reference")
    started = time.perf_counter()
    _bench(base / "run", base / "ckpt")
    return base / "run", time.perf_counter() - started


@pytest.mark.slow
def test_same_config_and_seed_give_identical_records(reference_run, tmp_path):
    _bench(tmp_path / "run", tmp_path / "ckpt")
    pd.testing.assert_frame_equal(_results(reference_run[0]), _results(tmp_path / "run"))
    assert all(np.array_equal(a, b) for a, b in zip(_params(reference_run[0]), _params(tmp_path / "run")))


@pytest.mark.slow
def test_two_devices_give_the_same_records(reference_run, tmp_path):
    """Batches split over 2 simulated CPU devices: the gradient mean becomes an all-reduce, so parameters may
    differ in the last bits (tolerance 1e-4); accuracies may differ by at most one example in 128."""
    _bench(tmp_path / "run", tmp_path / "ckpt", devices=2)
    one, two = _results(reference_run[0]), _results(tmp_path / "run")
    assert set(two.hardware) == {set(one.hardware).pop() + " x2"}  # the records say how many devices ran it
    pd.testing.assert_frame_equal(one.drop(columns=["value", "hardware"]), two.drop(columns=["value", "hardware"]))
    assert np.abs(one.value.to_numpy() - two.value.to_numpy()).max() <= 1 / 128 + 1e-9
    for a, b in zip(_params(reference_run[0]), _params(tmp_path / "run")):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_kill_and_rerun_resumes_to_the_same_result(reference_run, tmp_path):
    """SIGKILL once the first checkpoint exists, rerun the same command: it resumes at the checkpoint's step and
    ends with bit-identical parameters and the same records as the run that was never interrupted."""
    ckpt = tmp_path / "ckpt"
    kill_at_first_checkpoint(_bench_args(tmp_path / "killed", ckpt), ROOT, _env(), ckpt)
    assert not (tmp_path / "killed" / records.RECORDS_FILE).exists()

    out = _bench(tmp_path / "resumed", ckpt)
    resumed_at = [line for line in out.stderr.splitlines() if line.startswith("resuming from")]
    assert resumed_at, out.stderr[-2000:]
    step = int(resumed_at[0].split(" at step ")[1].split()[0])
    assert 0 < step < 3 * 22
    resumed = _results(tmp_path / "resumed")
    assert resumed[resumed.metric == "resumed_from_step"].value.tolist() == [step]  # the records say so
    resumed = resumed[resumed.metric != "resumed_from_step"].reset_index(drop=True)
    pd.testing.assert_frame_equal(_results(reference_run[0]), resumed)
    assert all(np.array_equal(a, b) for a, b in zip(_params(reference_run[0]), _params(tmp_path / "resumed")))


# ---- in-process: NaN losses, damaged checkpoints, evaluation resume -------------------------------------------

def _tiny(digits_data):
    d = digits_data
    model = models.mlp(d.num_classes, d.mean, d.std, hidden=(32,))
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(0), d.image_shape)
    return d, logits_fn, params


def test_nan_loss_names_step_batch_and_last_good_checkpoint(digits_data, tmp_path):
    d, logits_fn, params = _tiny(digits_data)
    base = standard(logits_fn)

    def poisoned(params, batch, key, step):  # finite until step 12, then NaN
        loss, aux = base(params, batch, key, step)
        return jnp.where(step >= 12, jnp.nan, loss), aux

    ckpt = checkpoint.Checkpointer(tmp_path, every_steps=5)
    with pytest.raises(train.NonFiniteLoss) as err:
        train.train(poisoned, params, train.make_optimizer("adam", 1e-3), d.x_train, d.y_train, epochs=2,
                    batch_size=64, key=jax.random.key(1), progress=False, checkpointer=ckpt)
    message = str(err.value)
    assert "at step 12 (epoch 1, batch 12)" in message
    assert f"{ckpt.path} (step 10)" in message
    state = ckpt.load(dict(params=params, opt_state=train.make_optimizer("adam", 1e-3).init(params), step=0,
                           epoch=0, batch=0, sums="", history=[]))
    assert state["step"] == 10  # the NaN state was never saved
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state["params"]))


def test_damaged_checkpoint_is_a_clear_error_and_kept(digits_data, tmp_path):
    d, logits_fn, params = _tiny(digits_data)
    ckpt = checkpoint.Checkpointer(tmp_path, every_steps=5)
    kwargs = dict(epochs=1, batch_size=64, key=jax.random.key(1), progress=False, checkpointer=ckpt)
    train.train(standard(logits_fn), params, train.make_optimizer("adam", 1e-3), d.x_train, d.y_train, **kwargs)
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BenchError, match="corrupted or truncated.*checkpoint.resume=false"):
        train.train(standard(logits_fn), params, train.make_optimizer("adam", 1e-3), d.x_train, d.y_train, **kwargs)
    assert ckpt.path.read_bytes() == data[: len(data) // 2]  # not overwritten: the user decides


def test_evaluation_resumes_from_per_example_cache(trained_digits, tmp_path):
    """A rerun with the cache skips every batch already attacked and reports the same per-example results."""
    logits_fn, params, x, y = trained_digits
    x, y = x[:96], y[:96]
    calls = []
    attack = pgd(norm="linf", eps=0.1, steps=5)

    def counted(*args):
        calls.append(1)
        return attack(*args)

    suite = {(0.1, "pgd"): counted}
    kwargs = dict(batch_size=32, progress=False, cache_dir=tmp_path)
    first, first_examples, *_ = evaluate.run_suite(logits_fn, params, x, y, suite, "linf", jax.random.key(0), **kwargs)
    assert len(calls) == 3
    cache = tmp_path / "0-0-pgd.npz"
    with np.load(cache) as saved:  # as if killed after the first batch
        partial = dict(idx=saved["idx"], still=np.where(np.arange(96) < 32, saved["still"], False), done=1,
                       batch=saved["batch"])
    np.savez(cache, **partial)
    calls.clear()
    again, again_examples, *_ = evaluate.run_suite(logits_fn, params, x, y, suite, "linf", jax.random.key(0), **kwargs)
    assert len(calls) == 2  # batches 2 and 3 only
    np.testing.assert_array_equal(first_examples[(0.1, "worst_case")], again_examples[(0.1, "worst_case")])
    assert [r["value"] for r in first] == [r["value"] for r in again]
    # batches of another size (an attack's batch_scale, another suite.batch_size): the count of done batches
    # means other examples, so the cache is not trusted
    np.savez(cache, **partial)
    calls.clear()
    evaluate.run_suite(logits_fn, params, x, y, suite, "linf", jax.random.key(0), **{**kwargs, "batch_size": 48})
    assert len(calls) == 2  # both batches of 48, none skipped


# ---- sweeps: 8 parallel jobs into one folder; the submitit (SLURM) code path -----------------------------------

SWEEP = ["dataset=digits", "model=mlp", "train.epochs=1", "suite=pgd", "suite.eps=[0.1]", "suite.n_examples=32",
         "suite.attacks.pgd.steps=5", "suite.sanity=false", "progress=false"]


@pytest.mark.slow
def test_joblib_sweep_of_8_jobs_loses_no_record(tmp_path):
    """8 jobs, 2 at a time, one sweep folder; two of them identical (seed 6 twice): 8 intact records files,
    no temporary files left, and the report counts the identical pair once."""
    out = subprocess.run([sys.executable, "-m", "bench", "-m", "hydra/launcher=laptop", "seed=0,1,2,3,4,5,6,6",
                          *SWEEP, f"hydra.sweep.dir={tmp_path / 'sweep'}", f"checkpoint.dir={tmp_path / 'ckpt'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted((tmp_path / "sweep").rglob(records.RECORDS_FILE))
    assert len(files) == 8
    frame = records.read_records(tmp_path / "sweep")  # raises on a damaged file
    assert frame.run_id.nunique() == 8
    assert not list((tmp_path / "sweep").rglob("*.tmp")) and not list((tmp_path / "ckpt").rglob("*.tmp"))
    table = report.evasion_table(frame)
    assert table.seeds.tolist() == [7]


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_cluster_path(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench", "-m", "hydra/launcher=slurm_local", "seed=0", *SWEEP,
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", f"checkpoint.dir={tmp_path / 'ckpt'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "sweep").rglob(records.RECORDS_FILE))) == 1
    assert list((tmp_path / "sweep" / ".submitit").rglob("*_log.out"))  # submitit ran the jobs
