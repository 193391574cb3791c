"""Bring your own model: evaluate a model that was not trained here with a standard suite, as a leaderboard run.

    python -m bench.byom examples.byom_linear:build --name sklearn_logreg --dataset digits --suite pgd \\
        --out results/runs/byom/sklearn_logreg suite.eps=[0.1]
    python -m bench.byom --flax my_pkg.nets:make --params weights.msgpack --name my_net --dataset mnist5k
    python -m bench.leaderboard results/runs/byom --out results/leaderboard        # then it is on the boards

The model is either
- any importable function `module:function` returning `(logits_fn, params)`: `logits_fn(params, x)` maps float32
  NHWC images in [0, 1] to logits with JAX operations (gradient attacks differentiate it); the function is called
  with the keywords it accepts among `num_classes`, `image_shape`, `mean`, `std`, `x_train`, `y_train` (the
  dataset's training split, for a model that fits itself; it never sees the test split) and the `--arg KEY=VALUE`
  pairs; or
- with `--flax module:factory --params FILE`, a Flax module from `factory(num_classes=, mean=, std=)` and its
  parameters saved by `bench.models.save_params` (Flax msgpack, no pickle).

It is evaluated exactly as the evasion scenario evaluates a trained model: the suite's attacks at every epsilon
(`bench.evaluate.run_suite`, per-example worst case, threat-model check after every batch) and the
gradient-masking sanity checks, on the dataset's test split. Its records carry the same provenance as any run
(config hash of the composed config with the model's import path, its arguments and a digest of its parameters,
git revision, seed, data fingerprint, seconds), `model` = --name and `defense` = --defense, and machine.json the
hardware, so `python -m bench.leaderboard` enters it like any other run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.errors import BenchError

ROOT = Path(__file__).resolve().parent.parent


def _import(spec: str, what: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BenchError(f"{what} '{spec}' must be MODULE:FUNCTION (e.g. examples.byom_linear:build)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BenchError(f"{what}: cannot import {module_name} ({err}); check the module path and that its folder is "
                         "on PYTHONPATH (run from the repository root for examples.*)") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BenchError(f"{what}: {module_name} has no '{attr}'; name a function defined there") from None


def _arg_pairs(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise BenchError(f"--arg '{pair}' must be KEY=VALUE with KEY a Python name, e.g. --arg C=0.5")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value  # a plain string
    return out


def _digest(params) -> str:
    import jax

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        array = np.asarray(leaf)
        digest.update(str(array.shape).encode() + str(array.dtype).encode() + array.tobytes())
    return digest.hexdigest()[:16]


def load_model(data, *, function: str | None = None, flax: str | None = None, params_file: str | None = None,
               args: dict | None = None):
    """(logits_fn, params, description) for the model named by `function`, or by `flax` and `params_file`."""
    import jax

    from bench import models

    args = dict(args or {})
    if (function is None) == (flax is None):
        raise BenchError("name the model once: MODULE:FUNCTION returning (logits_fn, params), or --flax MODULE:FACTORY "
                         "with --params FILE")
    if flax is not None:
        if not params_file:
            raise BenchError("--flax needs --params FILE (parameters saved by bench.models.save_params)")
        factory = _import(flax, "--flax")
        normalization = models.saved_normalization(params_file) or (data.mean, data.std)
        try:
            module = factory(num_classes=data.num_classes, mean=normalization[0], std=normalization[1], **args)
        except TypeError as err:
            raise BenchError(f"--flax {flax}: {err}; the factory takes num_classes, mean, std and the --arg keys") \
                from None
        template = models.init_params(module, jax.random.key(0), data.image_shape)
        params = models.load_params(params_file, template)
        return models.make_logits_fn(module), params, {"flax": flax, "params_file": str(params_file), "args": args}
    build = _import(function, "the model function")
    if not callable(build):
        raise BenchError(f"{function} is not callable; name a function returning (logits_fn, params)")
    offered = {"num_classes": data.num_classes, "image_shape": data.image_shape, "mean": data.mean, "std": data.std,
               "x_train": data.x_train, "y_train": data.y_train}
    accepted = inspect.signature(build).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    kwargs = {k: v for k, v in offered.items() if k in accepted or takes_all}
    unknown = sorted(k for k in args if k not in accepted and not takes_all)
    if unknown:
        raise BenchError(f"{function} takes no {', '.join(unknown)} (its parameters: {', '.join(accepted)}); fix the "
                         "--arg keys")
    built = build(**kwargs, **args)
    if not (isinstance(built, tuple) and len(built) == 2 and callable(built[0])):
        raise BenchError(f"{function} must return (logits_fn, params) with logits_fn(params, x) -> logits; got "
                         f"{type(built).__name__}")
    logits_fn, params = built
    probe = np.asarray(logits_fn(params, data.x_test[:2]))
    if probe.shape != (2, data.num_classes) or not np.all(np.isfinite(probe)):
        raise BenchError(f"{function}: logits_fn(params, x) must give finite logits of shape (batch, "
                         f"{data.num_classes}) for images of shape (batch, {', '.join(map(str, data.image_shape))}); "
                         f"got shape {probe.shape}")
    return logits_fn, params, {"function": function, "args": args}


def compose(dataset: str, suite: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bench import schema  # noqa: F401  (registers the structured config)

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            return hydra_compose(config_name="config", overrides=[f"dataset={dataset}", f"suite={suite}", *overrides])
    except BenchError:
        raise
    except Exception as err:  # Hydra's own errors for unknown groups or keys: one line naming the override
        raise BenchError(f"bad dataset, suite or override ({type(err).__name__}: {str(err).splitlines()[0]}); "
                         "`python -m bench --help` lists the options") from None


def evaluate_model(*, name: str, defense: str, dataset: str, suite: str, out: Path, overrides: list[str],
                   function: str | None = None, flax: str | None = None, params_file: str | None = None,
                   args: dict | None = None, seed: int = 0):
    """Evaluate the model and write records.parquet and machine.json into `out`; returns the records."""
    import jax
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from bench import evaluate, records, sanity
    from bench.experiment import KeyStreams, suite_settings, writable_folder
    from bench.publish.entries import MACHINE_FILE

    if not name or any(c in name for c in "\n\r\t"):
        raise BenchError("--name must be a non-empty single-line label for the model")
    started = time.perf_counter()
    cfg = compose(dataset, suite, [f"seed={seed}", *overrides])
    writable_folder(out, "--out")
    settings = suite_settings(cfg.suite)
    data = instantiate(cfg.dataset)
    logits_fn, params, described = load_model(data, function=function, flax=flax, params_file=params_file, args=args)
    x_eval, y_eval = data.split(settings.split)
    if settings.n_examples is not None:
        x_eval, y_eval = x_eval[: settings.n_examples], y_eval[: settings.n_examples]
    attacks = evaluate.build_suite(settings.attacks, settings.norm, list(settings.eps))
    streams = KeyStreams(seed, ("init", "train", "attack", "surrogate"))  # the evasion scenario's streams
    outcome = evaluate.run_suite(logits_fn, params, x_eval, y_eval, attacks, settings.norm, streams.key("attack"),
                                 batch_size=settings.batch_size, progress=False, cumulative=settings.cumulative)
    rows = list(outcome.rows)
    if settings.sanity:
        rows += sanity.sanity_checks(logits_fn, params, x_eval, y_eval, attacks, settings.norm,
                                     jax.random.fold_in(streams.key("attack"), 0x5A17), outcome,
                                     batch_size=settings.batch_size, n_examples=settings.sanity_examples)
    for row in rows:
        row.setdefault("split", settings.split)
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in ("progress", "checkpoint", "train", "defense"):
        config.pop(key, None)
    config["model"] = {"byom": described, "params_digest": _digest(params), "name": name}
    config["defense"] = {"byom": defense}
    context = dict(scenario="evasion", dataset=data.name, model=name, defense=defense,
                   **records.provenance(config, seed=seed, data_fingerprint=data.fingerprint))
    frame = records.make_rows(rows, context)
    records.write_records(out, frame)
    from bench.records import machine

    records.atomic_write_bytes(out / MACHINE_FILE, json.dumps(machine(), indent=1).encode())
    print(f"records: {out / records.RECORDS_FILE} ({time.perf_counter() - started:.1f} s)")
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.byom", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("function", nargs="?", help="MODULE:FUNCTION returning (logits_fn, params)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. suite.eps=[0.1] suite.n_examples=100")
    parser.add_argument("--flax", help="MODULE:FACTORY of a Flax module (with --params)")
    parser.add_argument("--params", help="parameters file for --flax (bench.models.save_params format)")
    parser.add_argument("--name", required=True, help="the model's name on the leaderboard")
    parser.add_argument("--defense", default="external", help="the defense column (default: %(default)s)")
    parser.add_argument("--dataset", default="mnist5k", help="a dataset of conf/dataset (default: %(default)s)")
    parser.add_argument("--suite", default="pgd", help="a suite of conf/suite (default: %(default)s)")
    parser.add_argument("--arg", action="append", default=[], help="KEY=VALUE passed to the function (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="the run folder (default: results/runs/byom/NAME)")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.function and "=" in args.function and ":" not in args.function:  # only overrides, with --flax
            args.overrides.insert(0, args.function)
            args.function = None
        out = Path(args.out) if args.out else ROOT / "results" / "runs" / "byom" / \
            "".join(c if c.isalnum() or c in "-_." else "_" for c in args.name)
        frame = evaluate_model(name=args.name, defense=args.defense, dataset=args.dataset, suite=args.suite, out=out,
                               overrides=args.overrides, function=args.function, flax=args.flax,
                               params_file=args.params, args=_arg_pairs(args.arg), seed=args.seed)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from bench.report import evasion_table, to_markdown

    print(to_markdown(evasion_table(frame, with_ci=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
