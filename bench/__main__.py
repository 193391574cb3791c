"""`python -m bench [GROUP=OPTION ...] [key=value ...]`: compose, train, evaluate, record.

Examples:
  python -m bench                                     # mnist5k, cnn_small, standard, FGSM+PGD
  python -m bench dataset=digits model=mlp defense=standard
  python -m bench -m model=mlp,cnn_small seed=0,1     # a sweep
  python -m bench --help                              # the config groups
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from pathlib import Path

import hydra
import jax
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from bench import checkpoint, evaluate, models, records, train
from bench.certify import evaluate as certify_eval
from bench.defenses import overfitting
from bench.errors import BenchError


def run(cfg: DictConfig, run_dir: Path, choices: dict) -> "records.pd.DataFrame":
    """One experiment: everything is instantiated (and so validated) before any training."""
    started = time.perf_counter()
    config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.checkpoint.every_steps < 0:
        raise BenchError(f"checkpoint.every_steps must be >= 0, got {cfg.checkpoint.every_steps}")
    work = checkpoint.work_dir(config, cfg.checkpoint.dir, cfg.seed) if cfg.checkpoint.dir else None
    key = jax.random.key(cfg.seed)
    init_key, train_key, attack_key = jax.random.split(key, 3)

    suite_cfg = cfg.suite
    attack_factories = {name: instantiate(a) for name, a in suite_cfg.attacks.items()}
    suite = evaluate.build_suite(attack_factories, suite_cfg.norm, list(suite_cfg.eps))
    if int(suite_cfg.batch_size) < 1:
        raise BenchError(f"suite.batch_size must be >= 1, got {suite_cfg.batch_size}")

    certifiers = {name: instantiate(c) for name, c in (suite_cfg.get("certifiers") or {}).items()}

    data = instantiate(cfg.dataset)
    model = instantiate(cfg.model, num_classes=data.num_classes, mean=data.mean, std=data.std)
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, init_key, data.image_shape)
    # Certified training needs the layer structure: a defense whose factory takes `model` gets the Flax model
    # (passed to the partial, since OmegaConf cannot merge a Flax module, a dataclass, into a config).
    wants_model = "model" in inspect.signature(get_object(cfg.defense._target_)).parameters
    defense_kwargs = {"model": model} if wants_model else {}
    objective = instantiate(cfg.defense, _partial_=True)(logits_fn=logits_fn, **defense_kwargs)

    t = cfg.train
    x_train, y_train = data.x_train, data.y_train
    eval_fns = [lambda p: {"test_accuracy": evaluate.accuracy(logits_fn, p, data.x_test, data.y_test)}]
    oc = t.get("overfit_check")
    if oc is not None and oc.enabled:  # held out from the end of the training split; never trained on
        x_train, y_train, x_hold, y_hold = overfitting.split_holdout(x_train, y_train, oc.n_examples)
        monitor = overfitting.overfit_monitor(
            logits_fn, x_hold, y_hold, jax.random.fold_in(train_key, 1), norm=oc.norm, eps=oc.eps, steps=oc.steps,
            step_size=oc.step_size, max_drop=oc.max_drop, floor=oc.floor, max_gap=oc.get("max_gap"))
        eval_fns.append(monitor.eval_fn)
    per_epoch = train.steps_per_epoch(len(y_train), t.batch_size)
    optimizer = train.make_optimizer(t.optimizer, t.learning_rate, t.schedule, t.epochs * per_epoch,
                                     t.momentum, t.weight_decay)
    x_eval, y_eval = data.x_test, data.y_test
    if suite_cfg.n_examples is not None:
        x_eval, y_eval = x_eval[: suite_cfg.n_examples], y_eval[: suite_cfg.n_examples]

    checkpointer = None
    if cfg.load_params:
        params = models.load_params(cfg.load_params, params)
        history = []
    else:
        checkpointer = (checkpoint.Checkpointer(work, cfg.checkpoint.every_steps, cfg.checkpoint.resume)
                        if work is not None else None)
        params, history = train.train(
            objective, params, optimizer, x_train, y_train, epochs=t.epochs, batch_size=t.batch_size,
            key=train_key, progress=cfg.progress, checkpointer=checkpointer,
            eval_fn=lambda p: {k: v for f in eval_fns for k, v in f(p).items()},
        )
        models.save_params(run_dir / "params.msgpack", params)
    train_seconds = time.perf_counter() - started
    train_rows = []
    if checkpointer is not None and checkpointer.resumed_from is not None:
        # resumed from a checkpoint: the training seconds above cover only the part this process ran
        train_rows.append(dict(evaluator="train", norm="none", eps=0.0, metric="resumed_from_step",
                               value=float(checkpointer.resumed_from), n=len(y_train), seconds=0.0))
    if history and history[-1].get("stop"):  # early stop (catastrophic overfitting): keep it in the records
        print(f"stopped after epoch {history[-1]['epoch']}: {history[-1]['stop']}", file=sys.stderr)
        if oc.restore and monitor.healthy_params() is not None:  # the model before the collapse, as Wong et al.
            params = monitor.healthy_params()
            models.save_params(run_dir / "params.msgpack", params)
        train_rows.append(dict(evaluator="train", norm="none", eps=0.0, metric="stopped_epoch",
                               value=float(history[-1]["epoch"]), n=len(y_train), seconds=train_seconds))

    results, robust = evaluate.evaluate_evasion(logits_fn, params, x_eval, y_eval, suite, suite_cfg.norm, attack_key,
                                           batch_size=suite_cfg.batch_size, progress=cfg.progress,
                                           cumulative=bool(suite_cfg.get("cumulative", False)),
                                           sanity=bool(suite_cfg.get("sanity", True)),
                                           sanity_examples=int(suite_cfg.get("sanity_examples", 200)),
                                           cache_dir=None if work is None else work / "eval" / checkpoint.params_digest(params))
    results.append(dict(evaluator="train", norm="none", eps=0.0, metric="seconds", value=train_seconds,
                        n=len(data.y_train), seconds=train_seconds))
    results.extend(train_rows)
    soundness_error = None
    if certifiers:  # the sandwich: certified (lower bound) next to attacked (upper bound) accuracy
        certified_rows, certified = certify_eval.evaluate_certified(
            model, params, x_eval, y_eval, certifiers, suite_cfg.norm, list(suite_cfg.eps),
            batch_size=int(suite_cfg.get("certify_batch_size", 100)))
        results.extend(certified_rows)
        try:
            certify_eval.soundness_check(certified, robust)
            failures = 0
        except certify_eval.SoundnessFailure as err:
            soundness_error = err
            failures = sum(f["count"] for f in err.failures)
        results.append(dict(evaluator="soundness", norm=suite_cfg.norm, eps=0.0, metric="failures",
                            value=float(failures), n=len(y_eval), seconds=0.0))
    context = dict(scenario=cfg.scenario.name, dataset=data.name, model=choices.get("model", "model"),
                   defense=choices.get("defense", "defense"),
                   **records.provenance(checkpoint.stable_config(config), seed=cfg.seed, data_fingerprint=data.fingerprint))
    frame = records.make_rows(results, context)
    records.write_records(run_dir, frame)
    if history:
        records.atomic_write_bytes(run_dir / "history.json", records.pd.DataFrame(history).to_json(orient="records").encode())
    if soundness_error is not None:  # recorded above; the run still fails
        raise soundness_error
    return frame


def _bad_input(err: BaseException) -> str | None:
    """The one-line message for bad input anywhere in an exception chain (Hydra wraps errors from targets)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, BenchError):
            return str(err)
        if isinstance(err, MissingMandatoryValue):
            key = getattr(err, "full_key", "") or "a required field"
            return f"missing required value {key}; set it on the command line, e.g. {key}=..."
        if isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err):
            return ("out of memory: a batch does not fit; lower train.batch_size (training) or suite.batch_size "
                    "(attacks), e.g. suite.batch_size=100")
        err = err.__cause__ or err.__context__
    return None


