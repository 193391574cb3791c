"""Shared fixtures: a small model trained once per session on digits."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most tests are compile-bound (small models, a few steps): compiled with XLA's LLVM backend at optimisation level
# 0 they compile about twice as fast and run a little slower (tests/test_models.py alone: 47 -> 25 s). The tests
# check properties, not speed; every run outside them (the CLI, scripts/, make bench) compiles at XLA's default
# level. The CLI runs the tests start get the same flag (cli_env).
TEST_XLA_FLAG = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAG}".strip()
# The CLI runs the tests start share one compilation cache (bench/cache.py) of this session only, so no test
# depends on what an earlier session left in ~/.cache. (Set before pytest-xdist starts its workers: they share it.)
if "BENCH_JAX_CACHE" not in os.environ:
    import tempfile

    os.environ["BENCH_JAX_CACHE"] = tempfile.mkdtemp(prefix="bench-jax-cache-")

import jax
import pytest

from bench import data, models, train
from bench.defenses import standard


def cli_env(home) -> dict:
    """The environment of a `python -m bench` subprocess in a test: CPU, a bare PATH, `home` as HOME, the tests'
    XLA_FLAGS, and this session's compilation cache with every compilation kept (the resume and determinism tests
    rerun one config, so their later runs load executables instead of compiling them; an executable gives the same
    numbers)."""
    return {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(home), "XLA_FLAGS": os.environ["XLA_FLAGS"],
            "BENCH_JAX_CACHE": os.environ["BENCH_JAX_CACHE"], "BENCH_JAX_CACHE_MIN_SECONDS": "0"}


def kill_at_first_checkpoint(args, cwd, env, ckpt, timeout: float = 300) -> None:
    """Run `args` until it writes its first training checkpoint under `ckpt`, where it SIGKILLs itself
    (`bench.checkpoint.KILL_AFTER_CHECKPOINT`): the crash lands at a known step however fast the machine is."""
    import signal
    import subprocess

    from bench import checkpoint

    out = subprocess.run(args, cwd=cwd, env={**env, checkpoint.KILL_AFTER_CHECKPOINT: "1"}, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == -signal.SIGKILL, f"the run was not killed at its checkpoint: {out.stderr[-2000:]}"
    assert list(ckpt.glob(f"*/{checkpoint.CHECKPOINT_FILE}")), "the run was killed but left no checkpoint"


@pytest.fixture(scope="session")
def digits_data():
    return data.digits()


@pytest.fixture(scope="session")
def trained_digits(digits_data, tmp_path_factory):
    """(logits_fn, params, x_test, y_test) for a standard cnn_small trained 15 epochs on digits (~97% clean).

    Under pytest-xdist the first worker to need it trains it and the others load its parameters (a file in
    this session's temporary folder, behind a lock)."""
    from filelock import FileLock
    from flax import serialization

    d = digits_data
    model = models.cnn_small(d.num_classes, d.mean, d.std)
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(0), d.image_shape)

    def fit():
        opt = train.make_optimizer("adam", 3e-3, "cosine", 15 * train.steps_per_epoch(len(d.y_train), 64))
        return train.train(standard(logits_fn), params, opt, d.x_train, d.y_train, epochs=15, batch_size=64,
                           key=jax.random.key(1), progress=False)[0]

    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: nothing to share
        return logits_fn, fit(), d.x_test, d.y_test
    shared = tmp_path_factory.getbasetemp().parent / "trained_digits.msgpack"  # this session's, all workers'
    with FileLock(f"{shared}.lock"):
        if shared.is_file():
            trained = serialization.from_bytes(params, shared.read_bytes())
        else:
            trained = fit()
            shared.write_bytes(serialization.to_bytes(trained))
    return logits_fn, trained, d.x_test, d.y_test
