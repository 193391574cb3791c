"""Membership inference: loss threshold (Yeom et al. 2018) and LiRA (Carlini et al. 2022), and their metrics.

Scores are "higher means member". Model outputs are computed in jitted batches;
the statistics (Gaussian fits, ROC metrics) are host-side NumPy/SciPy, and the
metrics come from `jax_privacy.auditing.CanaryScoreAuditor` and scikit-learn.

- Loss threshold (Yeom et al. 2018, "Privacy Risk in Machine Learning"): the
  score is minus the cross-entropy loss; sweeping the threshold gives the ROC.
- LiRA (Carlini et al. 2022, "Membership Inference Attacks From First
  Principles", arXiv:2112.03570): the statistic is the logit-scaled confidence
  phi = log(p_y / (1 - p_y)). K shadow models are trained on random halves of
  the population; for each example, Gaussians are fitted to phi under the
  shadows that trained on it (IN) and those that did not (OUT).
  Online: log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out).
  Offline: the one-sided test against OUT only, log Phi((phi - mu_out) / s_out).
  Fixed variance: one standard deviation per side pooled over all examples
  (the paper's choice with few shadows).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bench import lazy
from bench.errors import BenchError

jax_privacy = lazy.module("jax_privacy")  # imported on first use (bench/lazy.py)

FPRS = {"tpr_at_0.1%_fpr": 0.001, "tpr_at_1%_fpr": 0.01}


@partial(jax.jit, static_argnames=("logits_fn",))
def _loss_and_confidence(logits_fn, params, x, y):
    logits = logits_fn(params, x).astype(jnp.float32)
    log_p = jax.nn.log_softmax(logits)
    log_p_y = jnp.take_along_axis(log_p, y[:, None], axis=1)[:, 0]
    # log(1 - p_y) as the logsumexp of the other classes' log-probabilities: stable when p_y is near 1
    others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, log_p)
    return -log_p_y, log_p_y - jax.nn.logsumexp(others, axis=1)


def loss_and_confidence(logits_fn, params, x: np.ndarray, y: np.ndarray, batch_size: int = 500):
    """Per-example cross-entropy loss and logit-scaled confidence phi = log(p_y / (1 - p_y)), as NumPy."""
    losses, confs = [], []
    for start in range(0, len(y), batch_size):
        loss, conf = _loss_and_confidence(logits_fn, params, x[start:start + batch_size], y[start:start + batch_size])
        losses.append(np.asarray(loss))
        confs.append(np.asarray(conf))
    if not losses:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(losses), np.concatenate(confs)


def attack_metrics(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, float]:
    """AUC, balanced accuracy (best threshold), and TPR at 0.1% and 1% FPR of a score (higher = member)."""
    member_scores, nonmember_scores = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if member_scores.size == 0 or nonmember_scores.size == 0:
        raise BenchError("membership metrics need at least one member and one non-member")
    from sklearn.metrics import roc_auc_score  # here: scikit-learn and scipy.stats would slow every CLI start

    auditor = jax_privacy.auditing.CanaryScoreAuditor(member_scores, nonmember_scores)
    labels = np.r_[np.ones(member_scores.size), np.zeros(nonmember_scores.size)]
    out = {"auc": float(roc_auc_score(labels, np.r_[member_scores, nonmember_scores])),
           "balanced_accuracy": float(auditor.max_accuracy(prevalence=0.5))}
    out.update({name: float(auditor.tpr_at_given_fpr(fpr)) for name, fpr in FPRS.items()})
    return out


def loss_threshold_scores(losses: np.ndarray) -> np.ndarray:
    """Yeom et al.: lower loss means member."""
    return -np.asarray(losses, float)


def _fit(values: np.ndarray, mask: np.ndarray, fixed_variance: bool):
    """Per-example mean and std of values[k, i] over the models k where mask[k, i]; pooled std if fixed or too few."""
    count = mask.sum(0)
    mean = np.where(count > 0, (values * mask).sum(0) / np.maximum(count, 1), np.nan)
    resid = np.where(mask, values - mean[None], 0.0)
    pooled = np.sqrt((resid ** 2).sum() / max(int(mask.sum()) - 1, 1))
    if fixed_variance:
        std = np.full(values.shape[1], pooled)
    else:
        std = np.where(count > 1, np.sqrt((resid ** 2).sum(0) / np.maximum(count - 1, 1)), pooled)
    return mean, np.maximum(std, 1e-6)


def lira_scores(target_conf: np.ndarray, shadow_conf: np.ndarray, shadow_in: np.ndarray, *, online: bool = True,
                fixed_variance: bool = False) -> np.ndarray:
    """LiRA scores for N examples from the target's phi (N,), the shadows' phi (K, N) and their membership (K, N).

    Examples no shadow held out (or, online, none held in) get the offline
    score, or -inf when no OUT model exists either.
    """
    target_conf = np.asarray(target_conf, float)
    shadow_conf, shadow_in = np.asarray(shadow_conf, float), np.asarray(shadow_in, bool)
    if shadow_conf.shape != shadow_in.shape or shadow_conf.shape[1:] != target_conf.shape:
        raise BenchError(f"LiRA shapes disagree: target {target_conf.shape}, shadows {shadow_conf.shape}, "
                         f"membership {shadow_in.shape}")
    from scipy import stats

    mu_out, s_out = _fit(shadow_conf, ~shadow_in, fixed_variance)
    offline = stats.norm.logcdf(target_conf, mu_out, s_out)
    if not online:
        return np.nan_to_num(offline, nan=-np.inf)
    mu_in, s_in = _fit(shadow_conf, shadow_in, fixed_variance)
    score = stats.norm.logpdf(target_conf, mu_in, s_in) - stats.norm.logpdf(target_conf, mu_out, s_out)
    return np.nan_to_num(np.where(np.isnan(score), offline, score), nan=-np.inf)


def random_halves(num_models: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(num_models, n) membership: each model holds exactly n // 2 examples, drawn independently per model.

    With an even num_models, model 2j+1 holds the complement of model 2j (as
    Carlini et al.'s code does), so every example is IN for exactly half the
    shadows when n is even.
    """
    if num_models < 1 or n < 2:
        raise BenchError(f"need at least one shadow model and two examples, got {num_models} and {n}")
    keep = np.zeros((num_models, n), bool)
    for k in range(0, num_models, 2):
        order = rng.permutation(n)
        keep[k, order[: n // 2]] = True
        if k + 1 < num_models:
            keep[k + 1, order[n // 2: 2 * (n // 2)]] = True
    return keep
