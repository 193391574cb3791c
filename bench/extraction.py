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
                     lines: int = 24, samples: int = 400, span: float = 4.0, eps: float = 1e-3,
                     offset: float = 0.5, merge_tol: float = 0.1, fit_points: int | None = None,
                     centre: float = 0.5, refine: int = 16, depth: int = 4, patience: int | None = None,
                     min_share: float = 0.25) -> ExtractedNet:
    """Extract g from `query` (float64 arrays (n, d) -> (n, m)); every call's inputs are counted.

    `lines` random lines x(t) = a + t v (a uniform in the cube around `centre`, v a random unit direction),
    `samples` points each over t in [-span, span]; `offset`: the Jacobians are taken this fraction of the
    local sample spacing before and after a critical point; `refine`: points of the finer grid a cluster of
    kinks is resampled on, at most `depth` times; `patience`: stop after that many lines in a row found no
    new unit (None: all lines); `min_share`: a hyperplane seen on fewer than this share of the lines the
    typical unit was seen on (and on at least 2) is dropped as spurious (an estimate spoilt by a second kink)."""
    spent = 0

    def ask(x):
        nonlocal spent
        spent += len(x)
        return np.asarray(query(np.asarray(x, np.float64)), np.float64)

    estimates: list[tuple[np.ndarray, float]] = []
    ts = np.linspace(-span, span, samples)
    quiet = 0
    for _ in range(lines):
        a = centre + rng.uniform(-0.5, 0.5, d)
        v = rng.normal(size=d)
        v /= np.linalg.norm(v)
        y = ask(a + ts[:, None] * v)
        before = len(_merge(estimates, merge_tol))
        for t_star, gap in _kinks(ask, a, v, ts, y, None, refine, depth):
            row = _hyperplane(ask, a, v, t_star, offset * gap, eps)
            if row is not None:
                estimates.append(row)
        quiet = quiet + 1 if len(_merge(estimates, merge_tol)) == before else 0
        if patience is not None and quiet >= patience:
            break
    clusters = _merge(estimates, merge_tol)
    support = np.array([n for _, _, n in clusters])
    seen = support[support >= 2]
    if len(seen) and np.median(seen) >= 4:  # every line crosses every unit: a real one is seen on many lines
        floor = max(2.0, min_share * float(np.median(seen)))
        clusters = [c for c in clusters if c[2] >= floor]
    if not clusters:
        raise ValueError("no critical points found; widen `span` or add `lines`")
    w1 = np.array([w for w, _, _ in clusters])
    b1 = np.array([b for _, b, _ in clusters])
    h = len(b1)
    n_fit = fit_points or 8 * (2 * h + 1)
    x_fit = centre + rng.uniform(-0.5, 0.5, (n_fit, d))
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


def _kinks(ask, a, v, ts, y, noise, refine, depth):
    """Critical points (t, free gap) on the line a + t v from its samples y at ts: every kink whose
    neighbouring sample intervals are linear, as the intersection of the linear pieces on either side,
    checked by one query; clusters of kinks resampled on a finer grid. `gap`: the sample spacing, within
    which no other kink lies on either side of t."""
    ok = np.isfinite(y).all(1)  # a saturated softmax answers 0 for some class: no log-ratio there
    h = ts[1] - ts[0]
    slopes = np.diff(y, axis=0) / h
    change = np.linalg.norm(np.diff(slopes, axis=0), axis=1)   # change[i]: at ts[i + 1]
    valid = ok[:-2] & ok[1:-1] & ok[2:]
    if not valid.any():
        return []
    if noise is None:  # the answers' noise, from the typical (kink-free) slope change
        noise = max(float(np.median(change[valid])) * h, 1e-12)
    scale = 1.0 + np.abs(y[ok]).max()
    threshold = 30 * noise / h + 1e-9 * scale / h
    significant = valid & (change > threshold)
    found = []
    i = 0
    n = len(change)
    while i < n:
        if not significant[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and significant[j + 1]:
            j += 1
        # the kinks lie in (ts[i], ts[j + 2]); intervals i and j + 1 are linear pieces
        lo, hi = i, j + 2
        left_slope, right_slope = slopes[i], slopes[j + 1]
        if j - i <= 1 and lo >= 0 and hi < len(ts):
            t = _intersect(ts[i + 1], y[i + 1], left_slope, ts[j + 1], y[j + 1], right_slope)
            if t is not None and ts[i + 1] - 1e-9 <= t <= ts[j + 1] + 1e-9:
                y_t = ask((a + t * v)[None])[0]
                predicted = y[i + 1] + left_slope * (t - ts[i + 1])
                if np.isfinite(y_t).all() and np.abs(y_t - predicted).max() < 20 * noise + 1e-9 * scale:
                    found.append((float(t), float(h)))
                    i = j + 1
                    continue
        if depth > 0:  # more than one kink (or an unclear one): resample the stretch on a finer grid
            fine = np.linspace(ts[i], ts[min(j + 2, len(ts) - 1)], refine)
            y_fine = ask(a + fine[:, None] * v)
            found += _kinks(ask, a, v, fine, y_fine, noise, refine, depth - 1)
        i = j + 1
    return found


def _intersect(t0, y0, s0, t1, y1, s1):
    """Where y0 + s0 (t - t0) meets y1 + s1 (t - t1), in least squares over the outputs; None if parallel."""
    ds = s0 - s1
    denom = float(ds @ ds)
    if denom < 1e-20:
        return None
    return float(ds @ (y1 - y0 + s0 * t0 - s1 * t1) / denom)


def _hyperplane(ask, a, v, t, off, eps):
    """The switching unit's hyperplane (unit-norm w, b) at the critical point a + t v, from the rank-1 jump
    of the Jacobian between off before and off after it; None when the jump is not clearly rank 1."""
    x_star = a + t * v
    eps = min(eps, 0.1 * off)  # the coordinate steps must not reach the hyperplane the points straddle
    right = _jacobian(ask, x_star + off * v, eps)
    jump = right - _jacobian(ask, x_star - off * v, eps)
    if not np.isfinite(jump).all():
        return None
    u, s, vt = np.linalg.svd(jump)
    if s[0] < 1e-6 * (1.0 + np.linalg.norm(right)) or (len(s) > 1 and s[1] > 0.1 * s[0]):
        return None
    w = vt[0] * np.sign(vt[0] @ v)  # oriented along the line's crossing
    return w, float(-w @ x_star)


def _merge(rows, tol):
    """Estimates of the same hyperplane (up to sign) grouped: [(w, b, how many)], each group's row the
    coordinate-wise median of its sign-aligned members (robust to the odd estimate spoilt by a second kink
    close by), normalised to a unit-norm w."""
    groups: list[list[np.ndarray]] = []
    centres: list[np.ndarray] = []
    for w, b in rows:
        f = np.concatenate([w, [b]])
        best, gap, sign = None, tol, 1.0
        for k, c in enumerate(centres):
            for sg in (1.0, -1.0):
                g = np.linalg.norm(sg * f - c)
                if g < gap:
                    best, gap, sign = k, g, sg
        if best is None:
            groups.append([f])
            centres.append(f)
        else:
            groups[best].append(sign * f)
            c = np.median(groups[best], axis=0)
            centres[best] = c / np.linalg.norm(c[:-1])
    return [(c[:-1], float(c[-1]), len(g)) for c, g in zip(centres, groups)]


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
