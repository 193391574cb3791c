"""Attacks. Each is a factory of plain keyword hyper-parameters returning

    attack(logits_fn, params, x, y, key) -> x_adv

jitted inside, with x_adv in the threat model (eps-ball and [0, 1]) and the
per-example best adversarial kept. Adding one: `bench/attacks/<name>.py`,
`conf/attack/<name>.yaml`, and one line in ATTACKS below.

Each factory returns a `bench.contracts.Attack`: the function and its
`Capabilities` (gradient-free, classes its loss needs, EOT draws, the stronger
version the convergence check runs), which the evaluator reads. A norm an attack
is not defined for raises `bench.threat.UnsupportedNorm`. A stochastic model sets
`logits_fn.stochastic = True` and takes (params, x, key); every attack draws
through `bench.threat.apply_logits`. See ARCHITECTURE.md.
"""

from bench.attacks.apgd import apgd_ce, apgd_dlr
from bench.attacks.apgd_t import apgd_t
from bench.attacks.cw import cw
from bench.attacks.eot import eot_pgd
from bench.attacks.fgsm import fgsm
from bench.attacks.pgd import pgd
from bench.attacks.square import square
from bench.threat import Norm, ThreatModelViolation, check_threat_model

# Every registered attack; the contract test in tests/test_attacks.py runs over this table.
ATTACKS = {
    "fgsm": fgsm,
    "pgd": pgd,
    "apgd_ce": apgd_ce,
    "apgd_dlr": apgd_dlr,
    "apgd_t": apgd_t,
    "square": square,
    "cw": cw,
    "eot_pgd": eot_pgd,
}

__all__ = ["ATTACKS", "Norm", "ThreatModelViolation", "apgd_ce", "apgd_dlr", "apgd_t", "check_threat_model", "cw",
           "fgsm", "pgd", "square"]
