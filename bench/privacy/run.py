"""The `privacy` scenario: train (non-private or DP-SGD), then attack and audit the training data's privacy.

Pipeline (`run_privacy`, called by `bench.__main__` when scenario.name is privacy):
1. data; the last `audit.canaries` training images become canaries (mislabeled,
   each trained on with probability 1/2) and are otherwise never used;
2. train the target on the rest of the training split plus the included
   canaries: `method=none` with the plain loop, `method=dp_sgd` with the same
   loop and the DP-SGD hooks of `bench.defenses.dp_sgd`;
3. records: test accuracy; for DP, epsilon under the RDP and PLD accountants
   for the steps actually taken, with delta, sigma, q, steps, clip norm and the
   neighbouring relation; loss-threshold and LiRA (offline, online) membership
   inference on `membership.n_members` training examples vs the test split;
   the canary audit's epsilon lower bounds, checked against the accountant.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import jax
import numpy as np
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from bench import evaluate, models, records, train
from bench.defenses import dp_sgd
from bench.errors import BenchError
from bench.privacy import accounting, audit, membership, pate, shadow

METHODS = ("none", "dp_sgd", "pate")


def _row(evaluator, metric, value, n, seconds=0.0, **extra):
    return dict(evaluator=evaluator, norm="none", eps=0.0, metric=metric, value=float(value), n=int(n),
                seconds=float(seconds), **extra)


def run_privacy(cfg: DictConfig, run_dir: Path, choices: dict):
    """One privacy experiment; returns its records frame (also written to run_dir)."""
    started = time.perf_counter()
    sc = cfg.scenario
    method = str(sc.method)
    if method not in METHODS:
        raise BenchError(f"unknown scenario.method '{method}'; use one of {list(METHODS)}")
    key = jax.random.key(cfg.seed)
    init_key, train_key, noise_key, shadow_key = jax.random.split(key, 4)
    rng = np.random.default_rng(cfg.seed)

    data = instantiate(cfg.dataset)
    model = instantiate(cfg.model, num_classes=data.num_classes, mean=data.mean, std=data.std)
    logits_fn = models.make_logits_fn(model)
    # A defense whose factory takes `model` (certified training) gets the Flax model, as in bench.__main__.run.
    wants_model = "model" in inspect.signature(get_object(cfg.defense._target_)).parameters
    objective = instantiate(cfg.defense, _partial_=True)(logits_fn=logits_fn, **({"model": model} if wants_model else {}))
    init_params = lambda k: models.init_params(model, k, data.image_shape)

    x_train, y_train = data.x_train, data.y_train
    n_canaries = int(sc.audit.canaries)
    canaries = None
    if n_canaries > 0:
        if n_canaries >= len(y_train) // 2:
            raise BenchError(f"audit.canaries={n_canaries} leaves too few of the {len(y_train)} training images")
        canaries = audit.make_canaries(x_train[-n_canaries:], y_train[-n_canaries:], data.num_classes, rng)
        x_train, y_train = x_train[:-n_canaries], y_train[:-n_canaries]
    x_fit = x_train if canaries is None else np.concatenate([x_train, canaries.x[canaries.included]])
    y_fit = y_train if canaries is None else np.concatenate([y_train, canaries.y[canaries.included]])

    t = cfg.train
    results = []
    if method == "dp_sgd":
        d = sc.dp
        plan = dp_sgd.plan(len(y_fit), clip_norm=d.clip_norm,
                           batch_size=None if d.sampling_rate is not None else (d.batch_size or t.batch_size),
                           sampling_rate=d.sampling_rate,
                           epochs=None if d.steps is not None else (d.epochs or t.epochs), steps=d.steps,
                           noise_multiplier=d.noise_multiplier,
                           target_epsilon=None if d.noise_multiplier is not None else d.target_epsilon, delta=d.delta,
                           accountant=d.accountant)
        batch_size = max(1, round(plan.expected_batch_size))
        base = lambda: train.make_optimizer(t.optimizer, t.learning_rate, t.schedule, plan.steps, t.momentum,
                                            t.weight_decay)
        make_optimizer = lambda k: dp_sgd.dp_optimizer(base(), clip_norm=plan.clip_norm,
                                                       noise_multiplier=plan.noise_multiplier,
                                                       expected_batch_size=plan.expected_batch_size, key=k)
        grad_fn = dp_sgd.clipped_value_and_grad(plan.clip_norm, d.get("microbatch_size", 1))
        sampler = dp_sgd.PoissonSampler(len(y_fit), plan.q, plan.steps, plan.steps_per_epoch, d.pad_multiple)
        epochs = plan.epochs
    else:
        batch_size, epochs = int(t.batch_size), int(t.epochs)
        grad_fn = sampler = None

    x_test, y_test = data.x_test, data.y_test
    if method == "pate":  # teachers on the private data label a public split (the first half of the test split)
        p = sc.pate
        if int(sc.membership.lira.shadows) > 0:
            raise BenchError("LiRA shadows of a PATE student are not implemented; "
                             "set scenario.membership.lira.shadows=0")
        n_public = min(int(p.queries), len(y_test) // 2)
        x_public, x_test, y_test = x_test[:n_public], x_test[n_public:], y_test[n_public:]
        keep = pate.teacher_partitions(len(y_fit), int(p.teachers), rng)
        per_teacher = int(keep[0].sum())
        teacher_batch = min(batch_size, per_teacher)
        teacher_total = int(p.teacher_epochs) * (per_teacher // teacher_batch)
        teachers = shadow.train_shadows(
            objective, init_params,
            lambda k: train.make_optimizer(t.optimizer, t.learning_rate, t.schedule, teacher_total, t.momentum,
                                           t.weight_decay),
            x_fit, y_fit, keep, epochs=int(p.teacher_epochs), batch_size=teacher_batch, key=shadow_key,
            progress=cfg.progress)
        votes = pate.teacher_votes(logits_fn, teachers, x_public, data.num_classes)
        teacher_acc = float(np.mean(np.argmax(votes, 1) == data.y_test[:n_public]))
        y_public = pate.gnmax(votes, float(p.sigma), rng)
        results.append(_row("pate", "teacher_ensemble_accuracy", teacher_acc, n_public))
        results.append(_row("pate", "label_accuracy", np.mean(y_public == data.y_test[:n_public]), n_public))
        x_student, y_student = x_public, y_public
        batch_size = min(batch_size, n_public)
    else:
        x_student, y_student = x_fit, y_fit
    if method != "dp_sgd":
        total = epochs * train.steps_per_epoch(len(y_student), batch_size)
        make_optimizer = lambda k: train.make_optimizer(t.optimizer, t.learning_rate, t.schedule, total, t.momentum,
                                                        t.weight_decay)

    params, history = train.train(objective, init_params(init_key), make_optimizer(noise_key), x_student, y_student,
                                  epochs=epochs, batch_size=batch_size, key=train_key, progress=cfg.progress,
                                  grad_fn=grad_fn, sampler=sampler)
    models.save_params(run_dir / "params.msgpack", params)
    train_seconds = time.perf_counter() - started
    results.append(_row("train", "seconds", train_seconds, len(y_fit), train_seconds))
    results.append(_row("utility", "test_accuracy", evaluate.accuracy(logits_fn, params, x_test, y_test),
                        len(y_test)))

    epsilon_spent = float("inf")
    delta = accounting.default_delta(len(y_fit))
    relation = accounting.NEIGHBOURING.name.lower()
    if method == "dp_sgd":
        steps, delta = sampler.steps_taken, plan.delta
        event = accounting.dpsgd_event(plan.q, plan.noise_multiplier, steps)
        facts = (("delta", delta), ("noise_multiplier", plan.noise_multiplier), ("sampling_rate", plan.q),
                 ("steps", steps), ("clip_norm", plan.clip_norm))
    elif method == "pate":
        delta = accounting.default_delta(len(y_fit)) if sc.pate.delta is None else float(sc.pate.delta)
        event = pate.gnmax_event(float(sc.pate.sigma), n_public)
        facts = (("delta", delta), ("gnmax_sigma", float(sc.pate.sigma)), ("queries", n_public),
                 ("teachers", int(sc.pate.teachers)))
    if method != "none":
        eps = {kind: accounting.epsilon(event, delta, kind) for kind in ("rdp", "pld")}
        epsilon_spent = min(eps.values())
        for kind, value in eps.items():
            for metric, v in (("epsilon", value), *facts):
                results.append(_row(f"accountant_{kind}", metric, v, len(y_fit), relation=relation))

    # Membership inference: n_members training examples (never canaries) vs the test split.
    m = sc.membership
    member_idx = rng.choice(len(y_train), min(int(m.n_members), len(y_train)), replace=False)
    losses, conf = membership.loss_and_confidence(logits_fn, params, np.concatenate([x_train, x_test]),
                                                  np.concatenate([y_train, y_test]))
    is_eval_member = np.zeros(len(losses), bool)
    is_eval_member[member_idx] = True
    nonmember = np.arange(len(y_train), len(losses))
    loss_scores = membership.loss_threshold_scores(losses)
    for metric, v in membership.attack_metrics(loss_scores[member_idx], loss_scores[nonmember]).items():
        results.append(_row("loss_threshold", metric, v, len(member_idx) + len(nonmember)))

    if int(m.lira.shadows) > 0:
        lira_started = time.perf_counter()
        x_pop, y_pop = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
        keep = membership.random_halves(int(m.lira.shadows), len(y_pop), rng)
        stacked = shadow.train_shadows(objective, init_params, make_optimizer, x_pop, y_pop, keep,
                                       epochs=int(m.lira.epochs or epochs), batch_size=batch_size, key=shadow_key,
                                       grad_fn=grad_fn, progress=cfg.progress)
        shadow_conf = shadow.shadow_confidences(logits_fn, stacked, x_pop, y_pop)
        lira_seconds = time.perf_counter() - lira_started
        for online in (False, True):
            scores = membership.lira_scores(conf, shadow_conf, keep, online=online,
                                            fixed_variance=bool(m.lira.fixed_variance))
            name = "lira_online" if online else "lira_offline"
            for metric, v in membership.attack_metrics(scores[member_idx], scores[nonmember]).items():
                results.append(_row(name, metric, v, len(member_idx) + len(nonmember), lira_seconds,
                                    shadows=int(m.lira.shadows)))

    violation = None
    if canaries is not None:
        canary_losses, _ = membership.loss_and_confidence(logits_fn, params, canaries.x, canaries.y)
        found = audit.audit(canary_losses, canaries.included, delta, float(sc.audit.significance))
        for metric, v in found.items():
            results.append(_row("canary_audit", metric, v, n_canaries))
        try:
            audit.check_invariant(found["epsilon_lower_bound"], epsilon_spent)
        except audit.PrivacyViolation as err:
            violation = err
            results.append(_row("canary_audit", "violation", 1.0, n_canaries))

    config = OmegaConf.to_container(cfg, resolve=True)
    defense = choices.get("defense", "defense")
    context = dict(scenario=sc.name, dataset=data.name, model=choices.get("model", "model"),
                   defense=defense if method == "none" else f"{defense}+{method}",
                   **records.provenance(config, seed=cfg.seed, data_fingerprint=data.fingerprint))
    frame = records.make_rows(results, context)
    records.write_records(run_dir, frame)
    if history:
        records.atomic_write_bytes(run_dir / "history.json",
                                   records.pd.DataFrame(history).to_json(orient="records").encode())
    if violation is not None:
        raise violation
    return frame
