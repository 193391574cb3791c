"""The `privacy` scenario: train (non-private, DP-SGD or PATE), then attack and audit the training data's privacy.

1. data; the last `audit.canaries` training images become canaries (mislabeled, each trained on with
   probability 1/2) and are otherwise never used;
2. train the target on the rest of the training split plus the included canaries: `method=none` with
   the plain loop, `method=dp_sgd` with the same loop and the DP-SGD hooks of `bench.privacy.dp_sgd`
   (resumable: a killed run continues from its checkpoint with the same Poisson batches and noise),
   `method=pate` as a student of teachers trained on disjoint partitions;
3. records: test accuracy; for DP, epsilon under the RDP and PLD accountants for the steps actually
   taken, with delta, sigma, q, steps, clip norm and the neighbouring relation; loss-threshold and LiRA
   (offline, online) membership inference on `membership.n_members` training examples vs the test
   split; the canary audit's epsilon lower bounds, checked against the accountant.
Every random draw has its own stream (`streams`): switching the audit off leaves the members attacked,
the LiRA halves and the PATE partitions as they were. Table: privacy vs utility (bench/privacy/report.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
import pandas as pd
from omegaconf import MISSING

from bench import evaluate, records, train
from bench.errors import BenchError
from bench.privacy import accounting, audit, dp_sgd, membership, pate, shadow
from bench.experiment import Experiment, Result

METHODS = ("none", "dp_sgd", "pate")


@dataclass
class DP:
    """DP-SGD's budget (bench.privacy.dp_sgd.plan); see conf/scenario/privacy.yaml."""

    clip_norm: float = MISSING
    noise_multiplier: Optional[float] = MISSING
    target_epsilon: Optional[float] = MISSING
    delta: Optional[float] = MISSING
    batch_size: Optional[int] = MISSING
    sampling_rate: Optional[float] = MISSING
    epochs: Optional[float] = MISSING
    steps: Optional[int] = MISSING
    accountant: str = MISSING
    pad_multiple: int = MISSING
    microbatch_size: Optional[int] = MISSING
    clipping: str = "auto"


CLIPPING = ("auto", "ghost", "per_example")


@dataclass
class Pate:
    teachers: int = MISSING
    teacher_epochs: int = MISSING
    sigma: float = MISSING
    queries: int = MISSING
    delta: Optional[float] = MISSING


@dataclass
class Lira:
    shadows: int = MISSING
    epochs: Optional[int] = MISSING
    fixed_variance: bool = MISSING


@dataclass
class Membership:
    n_members: int = MISSING
    lira: Lira = field(default_factory=Lira)


@dataclass
class Audit:
    canaries: int = MISSING
    significance: float = MISSING


