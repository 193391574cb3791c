"""DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133) from jax-privacy.

Not a training loop of its own: the three pieces plug into `bench.train.train`
around any defense objective `(params, batch, key, step) -> (loss, aux)`:

- `clipped_value_and_grad(clip_norm, microbatch_size)`: the `grad_fn` hook;
  per-example gradients of the objective clipped to L2 norm `clip_norm` and
  summed (`jax_privacy.clipped_grad`; padding examples contribute zero).
- `dp_optimizer(...)`: an optax chain of `jax_privacy.noise_addition.gaussian_privatizer`
  (N(0, (sigma * clip_norm)^2) per coordinate on the clipped sum), division by
  the expected batch size q*n, then any optax optimizer (DP-SGD, DP-Adam, ...).
- `PoissonSampler`: the `sampler` hook; Poisson batches of
  `jax_privacy.batch_selection.CyclicPoissonSampling` (each example joins each
  step independently with probability q), padded with -1 to a multiple of
  `pad_multiple`, and (`fixed_shape=True`, for the per-example path, where
  padding costs nothing) at least to a size that a Poisson batch exceeds with
  probability below 1e-6, so that the training step compiles once; the ghost
  path, whose cost grows with the padded batch, takes the next multiple only
  (a few shapes, each compiled once).

Speed on XLA:CPU (scripts/dp_speed.py, results/dp_speed.md): with the whole
batch vmapped at once (`microbatch_size=None`), jax-privacy materialises every
per-example gradient and sums them over the leading (batch) axis, a reduction
XLA:CPU runs very slowly; `microbatch_size=1` (the default here) instead loops
over the examples (`optax.microbatching`), accumulating each clipped gradient
into one buffer, and stops at the last real example, so padding costs nothing.
On accelerators the vmapped form is the fast one: set `microbatch_size: null`.
For a ConvNet trained with the standard objective, `bench/privacy/ghost.py` computes the same clipped sum
from per-layer norms in one backward pass (`scenario.dp.clipping=auto`, the default, picks it).

`plan` turns the configured budget (noise multiplier or target epsilon, batch
size or sampling rate, epochs or steps, delta) into numbers; accounting is in
`bench.privacy.accounting` (dp-accounting, add-or-remove-one neighbours).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from bench import lazy
from bench.errors import BenchError
from bench.privacy import accounting

jax_privacy = lazy.module("jax_privacy")  # imported on first use (bench/lazy.py)


class DpPlan(NamedTuple):
    clip_norm: float
    noise_multiplier: float  # sigma: noise std / clip_norm
    q: float  # Poisson sampling rate
    steps: int
    delta: float
    n: int
    steps_per_epoch: int  # round(1 / q): one expected pass over the data

    @property
    def expected_batch_size(self) -> float:
        return self.q * self.n

    @property
    def epochs(self) -> int:
        """Passes of `steps_per_epoch` steps for `bench.train.train` (the last may be shorter)."""
        return math.ceil(self.steps / self.steps_per_epoch)


def plan(n: int, *, clip_norm: float, batch_size: int | None = None, sampling_rate: float | None = None,
         epochs: float | None = None, steps: int | None = None, noise_multiplier: float | None = None,
         target_epsilon: float | None = None, delta: float | None = None,
         accountant: str = "pld") -> DpPlan:
    """The DP-SGD numbers from a budget: give one of batch_size/sampling_rate, epochs/steps, noise_multiplier/target_epsilon.

    delta defaults to `accounting.default_delta(n)`; with `target_epsilon`, sigma is
    calibrated with `accountant` so that its epsilon is at most the target.
    """
    if clip_norm is None or not clip_norm > 0:
        raise BenchError(f"clip_norm must be > 0, got {clip_norm}")
    if (batch_size is None) == (sampling_rate is None):
        raise BenchError("give exactly one of batch_size (expected) and sampling_rate")
    q = float(sampling_rate) if sampling_rate is not None else float(batch_size) / n
    if not 0 < q <= 1:
        raise BenchError(f"sampling rate must be in (0, 1], got {q} (batch_size {batch_size}, n {n})")
    if (epochs is None) == (steps is None):
        raise BenchError("give exactly one of epochs and steps")
    steps = int(steps) if steps is not None else math.ceil(float(epochs) / q)
    if steps < 1:
        raise BenchError(f"DP-SGD needs at least one step, got {steps}")
    delta = accounting.default_delta(n) if delta is None else float(delta)
    if not 0 < delta < 1:
        raise BenchError(f"delta must be in (0, 1), got {delta}; e.g. scenario.dp.delta=1e-5 (or null: 1/n)")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise BenchError("give exactly one of noise_multiplier and target_epsilon")
    if target_epsilon is not None:
        noise_multiplier = accounting.calibrate_sigma(float(target_epsilon), delta, q, steps, accountant)
    if not noise_multiplier > 0:
        raise BenchError(f"noise_multiplier must be > 0 for a finite epsilon, got {noise_multiplier}")
    return DpPlan(float(clip_norm), float(noise_multiplier), q, steps, delta, int(n), max(1, round(1 / q)))


def plan_from_settings(n: int, *, clip_norm: float, batch_size: int | None, sampling_rate: float | None,
                       epochs: float | None, steps: int | None, noise_multiplier: float | None,
                       target_epsilon: float | None, delta: float | None, accountant: str,
                       default_batch_size: int, default_epochs: float) -> DpPlan:
    """The plan for settings where several may be given at once (conf/scenario/privacy.yaml): a set
    noise_multiplier wins over target_epsilon, sampling_rate over batch_size and steps over epochs; an unset
    batch size or epochs count falls back to the defaults (train.batch_size, train.epochs)."""
    return plan(n, clip_norm=clip_norm,
                batch_size=None if sampling_rate is not None else (batch_size or default_batch_size),
                sampling_rate=sampling_rate, epochs=None if steps is not None else (epochs or default_epochs),
                steps=steps, noise_multiplier=noise_multiplier,
                target_epsilon=None if noise_multiplier is not None else target_epsilon, delta=delta,
                accountant=accountant)


def clipped_value_and_grad(clip_norm: float, microbatch_size: int | None = 1) -> Callable[[Callable], Callable]:
    """The `grad_fn` hook of `bench.train.train`: objective -> per-example clipped, summed gradients.

    The returned function maps `(params, batch, key, step, is_padding)` to
    `((loss, aux), grad_sum)` where grad_sum is the sum over real examples of
    each example's objective gradient clipped to L2 norm `clip_norm` (its L2
    sensitivity to adding or removing one example is `clip_norm`), loss and aux
    are means over the real examples. The objective sees one example at a time
    (batch axis of size 1) with its own key.

    `microbatch_size` examples are vmapped together and the microbatches run in
    a loop (jax-privacy's `microbatch_size`); None vmaps the whole batch at once.
    The batch size must be a multiple of it. The result is the same either way
    (up to float summation order); only speed and memory differ.
    """
    if microbatch_size is not None and int(microbatch_size) < 1:
        raise BenchError(f"microbatch_size must be >= 1 or null, got {microbatch_size}")
    microbatch_size = None if microbatch_size is None else int(microbatch_size)

    def transform(objective):
        clipped = jax_privacy.clipped_grad(objective, argnums=0, has_aux=True, l2_clip_norm=clip_norm,
                                           batch_argnums=1, return_values=True, prng_argnum=2,
                                           microbatch_size=microbatch_size)

        def value_and_grad(params, batch, key, step, is_padding):
            size = is_padding.shape[0]
            if microbatch_size is not None and size % microbatch_size:
                raise BenchError(f"DP-SGD batch of {size} is not a multiple of microbatch_size {microbatch_size}; "
                                 f"make scenario.dp.pad_multiple a multiple of it")
            grads, out = clipped(params, batch, key, step, is_padding_example=is_padding)
            real = (~is_padding).astype(jnp.float32)
            count = jnp.maximum(real.sum(), 1.0)
            mean = lambda v: (v.reshape(real.shape[0], -1).mean(-1) * real).sum() / count
            return (mean(out.values), jax.tree.map(mean, out.aux)), grads

        return value_and_grad

    return transform


def dp_optimizer(optimizer: optax.GradientTransformation, *, clip_norm: float, noise_multiplier: float,
                 expected_batch_size: float, key: jax.Array) -> optax.GradientTransformation:
    """Gaussian noise of std noise_multiplier * clip_norm on the clipped sum, / expected batch size, then `optimizer`.

    The noise key lives in the optimizer state (jax_privacy's privatizer), so
    `init` with another key gives independent noise and the same `update`.
    """
    privatizer = jax_privacy.noise_addition.gaussian_privatizer
    return optax.chain(privatizer(stddev=noise_multiplier * clip_norm, prng_key=key),
                       optax.scale(1.0 / expected_batch_size), optimizer)


class PoissonSampler:
    """The `sampler` hook of `bench.train.train`: Poisson batches, `steps_per_epoch` per call, -1 as padding.

    With `fixed_shape` every batch is padded to `batch_shape` (a multiple of
    `pad_multiple` that a Poisson batch exceeds with probability below
    `overflow`), so the training step compiles once; a rarer larger batch is
    padded to the next multiple of `pad_multiple` (never truncated: that would
    break the accounting). Without it every batch goes to its own next multiple
    of `pad_multiple`: for a step whose cost grows with the padding (ghost
    clipping), a few shapes and less padding (at q*n = 250: 256 or 288 rows
    instead of 352). Which shapes occur depends on the batch sizes, not on which
    examples were drawn. Counts the steps it handed out (`steps_taken`), which
    is what the accountant composes.
    """

    def __init__(self, n: int, q: float, steps: int, steps_per_epoch: int, pad_multiple: int = 32,
                 overflow: float = 1e-6, fixed_shape: bool = True):
        if int(pad_multiple) < 1:
            raise BenchError(f"pad_multiple must be >= 1, got {pad_multiple}")
        self.n, self.steps, self.steps_per_epoch, self.pad_multiple = int(n), int(steps), int(steps_per_epoch), int(pad_multiple)
        self.batch_shape = 0  # without a fixed shape: each batch's next multiple of pad_multiple
        if fixed_shape:
            from scipy.stats import binom

            largest = int(binom.isf(float(overflow), self.n, float(q))) + 1 if overflow > 0 else 0
            self.batch_shape = max(1, math.ceil(largest / self.pad_multiple)) * self.pad_multiple
        selection = jax_privacy.batch_selection
        self.strategy = selection.CyclicPoissonSampling(
            sampling_prob=float(q), iterations=int(steps), partition_type=selection.PartitionType.INDEPENDENT)
        self._position = 0  # batches handed out so far, in the order of the whole sequence
        self._batches = None

    @property
    def steps_taken(self) -> int:
        """Steps handed out, counted over the whole run (a resumed run included): what the accountant composes."""
        return self._position

    def seek(self, step: int) -> None:
        """Count `step` steps as handed out (a run resumed from a checkpoint at that step, even one whose training
        had finished and never calls the sampler again); the next call replays the sequence to its epoch."""
        self._position, self._batches = int(step), None

    def __call__(self, epoch: int, epoch_rng: Callable[[int], np.random.Generator]) -> list[np.ndarray]:
        """The batches of `epoch`. The whole sequence comes from one generator, `epoch_rng(0)`; a call at another
        position than where the last one ended (a run resumed from a checkpoint) replays the sequence up to that
        epoch, so the batches are a function of (seed, epoch) only and a resumed run sees the same ones."""
        start = int(epoch) * self.steps_per_epoch
        if self._batches is None or self._position != start:
            self._batches = self.strategy.batch_iterator(self.n, rng=epoch_rng(0))
            self._position = sum(1 for _ in itertools.islice(self._batches, start))
        out = []
        for idx in itertools.islice(self._batches, self.steps_per_epoch):
            idx = np.asarray(idx, np.int64)
            size = max(self.batch_shape, self.pad_multiple, math.ceil(idx.size / self.pad_multiple) * self.pad_multiple)
            out.append(np.concatenate([idx, np.full(size - idx.size, -1, np.int64)]))  # an empty step still adds noise
        self._position += len(out)
        return out
