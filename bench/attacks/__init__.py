"""Attacks. Each is a factory of plain keyword hyper-parameters returning

    attack(logits_fn, params, x, y, key) -> x_adv

jitted inside, with x_adv in the threat model (eps-ball and [0, 1]) and the
per-example best adversarial kept. Adding one: `bench/attacks/<name>.py`,
`conf/attack/<name>.yaml`, and one line in ATTACKS below.
"""

from bench.attacks.fgsm import fgsm
from bench.attacks.pgd import pgd
from bench.attacks.threat import Norm, ThreatModelViolation, check_threat_model

# Every registered attack; the contract test in tests/test_attacks.py runs over this table.
ATTACKS = {
    "fgsm": fgsm,
    "pgd": pgd,
}

__all__ = ["ATTACKS", "Norm", "ThreatModelViolation", "check_threat_model", "fgsm", "pgd"]
