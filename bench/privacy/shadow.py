"""K shadow models trained together: one jitted step vmapped over the models' parameters and optimizer states.

Each model k trains on the examples where keep[k] is True (the same number for
every model, so the vmapped batches have one shape), with seeded shuffled
batches, the same objective, `grad_fn` hook and optimizer as the target
(`bench.train.train`). A DP recipe therefore trains DP shadows; their batches
are shuffled fixed-size batches rather than Poisson ones (the shadows need no
privacy guarantee, only the target's training distribution).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from bench.errors import BenchError


def train_shadows(objective: Callable, init_params: Callable[[jax.Array], dict],
                  make_optimizer: Callable[[jax.Array], optax.GradientTransformation], x: np.ndarray, y: np.ndarray,
                  keep: np.ndarray, *, epochs: int, batch_size: int, key: jax.Array,
                  grad_fn: Callable[[Callable], Callable] | None = None, progress: bool = False):
    """Train keep.shape[0] models at once; returns their parameters stacked along a leading model axis.

    init_params(key) -> params; make_optimizer(key) -> optax transformation
    (the key seeds optimizer state such as DP noise, so each model gets its own).
    """
    keep = np.asarray(keep, bool)
    num_models, n = keep.shape
    if n != len(y):
        raise BenchError(f"membership has {n} columns but there are {len(y)} examples")
    sizes = keep.sum(1)
    if len(set(sizes.tolist())) != 1:
        raise BenchError(f"every shadow model must hold the same number of examples, got {sorted(set(sizes))}")
    per_epoch = int(sizes[0]) // batch_size
    if per_epoch < 1:
        raise BenchError(f"shadow batch_size {batch_size} exceeds the {int(sizes[0])} examples each shadow holds")
    if grad_fn is None:
        value_and_grad = lambda p, batch, k, step, pad: jax.value_and_grad(objective, has_aux=True)(p, batch, k, step)
    else:
        value_and_grad = grad_fn(objective)
    update = make_optimizer(jax.random.key(0)).update  # the state carries each model's own keys

    def one_step(params, opt_state, xb, yb, pad, k, step):
        (loss, _), grads = value_and_grad(params, (xb, yb), k, step, pad)
        updates, opt_state = update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step_fn = jax.jit(jax.vmap(one_step, in_axes=(0, 0, 0, 0, 0, 0, None)))
    init_key, opt_key, shuffle_key, step_key = jax.random.split(key, 4)
    params = jax.vmap(init_params)(jax.random.split(init_key, num_models))
    opt_state = jax.vmap(lambda p, k: make_optimizer(k).init(p))(params, jax.random.split(opt_key, num_models))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(shuffle_key)).tolist())
    members = [np.flatnonzero(row) for row in keep]
    pad = np.zeros((num_models, batch_size), bool)
    step = 0
    for _ in tqdm(range(epochs), desc="shadows", disable=None if progress else True, leave=False):
        orders = np.stack([rng.permutation(m) for m in members])
        for b in range(per_epoch):
            idx = orders[:, b * batch_size:(b + 1) * batch_size]
            keys = jax.random.split(jax.random.fold_in(step_key, step), num_models)
            params, opt_state, loss = step_fn(params, opt_state, x[idx], y[idx], pad, keys, jnp.int32(step))
            step += 1
    if step and not np.all(np.isfinite(np.asarray(loss))):
        raise BenchError("a shadow model's training loss became non-finite; lower train.learning_rate")
    return params


def shadow_confidences(logits_fn, stacked_params, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """(K, N) logit-scaled confidences of every shadow model on every example."""
    from bench.privacy.membership import loss_and_confidence

    num_models = jax.tree.leaves(stacked_params)[0].shape[0]
    return np.stack([loss_and_confidence(logits_fn, jax.tree.map(lambda a: a[k], stacked_params), x, y, batch_size)[1]
                     for k in range(num_models)])
