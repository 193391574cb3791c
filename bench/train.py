"""One jitted training loop; defenses plug in as objectives `(params, batch, key, step) -> (loss, aux)`."""

from __future__ import annotations

import bisect
import enum
import json
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from bench import sharding
from bench.checkpoint import Checkpointer
from bench.errors import BenchError


class Schedule(str, enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"
    ONECYCLE = "onecycle"  # linear up to the peak at 2/5 of training, then down to 0 (Wong et al. 2020)
    PIECEWISE = "piecewise"  # x0.1 at 50% and 75% of training (Madry et al. style)


def make_schedule(schedule: str, learning_rate: float, total_steps: int) -> optax.Schedule:
    """An optax learning-rate schedule over `total_steps` steps."""
    try:
        schedule = Schedule(schedule)
    except ValueError:
        raise BenchError(f"unknown schedule '{schedule}'; use one of {[s.value for s in Schedule]}") from None
    total_steps = max(int(total_steps), 1)
    if schedule == Schedule.CONSTANT:
        return optax.constant_schedule(learning_rate)
    if schedule == Schedule.COSINE:
        return optax.cosine_decay_schedule(learning_rate, total_steps)
    if schedule == Schedule.ONECYCLE:
        peak = max(int(0.4 * total_steps), 1)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, peak), optax.linear_schedule(learning_rate, 0.0, total_steps - peak)],
            [peak],
        )
    bounds = {int(0.5 * total_steps): 0.1, int(0.75 * total_steps): 0.1}
    return optax.piecewise_constant_schedule(learning_rate, bounds)


