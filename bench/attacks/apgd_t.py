"""APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss, once per target class.

The targets are the classes the model ranks 2nd, 3rd, ... on the clean input
(top `n_targets`, default 9, capped at num_classes - 1). Targeted DLR needs at
least 4 classes; below that the attack runs APGD-CE instead, warns, and
`bench.evaluate` records the fallback (metric "fallback_ce") next to its result.
"""

from __future__ import annotations

import jax.numpy as jnp

from bench.attacks.apgd import MIN_CLASSES, _validate, apgd_core
from bench.contracts import Attack, Capabilities
from bench.errors import BenchError


def apgd_t(*, norm: str = "linf", eps: float, steps: int = 100, restarts: int = 1, n_targets: int = 9,
           eot_samples: int = 1):
    """APGD-T attack `(logits_fn, params, x, y, key) -> x_adv`.

    Args:
      norm: "linf" or "l2".
      eps: radius of the threat model in [0, 1] pixel units.
      steps: iterations per target and restart (100 in AutoAttack).
      restarts: restarts per target class.
      n_targets: how many of the top-ranked wrong classes to target (9 in AutoAttack), capped at num_classes - 1.
      eot_samples: gradient averaged over this many draws of a stochastic model.
    """
    norm, eps = _validate(norm, eps, steps, restarts, eot_samples)
    if int(n_targets) < 1:
        raise BenchError(f"APGD-T needs n_targets >= 1, got {n_targets}")
    static = dict(norm=norm, steps=int(steps), restarts=int(restarts), loss="dlr_targeted",
                  n_targets=int(n_targets), eot_samples=int(eot_samples))

    def attack(logits_fn, params, x, y, key):
        return apgd_core(logits_fn, params, x, y, key, jnp.float32(eps), **static)

    stronger = lambda: apgd_t(norm=norm.value, eps=eps, steps=2 * int(steps), restarts=restarts, n_targets=n_targets,
                              eot_samples=eot_samples)
    return Attack(attack, Capabilities(min_classes=MIN_CLASSES["dlr_targeted"], eot_samples=int(eot_samples),
                                       stronger=stronger, stronger_label=f"{2 * int(steps)} steps"))
