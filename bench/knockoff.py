"""Knockoff Nets' query selection (Orekondy, Schiele & Fritz 2019, "Knockoff Nets: Stealing Functionality of
Black-Box Models", CVPR), and the query pools the theft scenario draws from.

The thief holds a pool of unlabelled-by-the-victim images, grouped into coarse *actions* (the pool's own
classes, or k-means clusters when it has none), and buys the victim's answers for `budget` of them:

- `random`: a uniform random sample of the pool (Knockoff's random strategy; Copycat's);
- `adaptive`: a gradient bandit over the actions (Sutton & Barto 2018, section 2.8). Each round draws
  `round_size` actions from pi = softmax(H), one not yet bought image of each drawn action, and asks the
  victim. Every answer y (probabilities, or the one-hot label of a label-only API) earns the sum of three
  rewards, each standardised by the running mean and standard deviation of its own values so far:
  certainty (the margin between y's two largest entries), diversity (sum_k max(0, y_k - mean of the last
  `window` answers' y_k)) and loss (the cross-entropy from y to the online copy's prediction before it
  trains on that answer). Then H moves by the averaged gradient-bandit step
  H += lr * mean_i (r_i - r_bar) (onehot(a_i) - pi), r_bar the running mean reward, and the online copy (a
  model the selection trains as it goes, `online_steps` Adam steps per round on everything bought so far)
  is updated. The bought images are returned in the order they were bought: budget B is the first B.

Every image the selection asks about goes through `query` (the API: 1 query = 1 input), once.
`augment` (random shifts and rotations), `kmeans` and `GradientBandit` are the parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

REWARDS = ("certainty", "diversity", "loss")


class GradientBandit:
    """Action preferences H, policy softmax(H) over the actions still available, the averaged
    gradient-bandit update with the running mean reward as baseline."""

    def __init__(self, n_actions: int, learning_rate: float):
        self.h = np.zeros(int(n_actions))
        self.lr = float(learning_rate)
        self.baseline, self.seen = 0.0, 0

    def probabilities(self, available: np.ndarray | None = None) -> np.ndarray:
        z = self.h - self.h.max()
        p = np.exp(z)
        if available is not None:
            p = np.where(available, p, 0.0)
        return p / p.sum()

    def update(self, actions: np.ndarray, rewards: np.ndarray, available: np.ndarray | None = None) -> None:
        actions, rewards = np.asarray(actions, int), np.asarray(rewards, float)
        if not len(actions):
            return
        pi = self.probabilities(available)
        advantage = rewards - self.baseline
        onehot = np.zeros((len(actions), len(self.h)))
        onehot[np.arange(len(actions)), actions] = 1.0
        self.h += self.lr * (advantage[:, None] * (onehot - pi[None])).mean(0)
        self.seen += len(rewards)
        self.baseline += (rewards.sum() - len(rewards) * self.baseline) / self.seen


class _Standardiser:
    """Running mean and standard deviation of each reward component (all values seen so far)."""

    def __init__(self, k: int):
        self.values: list[np.ndarray] = [np.zeros(0) for _ in range(k)]

    def __call__(self, parts: np.ndarray) -> np.ndarray:
        out = np.zeros_like(parts)
        for j in range(parts.shape[1]):
            self.values[j] = np.concatenate([self.values[j], parts[:, j]])
            sd = self.values[j].std()
            out[:, j] = (parts[:, j] - self.values[j].mean()) / (sd if sd > 1e-12 else 1.0)
        return out


def reward_parts(y: np.ndarray, y_copy: np.ndarray, recent: np.ndarray, window: int = 100) -> np.ndarray:
    """(n, 3): certainty, diversity and loss of the answers y (n, classes), given the online copy's
    probabilities y_copy before it trained on them and the answers bought before them (`recent`): each
    answer's diversity is against the mean of the `window` answers just before it."""
    top2 = np.sort(y, axis=1)[:, -2:]
    out = np.empty((len(y), 3))
    out[:, 0] = top2[:, 1] - top2[:, 0]
    past = list(np.asarray(recent)[-int(window):])
    for i, row in enumerate(y):
        mean = np.mean(past[-int(window):], axis=0) if past else np.zeros_like(row)
        out[i, 1] = np.maximum(row - mean, 0.0).sum()
        past.append(row)
    out[:, 2] = -(y * np.log(np.clip(y_copy, 1e-12, None))).sum(1)
    return out


class Selection(NamedTuple):
    order: np.ndarray       # pool indices in the order they were bought
    answers: np.ndarray     # the API's answers, in that order
    history: list           # per round: queries, policy, mean reward


def targets(answers: np.ndarray, num_classes: int) -> np.ndarray:
    """Float rows to train on: the scores, or the one-hot labels of a label-only API."""
    answers = np.asarray(answers)
    if answers.ndim == 1:
        return np.eye(num_classes, dtype=np.float32)[answers.astype(int)]
    return answers.astype(np.float32)


def random_selection(pool_size: int, budget: int, query: Callable, x_pool: np.ndarray,
                     rng: np.random.Generator) -> Selection:
    """A uniform sample of `budget` pool images without replacement, asked in one call."""
    if budget > pool_size:
        raise ValueError(f"a budget of {budget} exceeds the pool's {pool_size} images")
    order = rng.permutation(pool_size)[:budget]
    return Selection(order, np.asarray(query(x_pool[order])), [])


