"""Square attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV).

Score-based and gradient-free: random search over square-shaped updates, a
candidate kept only if it lowers the margin z_y - max_{j!=y} z_j. The side of
the square shrinks with the iteration as in the paper (p_init = 0.8, halved at
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000; counted in raw
queries, as AutoAttack's standard version does). Only forward passes of the
model are used. One iteration is one query per example; the loop stops once
every example is misclassified.

- L-inf: start from vertical stripes of +-eps; a square window of every channel
  is set to a random +-eps (flipped when that would change nothing).
- L2: start from +-1 stripes scaled to norm eps; each step moves the
  perturbation mass of two random windows, plus any unused budget, into a new
  centred pattern (1/(d+1)^2 in the Chebyshev distance d to the window centre)
  with random sign per channel in the first window. This is a simpler version of
  the paper's L2 update (which adds the new pattern to the old one); the search
  keeps the same shape: norm ~ eps, mass concentrated in squares.

An L-inf query changes one window of the current point. A conv net of bench.models carries
`logits_fn.window_forward` (bench/window.py): once the square is small, a query keeps the last conv map of the
current point and recomputes only the block its window reaches (on cnn_small at 28x28, from query 250 of 5,000
with the rescaled schedule). The search is the same, up to float rounding in the margins.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bench.threat import broadcast_rows, Norm, apply_logits, check_eps, flat_norm, is_stochastic, margin, parse_norm, project
from bench.contracts import Attack, Capabilities
from bench.errors import BenchError

_HALVINGS = jnp.asarray([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])


def _row_sums(v):
    """Each example's sum over its pixels, as a matmul with a vector of ones. Inside the search loop XLA:CPU runs
    `jnp.sum(v, axis=(1, 2, 3))` at a small fraction of its matmul rate: at batch 100 of 28x28 images it was 0.6 of
    the 0.7 ms that one iteration costs on top of the model's forward pass (a probe with a linear model)."""
    flat = v.reshape(v.shape[0], -1)
    return flat @ jnp.ones((flat.shape[1],), v.dtype)


def _row_norms(v):
    return jnp.sqrt(_row_sums(v * v))


def _fraction(i, p_init):
    """Share of the image a square covers at iteration i."""
    return p_init / 2.0 ** jnp.sum(i > _HALVINGS)



def _in_halves(fn, *batches):
    """fn(*batches); on the CPU, from 256 examples up, as two independent calls on the halves of the batch (split
    at (n + 1) // 2), which XLA runs side by side (Square on 352 examples: 2.08 -> 1.90 s in one probe; at 88 it
    was slower)."""
    n = batches[0].shape[0]
    if jax.default_backend() != "cpu" or n < 256:
        return fn(*batches)
    m = (n + 1) // 2
    return jnp.concatenate([fn(*(b[:m] for b in batches)), fn(*(b[m:] for b in batches))])


def _logits_in_halves(logits_fn, params, x, key):
    """The logits of x, in halves on the CPU from 256 examples up (`_in_halves`; not for a stochastic model)."""
    if is_stochastic(logits_fn):
        return apply_logits(logits_fn, params, x, key)
    return _in_halves(lambda part: logits_fn(params, part), x)


def _window_sides(logits_fn, norm: Norm, image_hw) -> tuple[int, ...]:
    """The window sides, largest first, at which the search switches to the model's `window_forward`
    (bench/window.py): once the square is at most that wide, a query recomputes only the block of the last conv
    map that the window reaches. At most two: the largest side whose block is at most half the map, and the largest
    side with the smallest block (the late queries). On cnn_small at 28x28: 7 (a 4x4 block of the 7x7 map) and 3
    (3x3). None for a model without a window forward, a stochastic model, or the L2 search (whose projection
    changes the whole image); each side is one more loop to compile."""
    forward = getattr(logits_fn, "window_forward", None)
    if forward is None or norm != Norm.LINF or is_stochastic(logits_fn):
        return ()
    largest = {}  # block area -> the largest side with that block
    for side in range(1, min(image_hw)):
        (block_h, map_h), (block_w, map_w) = forward.block(image_hw, side)
        if 2 * block_h * block_w > map_h * map_w:
            break
        largest[block_h * block_w] = side
    if not largest:
        return ()
    return tuple(sorted({largest[max(largest)], largest[min(largest)]}, reverse=True))


