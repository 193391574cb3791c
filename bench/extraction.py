"""Functionally equivalent extraction of a one-hidden-layer ReLU network from queries.

After Jagielski, Carlini, Berthelot, Kurakin & Papernot 2020 ("High Accuracy and High Fidelity Extraction of
Neural Networks") and Carlini, Jagielski & Mironov 2020 ("Cryptanalytic Extraction of Neural Network
Models"). The victim is g(x) = W2 relu(W1 x + b1) + b2, seen through any function `query(X) -> (n, m)` that
is piecewise linear in x (for a softmax API: log p_i(x) - log p_0(x), the logits minus the first one).

1. **Critical points.** Along random lines x(t) = a + t v, g is piecewise linear; every kink is a point
   where one hidden unit switches (w_j . x + b_j = 0). Kinks are found where the slope between sample
   points changes, and located by intersecting the linear pieces on either side (bisecting when an
   interval holds more than one).
2. **Weights up to scale.** At a critical point the Jacobian of g jumps by a rank-1 matrix u_j w_j^T (u_j
   the unit's outgoing weights); finite-difference Jacobians on both sides give w_j (unit norm, oriented
   along the line) and b_j = -w_j . x*. Rows found twice are merged.
3. **Signs and the last layer.** relu(z) and relu(-z) switch on the same hyperplane, so each unit's side is
   chosen by least squares on the features [relu(z_j), relu(-z_j)]: the true side carries the weight; then
   the output layer is refitted on the chosen features.
The result computes the same function (up to the units' order and positive scale, which ReLU cannot see).
`weight_error` compares the recovered hyperplanes with planted ones after that alignment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class ExtractedNet(NamedTuple):
    w1: np.ndarray      # (h, d) unit-norm rows
    b1: np.ndarray      # (h,)
    w2: np.ndarray      # (m, h)
    b2: np.ndarray      # (m,)
    queries: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, np.float64).reshape(len(x), -1)
        return np.maximum(flat @ self.w1.T + self.b1, 0.0) @ self.w2.T + self.b2


def _jacobian(query, x, eps):
    d = len(x)
    points = np.vstack([x, x + eps * np.eye(d)])
    y = query(points)
    return ((y[1:] - y[0]) / eps).T  # (m, d)


def extract_relu_net(query: Callable[[np.ndarray], np.ndarray], d: int, rng: np.random.Generator, *,
                     lines: int = 40, samples: int = 400, span: float = 4.0, eps: float = 1e-3,
                     offset: float = 1e-2, merge_tol: float = 5e-2, fit_points: int | None = None,
                     centre: float = 0.5) -> ExtractedNet:
    """Extract g from `query` (float64 arrays (n, d) -> (n, m)); every call's inputs are counted."""
    spent = 0

    def ask(x):
        nonlocal spent
        spent += len(x)
        return np.asarray(query(np.asarray(x, np.float64)), np.float64)

    rows: list[tuple[np.ndarray, float]] = []
    ts = np.linspace(-span, span, samples)
    for _ in range(lines):
        a = centre + rng.uniform(-0.5, 0.5, d)
        v = rng.normal(size=d)
        v /= np.linalg.norm(v)
        y = ask(a + ts[:, None] * v)
        slopes = np.diff(y, axis=0) / np.diff(ts)[:, None]
        jump = np.linalg.norm(np.diff(slopes, axis=0), axis=1)
        finite = np.isfinite(jump)  # a saturated softmax answers 0 for some class: no log-ratio there
        if not finite.any():
            continue
        scale = 1e-3 * (1.0 + np.abs(slopes[np.isfinite(slopes).all(1)]).max(initial=0.0))
        for i in np.flatnonzero(finite & (jump > scale)):
            # a kink in (t_i, t_{i+2}): intersect the piece left of t_i+1 with the piece right of it
            lo, hi = ts[i], ts[i + 2]
            step = 1e-3 * (hi - lo)  # the pieces' slopes measured just outside the bracket
            y_out = ask(np.vstack([a + (lo - step) * v, a + (hi + step) * v]))
            t_star = _locate(ask, a, v, lo, hi, y[i], y[i + 2], (y[i] - y_out[0]) / step, (y_out[1] - y[i + 2]) / step)
            if t_star is None:
                continue
            x_star = a + t_star * v
            right = _jacobian(ask, x_star + offset * v, eps)
            jac = right - _jacobian(ask, x_star - offset * v, eps)
            if not np.isfinite(jac).all():
                continue
            u, s, vt = np.linalg.svd(jac)
            # one unit switching gives a clear rank-1 jump (float32 answers leave about 1e-4 of noise)
            if s[0] < 1e-2 * (1.0 + np.linalg.norm(right)) or (len(s) > 1 and s[1] > 1e-2 * s[0]):
                continue
            # the kink must be at x* itself, not merely near it: the same jump seen from 20x closer
            close = _jacobian(ask, x_star + 0.05 * offset * v, 0.1 * eps) - _jacobian(ask, x_star - 0.05 * offset * v,
                                                                                     0.1 * eps)
            if not np.isfinite(close).all() or np.linalg.norm(close - jac) > 0.05 * s[0]:
                continue
            w = vt[0] * np.sign(vt[0] @ v)  # oriented along the line's crossing
            rows.append((w, float(-w @ x_star)))
    hyperplanes = _merge(rows, merge_tol)
    if not hyperplanes:
        raise ValueError("no critical points found; widen `span` or add `lines`")
    w1 = np.array([w for w, _ in hyperplanes])
    b1 = np.array([b for _, b in hyperplanes])
    h = len(b1)
    n_fit = fit_points or 4 * (2 * h + 1)
    x_fit = centre + rng.uniform(-0.5, 0.5, (n_fit, d)) * 2 * span / np.sqrt(d)
    y_fit = ask(x_fit)
    usable = np.isfinite(y_fit).all(1)
    x_fit, y_fit = x_fit[usable], y_fit[usable]
    n_fit = len(y_fit)
    z = x_fit @ w1.T + b1
    both = np.hstack([np.maximum(z, 0), np.maximum(-z, 0), np.ones((n_fit, 1))])
    coef, *_ = np.linalg.lstsq(both, y_fit, rcond=None)
    flip = np.linalg.norm(coef[h:2 * h], axis=1) > np.linalg.norm(coef[:h], axis=1)
    w1[flip], b1[flip] = -w1[flip], -b1[flip]
    feats = np.hstack([np.maximum(x_fit @ w1.T + b1, 0), np.ones((n_fit, 1))])
    coef, *_ = np.linalg.lstsq(feats, y_fit, rcond=None)
    return ExtractedNet(w1, b1, coef[:h].T, coef[h], spent)


