"""Privacy accounting for DP-SGD with dp-accounting: the event, both accountants, noise calibration.

Host-side only (NumPy/SciPy inside dp-accounting). DP-SGD with Poisson sampling
at rate q, Gaussian noise multiplier sigma and `steps` updates is the event
`SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)`
(Abadi et al. 2016; Mironov et al. 2019 for RDP; Koskela et al. 2020 and
Doroshenko et al. 2022 for PLD), under the add-or-remove-one neighbouring
relation (the relation Poisson sampling is analysed under).
"""

from __future__ import annotations

import enum
import logging
import math

from bench import lazy
from bench.errors import BenchError

dp_accounting = lazy.module("dp_accounting")  # imported on first use (bench/lazy.py)


def neighbouring():
    """The neighbouring relation every accountant here uses (a function: reading it imports dp-accounting)."""
    return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


class _RdpOrderNotice(logging.Filter):
    """dp-accounting's RDP accountant logs "_compute_log_a_frac failed to converge ... Excluding this order" for
    fractional orders (alpha < 2) at small noise, often twenty times per calibration. Excluding an order only
    drops one candidate bound from the minimum over orders; the epsilon stays a valid upper bound (and PLD is
    recorded next to it). So these lines are counted, not printed."""

    excluded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to converge" in record.getMessage():
            _RdpOrderNotice.excluded += 1
            return False
        return True


logging.getLogger("absl").addFilter(_RdpOrderNotice())


class Accountant(str, enum.Enum):
    RDP = "rdp"
    PLD = "pld"


def default_delta(n: int) -> float:
    """1/n rounded down to a power of ten, and at most 1e-5."""
    if n < 1:
        raise BenchError(f"need at least one training example to choose delta, got n={n}")
    return min(1e-5, 10.0 ** math.floor(math.log10(1.0 / n)))


def dpsgd_event(q: float, sigma: float, steps: int) -> dp_accounting.DpEvent:
    """The DpEvent of `steps` Poisson-sampled Gaussian mechanisms (DP-SGD)."""
    if not 0 < q <= 1:
        raise BenchError(f"sampling rate q must be in (0, 1], got {q}")
    if sigma < 0:
        raise BenchError(f"noise multiplier must be >= 0, got {sigma}")
    if int(steps) < 0:
        raise BenchError(f"steps must be >= 0, got {steps}")
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), int(steps))


def make_accountant(kind: str | Accountant) -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant with its library defaults (orders, discretisation)."""
    try:
        kind = Accountant(kind)
    except ValueError:
        raise BenchError(f"unknown accountant '{kind}'; use one of {[a.value for a in Accountant]}") from None
    if kind == Accountant.RDP:
        return dp_accounting.rdp.RdpAccountant(neighboring_relation=neighbouring())
    return dp_accounting.pld.PLDAccountant(neighboring_relation=neighbouring())


def epsilon(event: dp_accounting.DpEvent, delta: float, kind: str | Accountant) -> float:
    """Epsilon spent by `event` at `delta` under one accountant (inf when sigma is 0)."""
    if not 0 < delta < 1:
        raise BenchError(f"delta must be in (0, 1), got {delta}")
    return float(make_accountant(kind).compose(event).get_epsilon(delta))


def calibrate_sigma(target_epsilon: float, delta: float, q: float, steps: int,
                    kind: str | Accountant = Accountant.PLD, tol: float = 1e-3) -> float:
    """The smallest noise multiplier (within `tol`) whose epsilon under `kind` is at most `target_epsilon`.

    Uses `dp_accounting.calibrate_dp_mechanism` (Brent's method on the
    accountant). RDP is cheap and never below PLD, so PLD is searched only
    between a fraction of the RDP answer and the RDP answer itself. The result
    is nudged up until the accountant confirms it.
    """
    if target_epsilon <= 0:
        raise BenchError(f"target_epsilon must be > 0, got {target_epsilon}")
    make_accountant(kind)  # a clear error for an unknown accountant
    kind = Accountant(kind)

    def calibrate(k, bracket):
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant(k), lambda s: dpsgd_event(q, s, steps), target_epsilon, delta, bracket, tol=tol))

    sigma = calibrate(Accountant.RDP, dp_accounting.LowerEndpointAndGuess(0.05, 1.0))
    if kind == Accountant.PLD:
        sigma = max(sigma, tol)
        while epsilon(dpsgd_event(q, sigma, steps), delta, kind) > target_epsilon:  # RDP rounding, rare
            sigma *= 1.01
        low = 0.8 * sigma
        while epsilon(dpsgd_event(q, low, steps), delta, kind) <= target_epsilon:
            low *= 0.8
        sigma = calibrate(kind, dp_accounting.ExplicitBracketInterval(low, sigma))
    while epsilon(dpsgd_event(q, sigma, steps), delta, kind) > target_epsilon:
        sigma *= 1.0 + tol
    return sigma
