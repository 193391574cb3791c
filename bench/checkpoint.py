"""Training checkpoints and the per-run work folder that makes reruns resume.

A run's *work folder* is `checkpoint.dir/<hash>-s<seed>-<code>`, where the hash
covers the config minus the settings that cannot change a result (progress bars,
the checkpoint settings themselves) and <code> is a digest of the package
source. Rerunning the same command therefore finds the same folder: training continues from its last checkpoint and the evaluation
skips the attack batches already done (`bench.evaluate`).

A checkpoint is one Flax-msgpack file (no pickle) holding the parameters, the
optimizer state, the step, the epoch and batch position in the data order, the
epoch's running loss sums and the history so far. The random keys need no
saving: every step's key is `fold_in(key, step)` and every epoch's data order
comes from a generator seeded by (seed, epoch). Files are written atomically,
so a kill leaves either the old checkpoint or the new one, never half of one.

Setting the environment variable BENCH_KILL_AFTER_CHECKPOINT=1 makes the process
SIGKILL itself right after it wrote its first checkpoint: the resume tests use it
to crash a run at a known step instead of racing a kill against a fast training loop.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from bench.errors import BenchError
from bench.records import atomic_write_bytes, config_hash

CHECKPOINT_FILE = "train_state.msgpack"
# Config keys that cannot change any number a run produces; they stay out of the work-folder hash.
VOLATILE_KEYS = ("progress", "checkpoint")
KILL_AFTER_CHECKPOINT = "BENCH_KILL_AFTER_CHECKPOINT"


def stable_config(config: dict) -> dict:
    """The config without the keys that cannot change a result: what records hash and work folders are named by."""
    return {k: v for k, v in config.items() if k not in VOLATILE_KEYS}


@functools.cache
def code_digest() -> str:
    """sha256 (first 8 hex digits) of every source file of the `bench` package: state saved by other code
    (another commit, or uncommitted edits) is never resumed."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:8]


def work_dir(config: dict, root: str | Path, seed: int) -> Path:
    """The folder a run keeps its resumable state in: the same for the same config, seed and code."""
    return Path(root) / f"{config_hash(stable_config(config))}-s{int(seed)}-{code_digest()}"


def params_digest(params) -> str:
    """First 16 hex digits of the sha256 of the serialised parameters: keys caches that are only valid for them."""
    return hashlib.sha256(serialization.to_bytes(jax.device_get(params))).hexdigest()[:16]


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _keys_as_data(state):
    """Typed PRNG keys (e.g. DP-SGD's noise key in the optimizer state) as their raw uint32 data, for msgpack."""
    return jax.tree.map(lambda leaf: jax.random.key_data(leaf) if _is_key(leaf) else leaf, state)


def _restore_key(like, leaf):
    return jax.random.wrap_key_data(leaf, impl=jax.random.key_impl(like)) if _is_key(like) else leaf


class Checkpointer:
    """Save and restore the training state in `folder` every `every_steps` steps (0: only at the end)."""

    def __init__(self, folder: str | Path, every_steps: int = 0, resume: bool = True):
        if int(every_steps) < 0:
            raise BenchError(f"checkpoint.every_steps must be >= 0, got {every_steps}")
        self.folder = Path(folder)
        self.every_steps = int(every_steps)
        self.resume = bool(resume)
        self.resumed_from: int | None = None  # the step `load` found, for the records

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, state: dict[str, Any]) -> Path:
        state = dict(state, history=json.dumps(state["history"]))
        path = atomic_write_bytes(self.path, serialization.to_bytes(jax.device_get(_keys_as_data(state))))
        if os.environ.get(KILL_AFTER_CHECKPOINT) == "1":  # crash injection for the resume tests
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    def load(self, like: dict[str, Any]) -> dict[str, Any] | None:
        """The saved state in the structure of `like`, or None when there is none (or resume is off)."""
        if not self.resume or not self.path.is_file():
            return None
        template = dict(like, history="")
        try:
            state = serialization.from_bytes(_keys_as_data(template), self.path.read_bytes())
            state = jax.tree.map(_restore_key, template, state)
            state["history"] = json.loads(state["history"])
        except Exception as err:  # msgpack and the state-dict restore raise several types for a damaged file
            raise BenchError(f"checkpoint {self.path} is corrupted or truncated ({type(err).__name__}); delete it to "
                             "train from scratch, or pass checkpoint.resume=false") from None
        for key in ("step", "epoch", "batch"):
            state[key] = int(np.asarray(state[key]))
        self.resumed_from = state["step"]
        return state