OPTIMIZERS = {
    "adam": lambda lr, momentum, weight_decay: optax.adam(lr),
    "adamw": lambda lr, momentum, weight_decay: optax.adamw(lr, weight_decay=weight_decay),
    "sgd": lambda lr, momentum, weight_decay: optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum or None)
    ),
}


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3, schedule: str = "constant",
                   total_steps: int = 1, momentum: float = 0.9, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """An optax optimizer with a learning-rate schedule."""
    if name not in OPTIMIZERS:
        raise BenchError(f"unknown optimizer '{name}'; use one of {sorted(OPTIMIZERS)}")
    if learning_rate <= 0:
        raise BenchError(f"learning_rate must be > 0, got {learning_rate}")
    return OPTIMIZERS[name](make_schedule(schedule, learning_rate, total_steps), momentum, weight_decay)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped; data are reshuffled each epoch)."""
    if int(batch_size) < 1:
        raise BenchError(f"batch_size must be >= 1, got {batch_size}")
    if n < batch_size:
        raise BenchError(f"batch_size {batch_size} exceeds the {n} training examples; lower train.batch_size")
    return n // batch_size


class NonFiniteLoss(BenchError):
    """The training loss became NaN or inf; the message names the step, the batch and the last good checkpoint."""


def _epoch_rng(seed_words: list[int], epoch: int) -> np.random.Generator:
    """The data-order generator of one epoch: a function of (seed, epoch) only, so a resumed run sees the same order."""
    return np.random.default_rng([*seed_words, int(epoch)])


def train(objective: Callable, params, optimizer: optax.GradientTransformation, x_train: np.ndarray,
          y_train: np.ndarray, *, epochs: int, batch_size: int, key: jax.Array,
          eval_fn: Callable[[dict], dict] | None = None, progress: bool = True,
          grad_fn: Callable[[Callable], Callable] | None = None,
          sampler: Callable[[int, Callable[[int], np.random.Generator]], list[np.ndarray]] | None = None,
          checkpointer: Checkpointer | None = None):
    """Minimise `objective` over `epochs` passes of seeded shuffled mini-batches.

    Returns (params, history) where history has one dict per epoch: mean loss,
    the objective's aux metrics, and whatever `eval_fn(params)` returns. If that
    dict has a non-empty "stop" entry (a reason), training stops after this epoch
    (early stopping, e.g. on catastrophic overfitting); the reason stays in history.

    Each batch is split over all devices (`bench.sharding`); with one device
    this is plain single-device training, with N the same computation SPMD.

    With a `checkpointer` (`bench.checkpoint`), the state is saved every
    `checkpointer.every_steps` steps and at the end of each epoch, and a saved
    state is resumed from: the run continues at the saved step with the same
    data order and keys, so it ends with the same parameters as one that was
    never interrupted. A NaN or inf loss raises `NonFiniteLoss` naming the step,
    the batch and the last good checkpoint; a bad state is never saved.

    Two hooks put a gradient transformation on top of the objective (DP-SGD,
    `bench.privacy.dp_sgd`); without them training is as described above:
    - `grad_fn(objective)` returns `(params, batch, key, step, is_padding) ->
      ((loss, aux), grads)`; default `jax.value_and_grad(objective)`.
    - `sampler(epoch, epoch_rng)` returns that epoch's batches as index arrays
      into x_train, -1 marking padding (`is_padding`); default a fresh permutation
      cut into full batches of `batch_size`. `epoch_rng(e)` is the generator of
      epoch e, a function of (key, e) only, so a resumed run gets the same batches.

    An objective with a `phases` attribute, ((0, objective_0), (s_1, objective_1), ...), is trained with
    objective_i from step s_i on (one compiled step per phase): certified training uses it to skip bound
    terms whose weight is 0 in a range of steps; each phase must give the same loss and gradients there.
    """
    if int(epochs) < 0:
        raise BenchError(f"epochs must be >= 0, got {epochs}")
    if int(epochs) == 0:
        print("warning: epochs=0: nothing is trained; the model keeps its initial parameters", file=sys.stderr)
    n = len(y_train)
    per_epoch = steps_per_epoch(n, batch_size)

    # An objective may name cheaper equivalents for ranges of steps (`phases`: ((first_step, objective), ...),
    # e.g. CROWN-IBP without its CROWN pass once beta is 0): one jitted step per phase, chosen on the host.
    phases = tuple(getattr(objective, "phases", None) or ((0, objective),))
    if phases[0][0] != 0 or any(a >= b for (a, _), (b, _) in zip(phases, phases[1:])):
        raise BenchError(f"an objective's phases must start at step 0 and increase, got {[p[0] for p in phases]}")
    starts = [first for first, _ in phases]

    def make_train_step(phase_objective):
        if grad_fn is None:
            value_and_grad = lambda params, batch, key, step, is_padding: jax.value_and_grad(
                phase_objective, has_aux=True)(params, batch, key, step)
        else:
            value_and_grad = grad_fn(phase_objective)

        @jax.jit
        def train_step(params, opt_state, x, y, is_padding, key, step):
            (loss, aux), grads = value_and_grad(params, (x, y), key, step, is_padding)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss, aux

        return train_step

    steps_by_phase = [make_train_step(phase_objective) for _, phase_objective in phases]

    def train_step(*args, step):
        return steps_by_phase[bisect.bisect_right(starts, step) - 1](*args, jnp.int32(step))

    shuffle_key, step_key = jax.random.split(key)
    seed_words = np.asarray(jax.random.key_data(shuffle_key)).ravel().tolist()

    def epoch_batches(epoch):
        if sampler is not None:
            return sampler(epoch, lambda e: _epoch_rng(seed_words, e))
        order = _epoch_rng(seed_words, epoch).permutation(n)
        return [order[b * batch_size : (b + 1) * batch_size] for b in range(per_epoch)]

    state = dict(params=params, opt_state=optimizer.init(params), step=0, epoch=0, batch=0, sums="{}", history=[])
    saved = checkpointer.load(state) if checkpointer is not None else None
    if saved is not None:
        state = saved
        if hasattr(sampler, "seek"):  # a sampler that counts its steps (DP-SGD's accountant) learns where we are
            sampler.seek(state["step"])
        if state["epoch"] >= epochs or (state["history"] and state["history"][-1].get("stop")):
            print(f"resuming from {checkpointer.path} at step {state['step']} (training had finished: "
                  f"{state['epoch']} of {epochs} epochs; nothing left to train)", file=sys.stderr)
        else:
            print(f"resuming from {checkpointer.path} at step {state['step']} (epoch {state['epoch'] + 1} of {epochs}, "
                  f"batch {state['batch']})", file=sys.stderr)
    params, opt_state = sharding.replicate(state["params"]), sharding.replicate(state["opt_state"])
    step, history = state["step"], list(state["history"])
    sums = json.loads(state["sums"])  # running sums of the current epoch: {"count", "loss", aux names...}
    last_good = (checkpointer.path, step) if saved is not None else None

    bar = tqdm(total=epochs * per_epoch, initial=min(step, epochs * per_epoch), desc="train",
               disable=None if progress else True, mininterval=1.0, leave=False)  # None: no bar without a terminal
    pending = []  # (step, epoch, batch, loss, aux) on the device, not yet added to `sums`

    def flush():
        """Bring pending losses to the host; stop at the first non-finite one."""
        for (at_step, at_epoch, at_batch, loss, aux) in jax.device_get(pending):
            if not np.isfinite(loss):
                where = (f"last good checkpoint: {last_good[0]} (step {last_good[1]}); a rerun resumes from it"
                         if last_good else "no checkpoint was saved before it (set checkpoint.every_steps)")
                raise NonFiniteLoss(f"training loss became {float(loss)} at step {at_step} (epoch {at_epoch + 1}, "
                                    f"batch {at_batch}); {where}; lower train.learning_rate or check the data")
            sums["count"] = sums.get("count", 0) + 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss)
            for k, v in aux.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        pending.clear()

    def save(epoch, batch):
        nonlocal last_good
        flush()
        path = checkpointer.save(dict(params=params, opt_state=opt_state, step=step, epoch=epoch, batch=batch,
                                      sums=json.dumps(sums), history=history))
        last_good = (path, step)

    stopped = bool(history and history[-1].get("stop"))  # a run that stopped early stays stopped when resumed
    for epoch in range(state["epoch"], epochs if not stopped else 0):
        batches = epoch_batches(epoch)
        first = state["batch"] if epoch == state["epoch"] else 0
        for b in range(first, len(batches)):
            idx = batches[b]
            is_padding = idx < 0
            idx = np.where(is_padding, 0, idx)
            x, y, is_padding = sharding.shard_batch(x_train[idx], y_train[idx], is_padding)
            params, opt_state, loss, aux = train_step(params, opt_state, x, y, is_padding,
                                                      jax.random.fold_in(step_key, step), step=step)
            pending.append((step, epoch, b, loss, aux))
            step += 1
            bar.update(1)
            if checkpointer is not None and checkpointer.due(step) and b + 1 < len(batches):
                save(epoch, b + 1)
        flush()
        count = max(sums.pop("count", 0), 1)
        row = {"epoch": epoch + 1, **{k: v / count for k, v in sums.items()}}
        sums = {}
        if eval_fn is not None:
            row.update(eval_fn(params))
        history.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float)})
        if progress:
            bar.write("epoch " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if checkpointer is not None:
            save(epoch + 1, 0)
        if row.get("stop"):
            break
    bar.close()
    return params, history
