"""Defenses: training objectives `(params, batch, key, step) -> (loss, aux)`.

Each is a factory taking `logits_fn` (and plain hyper-parameters) and returning
the objective that `bench.train.train` minimises. Adding one:
`bench/defenses/<name>.py`, `conf/defense/<name>.yaml`, one line in DEFENSES.

The adversarial ones share `adversarial.inner_attack` (the suite's one PGD loop,
`bench.attacks.pgd.pgd_core`, with a linear epsilon warm-up); catastrophic-
overfitting detection for single-step training is in `overfitting`.
"""

from bench.defenses.certified import crown_ibp_training, ibp_training
from bench.defenses.fgsm_at import fgsm_at
from bench.defenses.fgsm_rs import fgsm_rs
from bench.defenses.gaussian import gaussian_augmentation
from bench.defenses.pgd_at import pgd_at
from bench.defenses.standard import standard
from bench.defenses.trades import trades

DEFENSES = {
    "standard": standard,
    "fgsm_at": fgsm_at,
    "fgsm_rs": fgsm_rs,
    "pgd_at": pgd_at,
    "trades": trades,
    "ibp": ibp_training,
    "crown_ibp": crown_ibp_training,
    "gaussian_augmentation": gaussian_augmentation,
}

__all__ = ["DEFENSES", "fgsm_at", "fgsm_rs", "pgd_at", "standard", "trades"]
