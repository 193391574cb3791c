"""The calling conventions every family shares, as typed Protocols, and an attack's capabilities as data.

See ARCHITECTURE.md ("Contracts"). Each family exports factories of plain keyword
hyper-parameters; what a factory returns satisfies one of these:

- `AttackFn`: `(logits_fn, params, x, y, key) -> x_adv`, inside the eps-ball and [0, 1].
  Factories return an `Attack`: the function plus its `Capabilities`, which the
  evaluator and the sanity checks read (never attributes set on a function).
- `Objective`: `(params, batch, key, step) -> (loss, aux)`, minimised by `bench.train.train`.
- `Certifier`: `(network, params, x, y) -> margin_lower`, built with `norm` and `eps` like an attack;
  margin_lower[i, j] bounds logit_y - logit_j from below over the threat model (+inf at j = y).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax


class AttackFn(Protocol):
    def __call__(self, logits_fn: Callable, params: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array: ...


class Objective(Protocol):
    def __call__(self, params: Any, batch: tuple[jax.Array, jax.Array], key: jax.Array,
                 step: jax.Array) -> tuple[jax.Array, dict]: ...


class Certifier(Protocol):
    def __call__(self, network: Any, params: Any, x: jax.Array, y: jax.Array) -> jax.Array: ...


class Capabilities(NamedTuple):
    """What an attack is, for the evaluator: read, never guessed from a signature.

    gradient_free: uses no gradients (Square); the black-box-beats-white-box check compares these with the rest.
    min_classes: below this many classes its loss falls back to cross-entropy (DLR needs 3, targeted DLR 4).
    eot_samples: model draws averaged per gradient (expectation over transformation) for stochastic models.
    stronger: builds the same attack with twice the steps, for the convergence check; None: a fresh restart
      of the attack itself is the stronger attack.
    stronger_label: how `stronger` differs, for the check's reason ("80 steps").
    batch_scale: the suite runs it at this multiple of its batch size (a gradient-free attack keeps no
      gradients, so a larger batch fits. Square runs at 8x the default 100: per example it was fastest on the
      CPU from about 400 up, and the examples still robust after APGD (often just over 400 of 1,000) then make
      one batch, not two).
    """

    gradient_free: bool = False
    min_classes: int = 0
    eot_samples: int = 1
    stronger: Callable[[], "Attack"] | None = None
    stronger_label: str = ""
    batch_scale: int = 1


class Attack(NamedTuple):
    """An attack function with its capabilities; call it as the function itself."""

    fn: AttackFn
    capabilities: Capabilities = Capabilities()

    def __call__(self, logits_fn, params, x, y, key):
        return self.fn(logits_fn, params, x, y, key)


def capabilities(attack: Callable) -> Capabilities:
    """The capabilities of an `Attack`; a bare function (a user's own attack) gets the defaults."""
    return attack.capabilities if isinstance(attack, Attack) else Capabilities()