@dataclass
class Privacy:
    """Privacy of training data: the parameters of conf/scenario/privacy.yaml."""

    _target_: str = MISSING  # the yaml names this class (Hydra reads it; the schema only types it)
    name: str = "privacy"
    method: str = MISSING
    dp: DP = field(default_factory=DP)
    pate: Pate = field(default_factory=Pate)
    membership: Membership = field(default_factory=Membership)
    audit: Audit = field(default_factory=Audit)
    streams: ClassVar[tuple[str, ...]] = ("init", "train", "noise", "shadow", "canaries", "pate", "gnmax",
                                          "members", "lira")

    def defense_label(self, defense: str) -> str:
        return defense if self.method == "none" else f"{defense}+{self.method}"

    @staticmethod
    def table(frame: pd.DataFrame) -> pd.DataFrame:
        from bench.privacy.report import privacy_table

        return privacy_table(frame)

    @staticmethod
    def write_tables(frame: pd.DataFrame, out) -> list:
        from bench.privacy.report import write_privacy_tables

        return list(write_privacy_tables(frame, out).values())

    def _dp_hooks(self, model, defense, plan, n):
        """The grad_fn and sampler hooks of `bench.train.train` for DP-SGD on n examples: ghost norms
        (bench/privacy/ghost.py, whose cost grows with the padding: each Poisson batch padded to its next multiple
        of pad_multiple) where they apply ("auto") or are asked for, else jax-privacy's per-example clipping (which
        skips the padding: one fixed shape); both give the same clipped sum (tests/test_privacy.py)."""
        from bench.privacy import ghost

        clipping = self.dp.clipping
        if clipping not in CLIPPING:
            raise BenchError(f"unknown scenario.dp.clipping '{clipping}'; use one of {', '.join(CLIPPING)}")
        reason = ghost.supports(model.module, defense)
        if clipping == "ghost" and reason:
            raise BenchError(f"scenario.dp.clipping=ghost: {reason}; use scenario.dp.clipping=per_example (or auto)")
        per_example = clipping == "per_example" or reason is not None
        grad_fn = (dp_sgd.clipped_value_and_grad(plan.clip_norm, self.dp.microbatch_size) if per_example
                   else ghost.ghost_value_and_grad(model.module, plan.clip_norm))
        sampler = dp_sgd.PoissonSampler(n, plan.q, plan.steps, plan.steps_per_epoch, self.dp.pad_multiple,
                                        fixed_shape=per_example)
        return grad_fn, sampler

    def run(self, exp: Experiment) -> Result:
        method = self.method
        if method not in METHODS:
            raise BenchError(f"unknown scenario.method '{method}'; use one of {list(METHODS)}")
        if method == "pate" and self.pate.delta is not None and not 0 < float(self.pate.delta) < 1:
            raise BenchError(f"scenario.pate.delta must be in (0, 1), got {self.pate.delta}")
        if int(self.membership.n_members) < 1:
            raise BenchError(f"scenario.membership.n_members must be >= 1, got {self.membership.n_members}")
        data, t = exp.data, exp.train
        model = exp.build_model()
        logits_fn = model.logits_fn
        objective = exp.objective(model)
        init_params = lambda k: exp.build_model(k).params

        x_train, y_train = data.x_train, data.y_train
        n_canaries = int(self.audit.canaries)
        canaries = None
        if n_canaries > 0:
            if n_canaries >= len(y_train) // 2:
                raise BenchError(f"audit.canaries={n_canaries} leaves too few of the {len(y_train)} training images")
            canaries = audit.make_canaries(x_train[-n_canaries:], y_train[-n_canaries:], data.num_classes,
                                           exp.rng("canaries"))
            x_train, y_train = x_train[:-n_canaries], y_train[:-n_canaries]
        x_fit = x_train if canaries is None else np.concatenate([x_train, canaries.x[canaries.included]])
        y_fit = y_train if canaries is None else np.concatenate([y_train, canaries.y[canaries.included]])

        results = []
        checkpointer = None
        if method == "dp_sgd":
            d = self.dp
            plan = dp_sgd.plan_from_settings(
                len(y_fit), clip_norm=d.clip_norm, batch_size=d.batch_size, sampling_rate=d.sampling_rate,
                epochs=d.epochs, steps=d.steps, noise_multiplier=d.noise_multiplier, target_epsilon=d.target_epsilon,
                delta=d.delta, accountant=d.accountant, default_batch_size=t.batch_size, default_epochs=t.epochs)
            batch_size = max(1, round(plan.expected_batch_size))
            make_optimizer = lambda k: dp_sgd.dp_optimizer(t.optimizer(plan.steps), clip_norm=plan.clip_norm,
                                                           noise_multiplier=plan.noise_multiplier,
                                                           expected_batch_size=plan.expected_batch_size, key=k)
            grad_fn, sampler = self._dp_hooks(model, exp.labels.get("defense"), plan, len(y_fit))
            epochs = plan.epochs
        else:
            batch_size, epochs = t.batch_size, t.epochs
            grad_fn = sampler = None

        x_test, y_test = data.x_test, data.y_test
        if method == "pate":  # teachers on the private data label a public split (the first half of the test split)
            p = self.pate
            if int(self.membership.lira.shadows) > 0:
                raise BenchError("LiRA shadows of a PATE student are not implemented; "
                                 "set scenario.membership.lira.shadows=0")
            n_public = min(int(p.queries), len(y_test) // 2)
            x_public, x_test, y_test = x_test[:n_public], x_test[n_public:], y_test[n_public:]
            keep = pate.teacher_partitions(len(y_fit), int(p.teachers), exp.rng("pate"))
            per_teacher = int(keep[0].sum())
            teacher_batch = min(batch_size, per_teacher)
            teacher_total = int(p.teacher_epochs) * (per_teacher // teacher_batch)
            teachers = shadow.train_shadows(objective, init_params, lambda k: t.optimizer(teacher_total), x_fit, y_fit,
                                            keep, epochs=int(p.teacher_epochs), batch_size=teacher_batch,
                                            key=exp.key("shadow"), progress=exp.progress)
            votes = pate.teacher_votes(logits_fn, teachers, x_public, data.num_classes)
            teacher_acc = float(np.mean(np.argmax(votes, 1) == data.y_test[:n_public]))
            y_public = pate.gnmax(votes, float(p.sigma), exp.rng("gnmax"))
            results.append(records.row("pate", "teacher_ensemble_accuracy", teacher_acc, n_public))
            results.append(records.row("pate", "label_accuracy", np.mean(y_public == data.y_test[:n_public]), n_public))
            x_student, y_student = x_public, y_public
            batch_size = min(batch_size, n_public)
        else:
            x_student, y_student = x_fit, y_fit
        if method != "dp_sgd":
            total = epochs * train.steps_per_epoch(len(y_student), batch_size)
            make_optimizer = lambda k: t.optimizer(total)
        if method != "pate":  # the target's training resumes from its checkpoint (PATE's teachers do not)
            checkpointer = exp.checkpointer()

        params, history = train.train(objective, model.params, make_optimizer(exp.key("noise")), x_student, y_student,
                                      epochs=epochs, batch_size=batch_size, key=exp.key("train"),
                                      progress=exp.progress, grad_fn=grad_fn, sampler=sampler,
                                      checkpointer=checkpointer)
        exp.save_params(params, model)
        train_seconds = exp.seconds()
        results.append(records.row("train", "seconds", train_seconds, len(y_fit), seconds=train_seconds))
        if checkpointer is not None and checkpointer.resumed_from is not None:
            results.append(records.row("train", "resumed_from_step", checkpointer.resumed_from, len(y_fit)))
        results.append(records.row("utility", "test_accuracy", evaluate.accuracy(logits_fn, params, x_test, y_test),
                                   len(y_test)))

        epsilon_spent = float("inf")
        delta = accounting.default_delta(len(y_fit))
        relation = accounting.neighbouring().name.lower()
        if method == "dp_sgd":
            steps, delta = sampler.steps_taken, plan.delta
            event = accounting.dpsgd_event(plan.q, plan.noise_multiplier, steps)
            facts = (("delta", delta), ("noise_multiplier", plan.noise_multiplier), ("sampling_rate", plan.q),
                     ("steps", steps), ("clip_norm", plan.clip_norm))
        elif method == "pate":
            delta = accounting.default_delta(len(y_fit)) if self.pate.delta is None else float(self.pate.delta)
            event = pate.gnmax_event(float(self.pate.sigma), n_public)
            facts = (("delta", delta), ("gnmax_sigma", float(self.pate.sigma)), ("queries", n_public),
                     ("teachers", int(self.pate.teachers)))
        if method != "none":
            eps = {kind: accounting.epsilon(event, delta, kind) for kind in ("rdp", "pld")}
            epsilon_spent = min(eps.values())
            for kind, value in eps.items():
                for metric, v in (("epsilon", value), *facts):
                    results.append(records.row(f"accountant_{kind}", metric, v, len(y_fit), relation=relation))

        # Membership inference: n_members training examples (never canaries) vs the test split: the first of one
        # fixed permutation of the whole training split, so the audit's canaries only replace those they displace.
        m = self.membership
        order = exp.rng("members").permutation(len(data.y_train))
        member_idx = order[order < len(y_train)][: int(m.n_members)]
        losses, conf = membership.loss_and_confidence(logits_fn, params, np.concatenate([x_train, x_test]),
                                                      np.concatenate([y_train, y_test]))
        nonmember = np.arange(len(y_train), len(losses))
        n_attacked = len(member_idx) + len(nonmember)
        loss_scores = membership.loss_threshold_scores(losses)
        for metric, v in membership.attack_metrics(loss_scores[member_idx], loss_scores[nonmember]).items():
            results.append(records.row("loss_threshold", metric, v, n_attacked))

        if int(m.lira.shadows) > 0:
            lira_started = time.perf_counter()
            x_pop, y_pop = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
            keep = membership.random_halves(int(m.lira.shadows), len(y_pop), exp.rng("lira"))
            stacked = shadow.train_shadows(objective, init_params, make_optimizer, x_pop, y_pop, keep,
                                           epochs=int(m.lira.epochs or epochs), batch_size=batch_size,
                                           key=exp.key("shadow"), grad_fn=grad_fn, progress=exp.progress)
            shadow_conf = shadow.shadow_confidences(logits_fn, stacked, x_pop, y_pop)
            lira_seconds = time.perf_counter() - lira_started
            for online in (False, True):
                scores = membership.lira_scores(conf, shadow_conf, keep, online=online,
                                                fixed_variance=bool(m.lira.fixed_variance))
                name = "lira_online" if online else "lira_offline"
                for metric, v in membership.attack_metrics(scores[member_idx], scores[nonmember]).items():
                    results.append(records.row(name, metric, v, n_attacked, seconds=lira_seconds,
                                               shadows=int(m.lira.shadows)))

        violation = None
        if canaries is not None:
            canary_losses, _ = membership.loss_and_confidence(logits_fn, params, canaries.x, canaries.y)
            found = audit.audit(canary_losses, canaries.included, delta, float(self.audit.significance))
            for metric, v in found.items():
                results.append(records.row("canary_audit", metric, v, n_canaries))
            try:
                audit.check_invariant(found["epsilon_lower_bound"], epsilon_spent)
            except audit.PrivacyViolation as err:
                violation = err
                results.append(records.row("canary_audit", "violation", 1.0, n_canaries))
        return Result(results, history, violation)