def adaptive_selection(x_pool: np.ndarray, actions: np.ndarray, budget: int, query: Callable, *, num_classes: int,
                       logits_fn, params, rng: np.random.Generator, round_size: int = 100,
                       learning_rate: float = 0.5, rewards: Sequence[str] = REWARDS, window: int = 100,
                       online_steps: int = 50, batch_size: int = 64, copy_learning_rate: float = 1e-3,
                       bought: tuple[np.ndarray, np.ndarray] | None = None) -> Selection:
    """Knockoff's adaptive strategy (module docstring). `bought`: (x, answers) asked before (synthetic seeds),
    which the online copy starts from; they are not part of the returned order."""
    import jax
    import optax

    unknown = [r for r in rewards if r not in REWARDS]
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; use some of {list(REWARDS)}")
    use = np.array([r in rewards for r in REWARDS])
    actions = np.asarray(actions, int)
    n_actions = int(actions.max()) + 1
    if budget > len(x_pool):
        raise ValueError(f"a budget of {budget} exceeds the pool's {len(x_pool)} images")
    queues = [list(rng.permutation(np.flatnonzero(actions == a))) for a in range(n_actions)]
    bandit, standardise = GradientBandit(n_actions, learning_rate), _Standardiser(len(REWARDS))
    tx = optax.adam(float(copy_learning_rate))
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(lambda p: optax.softmax_cross_entropy(logits_fn(p, x), y).mean())(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    predict = jax.jit(lambda p, x: jax.nn.softmax(logits_fn(p, x), axis=-1))
    seen_x = [] if bought is None else [np.asarray(bought[0])]
    seen_y = [] if bought is None else [targets(bought[1], num_classes)]
    order, answers, history = [], [], []
    r = 0
    while len(order) < budget:
        if seen_x:  # the online copy learns from everything bought so far
            xs, ys = np.concatenate(seen_x), np.concatenate(seen_y)
            for s in range(int(online_steps)):
                pick = rng.integers(0, len(xs), min(int(batch_size), len(xs)))
                params, state = step(params, state, xs[pick], ys[pick])
        available = np.array([len(q) > 0 for q in queues])
        pi = bandit.probabilities(available)
        n = min(int(round_size), budget - len(order))
        drawn, picked = [], []
        for a in rng.choice(n_actions, size=n, p=pi):
            if not queues[a]:  # exhausted within this round: the most probable action still holding images
                left = np.array([len(q) > 0 for q in queues])
                a = int(np.argmax(np.where(left, pi, -1.0)))
            drawn.append(int(a))
            picked.append(int(queues[a].pop()))
        x_new = x_pool[np.array(picked)]
        answer = np.asarray(query(x_new))
        y = targets(answer, num_classes)
        y_copy = np.asarray(predict(params, x_new), np.float64)
        recent = np.concatenate(seen_y)[-int(window):] if seen_y else np.zeros((0, num_classes))
        parts = standardise(reward_parts(y.astype(np.float64), y_copy, recent, window))
        reward = (parts * use).sum(1)
        bandit.update(np.array(drawn), reward, available)
        history.append({"round": r, "queries": len(order) + n, "policy": pi.tolist(),
                        "reward": float(reward.mean()),
                        "action_counts": np.bincount(drawn, minlength=n_actions).tolist()})
        order += picked
        answers.append(answer)
        seen_x.append(x_new)
        seen_y.append(y)
        r += 1
    return Selection(np.array(order, int), np.concatenate(answers), history)


def augment(x: np.ndarray, copies: int, rng: np.random.Generator, max_shift: float = 2.0,
            max_rotation: float = 15.0) -> np.ndarray:
    """`copies` randomly shifted (up to `max_shift` pixels each way) and rotated (up to `max_rotation`
    degrees) versions of every image of x (n, h, w, c), bilinear, zero outside: (copies * n, h, w, c)."""
    from scipy import ndimage

    n, h, w, c = x.shape
    out = np.empty((copies * n, h, w, c), np.float32)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for i in range(copies * n):
        angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
        shift = rng.uniform(-max_shift, max_shift, 2)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        offset = centre - rot @ (centre + shift)
        for ch in range(c):
            out[i, :, :, ch] = ndimage.affine_transform(x[i % n, :, :, ch], rot, offset=offset, order=1,
                                                        mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """Cluster labels (n,) of the flattened rows of x by Lloyd's algorithm from k-means++ seeding."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    centres = [flat[rng.integers(len(flat))]]
    d2 = ((flat - centres[0]) ** 2).sum(1)
    for _ in range(1, int(k)):
        centres.append(flat[rng.choice(len(flat), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(flat))])
        d2 = np.minimum(d2, ((flat - centres[-1]) ** 2).sum(1))
    centres = np.array(centres)
    for _ in range(iterations):
        dist = (flat ** 2).sum(1)[:, None] - 2 * flat @ centres.T + (centres ** 2).sum(1)[None]
        labels = dist.argmin(1)
        for j in range(len(centres)):
            if (labels == j).any():
                centres[j] = flat[labels == j].mean(0)
    return labels


__all__ = ["GradientBandit", "REWARDS", "Selection", "adaptive_selection", "augment", "kmeans", "random_selection",
           "reward_parts", "targets"]
