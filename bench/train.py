"""One jitted training loop; defenses plug in as objectives `(params, batch, key, step) -> (loss, aux)`."""

from __future__ import annotations

import enum
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

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


def train(objective: Callable, params, optimizer: optax.GradientTransformation, x_train: np.ndarray,
          y_train: np.ndarray, *, epochs: int, batch_size: int, key: jax.Array,
          eval_fn: Callable[[dict], dict] | None = None, progress: bool = True,
          grad_fn: Callable[[Callable], Callable] | None = None,
          sampler: Callable[[int, np.random.Generator], list[np.ndarray]] | None = None):
    """Minimise `objective` over `epochs` passes of seeded shuffled mini-batches.

    Returns (params, history) where history has one dict per epoch: mean loss,
    the objective's aux metrics, and whatever `eval_fn(params)` returns. If that
    dict has a non-empty "stop" entry (a reason), training stops after this epoch
    (early stopping, e.g. on catastrophic overfitting); the reason stays in history.

    Two hooks put a gradient transformation on top of the objective (DP-SGD,
    `bench.defenses.dp_sgd`); without them training is as described above:
    - `grad_fn(objective)` returns `(params, batch, key, step, is_padding) ->
      ((loss, aux), grads)`; default `jax.value_and_grad(objective)`.
    - `sampler(epoch, rng)` returns that epoch's batches as index arrays into
      x_train, -1 marking padding (`is_padding`); default a fresh permutation cut
      into full batches of `batch_size`.
    """
    if int(epochs) < 0:
        raise BenchError(f"epochs must be >= 0, got {epochs}")
    n = len(y_train)
    per_epoch = steps_per_epoch(n, batch_size)

    if grad_fn is None:
        value_and_grad = lambda params, batch, key, step, is_padding: jax.value_and_grad(objective, has_aux=True)(
            params, batch, key, step)
    else:
        value_and_grad = grad_fn(objective)

    @jax.jit
    def train_step(params, opt_state, x, y, is_padding, key, step):
        (loss, aux), grads = value_and_grad(params, (x, y), key, step, is_padding)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    opt_state = optimizer.init(params)
    shuffle_key, step_key = jax.random.split(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(shuffle_key)).tolist())
    history = []
    bar = tqdm(total=epochs * per_epoch, desc="train", disable=None if progress else True,
               mininterval=1.0, leave=False)  # None: no bar when stderr is not a terminal
    step = 0
    for epoch in range(epochs):
        if sampler is None:
            order = rng.permutation(n)
            batches = [order[b * batch_size : (b + 1) * batch_size] for b in range(per_epoch)]
        else:
            batches = sampler(epoch, rng)
        losses, auxes = [], []
        for idx in batches:
            is_padding = idx < 0
            idx = np.where(is_padding, 0, idx)
            params, opt_state, loss, aux = train_step(
                params, opt_state, x_train[idx], y_train[idx], is_padding, jax.random.fold_in(step_key, step),
                jnp.int32(step)
            )
            losses.append(loss)
            auxes.append(aux)
            step += 1
            bar.update(1)
        mean_loss = float(np.mean(jax.device_get(losses)))
        if not np.isfinite(mean_loss):
            raise BenchError(f"training loss became {mean_loss} in epoch {epoch + 1}; lower train.learning_rate")
        row = {"epoch": epoch + 1, "loss": mean_loss}
        row.update({k: float(np.mean([a[k] for a in jax.device_get(auxes)])) for k in (auxes[0] if auxes else {})})
        if eval_fn is not None:
            row.update(eval_fn(params))
        history.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float)})
        if progress:
            bar.write("epoch " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if row.get("stop"):
            break
    bar.close()
    return params, history
