"""Certifiers. Each bound certifier is a factory of plain keyword hyper-parameters returning

    certify(network, params, x, y) -> margin_lower     (built with norm= and eps=, like an attack)

with margin_lower[i, j] a lower bound on logit_y - logit_j over the eps-ball
around x[i] intersected with [0, 1] (+inf at j = y); an example is certified
when every entry is > 0. `network` is a `bench.models.ConvNet` or a layer list
(`bench.certify.network`). Adding one: `bench/certify/<name>.py`,
`conf/certify/<name>.yaml`, one line in CERTIFIERS.

Randomized smoothing certifies a different classifier (the smoothed one) with a
probabilistic guarantee and returns radii, so it has its own calling
convention, `certify(logits_fn, params, x, key) -> SmoothingResult`, and lives
outside CERTIFIERS.
"""

from bench.certify.crown import crown
from bench.certify.evaluate import SoundnessFailure, evaluate_certified, evaluate_smoothing, soundness_check
from bench.certify.ibp import ibp
from bench.certify.network import network_from_model
from bench.certify.smoothing import randomized_smoothing

# Every registered bound certifier; the soundness contract test in tests/test_certify.py runs over this table.
CERTIFIERS = {
    "ibp": ibp,
    "crown": crown,
}

__all__ = ["CERTIFIERS", "SoundnessFailure", "crown", "evaluate_certified", "evaluate_smoothing", "ibp",
           "network_from_model", "randomized_smoothing", "soundness_check"]