@partial(jax.jit, static_argnames=("logits_fn", "norm", "n_queries", "rescale_schedule", "window_forward"))
def square_core(logits_fn, params, x, y, key, eps, p_init, *, norm: Norm, n_queries: int,
                rescale_schedule: bool = False, window_forward: bool = True):
    """The jitted random search; returns x_adv (misclassified where found, else the lowest-margin point).

    With `window_forward` (and a model that has one, see `_window_sides`), the queries of small squares
    recompute only what the window reaches; the search (its windows, signs and acceptances) is
    the same, up to float rounding in the margins.
    """
    n, h, w, c = x.shape
    rows = jnp.arange(h).reshape(1, h, 1, 1)
    cols = jnp.arange(w).reshape(1, 1, w, 1)
    sides = _window_sides(logits_fn, norm, (h, w)) if window_forward else ()

    def score(x_adv, k):
        logits = _logits_in_halves(logits_fn, params, x_adv, k)
        return -margin(logits, y), jnp.argmax(logits, -1) != y  # z_y - max_{j!=y} z_j, lower is better

    k_init, k_loop = jax.random.split(key)
    stripes = jax.random.rademacher(k_init, (n, 1, w, c), dtype=x.dtype)
    if norm == Norm.LINF:
        delta = eps * jnp.broadcast_to(stripes, x.shape)
    else:
        delta = jnp.broadcast_to(stripes, x.shape)
        delta = delta * broadcast_rows(eps / jnp.maximum(flat_norm(delta, norm), 1e-12), x)
    x_best = project(x, x + delta, norm, eps)
    m_best, found = score(x_best, jax.random.fold_in(k_loop, 0))

    def window(k, size):
        k_r, k_c = jax.random.split(k)
        top = jax.random.randint(k_r, (n, 1, 1, 1), 0, h - size + 1)
        left = jax.random.randint(k_c, (n, 1, 1, 1), 0, w - size + 1)
        inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
        centre = (top + (size - 1) / 2.0, left + (size - 1) / 2.0)
        dist = jnp.maximum(jnp.abs(rows - centre[0]), jnp.abs(cols - centre[1]))
        return inside, dist, (top[:, 0, 0, 0], left[:, 0, 0, 0])  # corners as (n,) for the window forward

    def candidate_linf(k, size, x_cur):
        k_w, k_s = jax.random.split(k)
        inside, _, corner = window(k_w, size)
        signs = jax.random.rademacher(k_s, (n, 1, 1, c), dtype=x.dtype)
        delta = x_cur - x
        first = jnp.clip(x + jnp.where(inside, eps * signs, delta), 0.0, 1.0)
        unchanged = _row_sums(jnp.abs(first - x_cur)) < 1e-7
        flipped = jnp.clip(x + jnp.where(inside, -eps * signs, delta), 0.0, 1.0)
        return jnp.where(broadcast_rows(unchanged, x), flipped, first), corner

    def candidate_l2(k, size, x_cur):
        k_1, k_2, k_s = jax.random.split(k, 3)
        inside, dist, _ = window(k_1, size)
        other, _, _ = window(k_2, size)
        delta = x_cur - x
        both = inside | other
        spare = jnp.maximum(eps ** 2 - _row_sums(delta * delta), 0.0)
        mass = jnp.sqrt(_row_sums(jnp.where(both, delta, 0.0) ** 2) + spare)
        pattern = jnp.where(inside, 1.0 / (dist + 1.0) ** 2, 0.0) * jax.random.rademacher(k_s, (n, 1, 1, c), x.dtype)
        pattern = pattern * broadcast_rows(mass / jnp.maximum(_row_norms(pattern), 1e-12), x)
        return project(x, x + jnp.where(both, 0.0, delta) + pattern, norm, eps), None

    candidate = candidate_linf if norm == Norm.LINF else candidate_l2

    def square_side(i):
        # the schedule's iteration: raw (AutoAttack), or stretched to 10,000 over the budget (`rescale_schedule`)
        it = (i * 10000) // n_queries if rescale_schedule else i
        size = jnp.sqrt(_fraction(it, p_init) * h * w).round().astype(jnp.int32)
        return jnp.clip(size, 1, max(h - 1, 1))

    def search(state, side, until):
        """Queries while the square is wider than `until` (to the end: None), each with the whole forward pass
        (side None) or the window forward for squares at most `side` wide. The state is (i, x_cur, m_cur, found,
        the window forward's features of x_cur or None)."""
        forward = logits_fn.window_forward if side else None

        def cond(s):
            going = (s[0] < n_queries) & ~jnp.all(s[3])
            return going if until is None else going & (square_side(s[0]) > until)

        def body(s):
            i, x_cur, m_cur, found, feats = s
            k = jax.random.fold_in(k_loop, i + 1)
            x_new, corner = candidate(k, square_side(i), x_cur)
            if forward is None:
                m_new, adv_new = score(x_new, jax.random.fold_in(k, 1))
            else:
                feats_new = _in_halves(lambda *a: forward.update(params, *a, side), x_new, feats, *corner)
                logits = _in_halves(lambda f: forward.head(params, f), feats_new)
                m_new, adv_new = -margin(logits, y), jnp.argmax(logits, -1) != y
            accept = ~found & (m_new < m_cur)
            x_cur = jnp.where(broadcast_rows(accept, x), x_new, x_cur)
            if forward is not None:
                feats = jnp.where(broadcast_rows(accept, feats), feats_new, feats)
            return i + 1, x_cur, jnp.where(accept, m_new, m_cur), found | (accept & adv_new), feats

        return jax.lax.while_loop(cond, body, state)

    state = search((0, x_best, m_best, found, None), None, sides[0] if sides else None)
    if sides:  # the current point's margin from here on comes from the window forward's own pass
        i, x_cur, _, found, _ = state
        feats = _in_halves(lambda part: logits_fn.window_forward.features(params, part), x_cur)
        m_cur = -margin(_in_halves(lambda f: logits_fn.window_forward.head(params, f), feats), y)
        state = (i, x_cur, m_cur, found, feats)
    for side, until in zip(sides, sides[1:] + (None,)):
        state = search(state, side, until)
    return state[1]