_HYDRA_FLAGS_WITHOUT_RUN = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
                            "-sc", "--shell-completion", "-p", "--package", "-cp", "--config-path", "-cn",
                            "--config-name", "-cd", "--config-dir", "--run", "-r", "--resolve")


def _check_overrides(args: list[str]) -> str | None:
    """Compose the config from the command line before Hydra does, so that a malformed override, a value of
    the wrong type (checked against bench/schema.py) or an unknown option is one line, not a report.

    Only for a plain single run; sweeps and Hydra's own flags are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.split("=")[0] in _HYDRA_FLAGS_WITHOUT_RUN for a in args):
        return None
    try:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "conf"),
                                   version_base=None):
            compose(config_name="config", overrides=args)
    except (HydraException, OmegaConfBaseException) as err:
        lines = []
        while err is not None:  # Hydra's message, then its cause's (the type error itself)
            lines += [line.strip() for line in str(err).split("Config search path")[0].splitlines()]
            err = err.__cause__
        keep = [line for line in lines if line and not line.startswith(
            ("full_key", "reference_type", "object_type", "See https", "Set the environment"))]
        return "; ".join(dict.fromkeys(keep)).replace(":;", ":") + " (`python -m bench --help` lists the options)"
    return None


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from bench import report

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU found" lines on CPU
    if cfg.distributed:  # before anything touches a device
        jax.distributed.initialize()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    choices = dict(HydraConfig.get().runtime.choices)
    try:
        if cfg.scenario.name == "privacy":  # its own pipeline and table: bench/privacy
            from bench.privacy import report as privacy_report
            from bench.privacy.run import run_privacy

            frame, table = run_privacy(cfg, run_dir, choices), privacy_report.privacy_table
        else:
            frame, table = run(cfg, run_dir, choices), report.evasion_table
    except Exception as err:
        message = _bad_input(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    print(report.to_markdown(table(frame)))
    print(f"records: {run_dir / records.RECORDS_FILE}")


if __name__ == "__main__":
    if (problem := _check_overrides(sys.argv[1:])) is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
