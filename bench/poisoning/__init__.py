"""Training-set poisoning and backdoors (the `poisoning` scenario, bench/scenarios/poisoning.py).

One file per attack, each a factory of keyword hyper-parameters returning
`(x_train, y_train, rng, num_classes) -> PoisonedSet` (base.py: the poisoned images and labels, the indices
modified, the test-time trigger); one file for the metrics (CA, ASR, RA, targeted success, detection
TPR/FPR, DER); one per filtering defense, each a factory returning
`(features, labels, rng, expected_ratio) -> flagged indices` on penultimate-layer features (features.py).
Adding an attack: `bench/poisoning/<name>.py` and one line in ATTACKS; a defense: one file and one line in
FILTERS.
"""

from bench.poisoning.activation_clustering import activation_clustering
from bench.poisoning.badnets import badnets
from bench.poisoning.base import PoisonedSet, attack_inputs, modified_indices
from bench.poisoning.blend import blend
from bench.poisoning.feature_collision import feature_collision
from bench.poisoning.gradient_matching import gradient_matching
from bench.poisoning.influence import influence_attack
from bench.poisoning.label_flip import label_flip
from bench.poisoning.spectral import spectral_signatures

# Every poisoning attack that makes a poisoned training set, one line each (scenario.attack).
ATTACKS = {
    "label_flip": label_flip,
    "badnets": badnets,
    "blend": blend,
}

# Targeted attacks on one test image at a time, each on its own convex victim (scenario.attack; rows
# `targeted_success` over scenario.targets target images): a factory returning
# (X, y, x_target, y_target) -> (PoisonedSet, flipped).
TARGETED = {
    "influence": influence_attack,
    "feature_collision": feature_collision,  # (fn, params, head, x, y, x_target, base, rng) on frozen features
}

# Targeted clean-label attacks whose victim is the configured model trained from scratch on the poisoned set,
# against a surrogate the attacker trained on the clean set (scenario.attack; `run_from_scratch`): a factory of
# `ratio` and its own arguments returning (logits_fn, params, x_train, y_train, x_target, adv, rng) -> PoisonedSet.
FROM_SCRATCH = {
    "gradient_matching": gradient_matching,  # Geiping et al. 2021, Witches' Brew
}

# Every filtering defense, one line each (scenario.filters).
FILTERS = {
    "spectral_signatures": spectral_signatures,
    "activation_clustering": activation_clustering,
}

__all__ = ["ATTACKS", "FILTERS", "FROM_SCRATCH", "TARGETED", "PoisonedSet", "attack_inputs", "modified_indices"]