def square(*, norm: str = "linf", eps: float, n_queries: int = 5000, p_init: float = 0.8,
           rescale_schedule: bool = False):
    """Square attack `(logits_fn, params, x, y, key) -> x_adv`; no gradients.

    Args:
      norm: "linf" or "l2".
      eps: radius of the threat model in [0, 1] pixel units.
      n_queries: query budget per example (5000 in AutoAttack).
      p_init: initial share of pixels a square covers (0.8 in AutoAttack).
      rescale_schedule: halve the square at the schedule's iterations counted out of 10,000 over n_queries (so
        at 5,000 queries twice as early), as the Square paper's code can and torchattacks' AutoAttack does; off
        in AutoAttack's standard version (raw iterations), and by default.
    """
    norm = parse_norm(norm)
    eps = check_eps(norm, eps)
    if int(n_queries) < 1:
        raise BenchError(f"Square needs n_queries >= 1, got {n_queries}")
    if not 0 < float(p_init) <= 1:
        raise BenchError(f"Square needs 0 < p_init <= 1, got {p_init}")
    static = dict(norm=norm, n_queries=int(n_queries), rescale_schedule=bool(rescale_schedule))

    def attack(logits_fn, params, x, y, key):
        return square_core(logits_fn, params, x, y, key, jnp.float32(eps), jnp.float32(p_init), **static)

    return Attack(attack, Capabilities(gradient_free=True, batch_scale=8))