def _locate(ask, a, v, lo, hi, y_lo, y_hi, s_lo, s_hi, depth: int = 0):
    """The kink between lo and hi where the line through (lo, y_lo) with slope s_lo meets the one through
    (hi, y_hi) with slope s_hi; checked by one query, bisected when the interval holds more than one kink."""
    k = int(np.argmax(np.abs(s_hi - s_lo)))
    if abs(s_hi[k] - s_lo[k]) < 1e-12:
        return None
    t = (y_hi[k] - y_lo[k] + s_lo[k] * lo - s_hi[k] * hi) / (s_lo[k] - s_hi[k])
    if not lo <= t <= hi:
        return None
    y_t = ask((a + t * v)[None])[0]
    predicted = y_lo + s_lo * (t - lo)
    if np.allclose(y_t, predicted, rtol=1e-5, atol=1e-6 * (1 + np.abs(y_t).max())):
        return float(t)
    if depth > 20:
        return None
    mid = 0.5 * (lo + hi)  # more than one kink: split the interval and keep the left one
    h = 1e-3 * (hi - lo)
    y_mid, y_mid2 = ask(np.vstack([a + mid * v, a + (mid + h) * v]))
    return _locate(ask, a, v, lo, mid, y_lo, y_mid, s_lo, (y_mid2 - y_mid) / h, depth + 1)


def _merge(rows, tol):
    kept: list[tuple[np.ndarray, float]] = []
    for w, b in rows:
        if any(min(np.linalg.norm(w - w2) + abs(b - b2), np.linalg.norm(w + w2) + abs(b + b2)) < tol
               for w2, b2 in kept):
            continue
        kept.append((w, b))
    return kept


def weight_error(net: ExtractedNet, w1: np.ndarray, b1: np.ndarray) -> tuple[float, int]:
    """Largest absolute difference between the planted hyperplanes (rows of [w1, b1], normalised by ||w1_j||)
    and their best-matching recovered ones (order and positive scale are invisible to ReLU), and the number
    of planted units with no recovered match."""
    norms = np.linalg.norm(w1, axis=1, keepdims=True)
    planted = np.hstack([w1 / norms, b1[:, None] / norms])
    found = np.hstack([net.w1, net.b1[:, None]])
    worst, missing = 0.0, 0
    for row in planted:
        gap = np.abs(found - row).max(axis=1)
        best = float(gap.min()) if len(gap) else np.inf
        if best > 0.1:
            missing += 1
        else:
            worst = max(worst, best)
    return worst, missing


__all__ = ["ExtractedNet", "extract_relu_net", "weight_error"]
