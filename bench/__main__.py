"""`python -m bench [GROUP=OPTION ...] [key=value ...]`: compose, train, evaluate, record.

Examples:
  python -m bench                                     # mnist5k, cnn_small, standard, FGSM+PGD
  python -m bench dataset=digits model=mlp defense=standard
  python -m bench -m model=mlp,cnn_small seed=0,1     # a sweep
  python -m bench --help                              # the config groups
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from pathlib import Path

import hydra
import jax
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from bench import records
from bench.errors import BenchError
from bench.sweep import record_failure
from bench.experiment import finish, prepare

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # absolute: `cli()` also runs from an import


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
        if isinstance(err, InstantiationException) and "unexpected keyword argument" in str(err):
            first = str(err).strip().splitlines()[0]
            return (f"{first}: a key in the config that the target does not take; check its spelling against the "
                    "target's parameters (`python -m bench --cfg job` prints the composed config)")
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"disk full ({err.strerror}: {getattr(err, 'filename', '') or 'writing results'}); free space or "
                    "point hydra.run.dir / checkpoint.dir elsewhere")
        if isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err):
            return ("out of memory: a batch does not fit; lower train.batch_size (training) or suite.batch_size "
                    "(attacks), e.g. suite.batch_size=100")
        err = err.__cause__ or err.__context__
    return None


_HYDRA_FLAGS_WITHOUT_RUN = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
                            "-sc", "--shell-completion", "-p", "--package", "-cp", "--config-path", "-cn",
                            "--config-name", "-cd", "--config-dir", "--run", "-r", "--resolve")
_SWEEP_FLAGS = ("-m", "--multirun")


def _split_values(value: str) -> list[str]:
    """The values of a sweep override `a,b,c` (commas inside brackets or quotes belong to one value)."""
    values, depth, quote, current = [], 0, None, ""
    for char in value:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return values + [current]


def _sweep_choices(overrides: list[str]) -> list[list[str]]:
    """Single-run override lists that cover every value of every sweep override once (others at their first)."""
    split = []
    for override in overrides:
        key, sep, value = override.partition("=")
        values = _split_values(value) if sep and not value.strip().startswith(("range(", "choice(", "interval(",
                                                                                "glob(", "sort(", "shuffle(")) else [value]
        split.append([f"{key}={v}" if sep else key for v in values])
    base = [values[0] for values in split]
    runs = [base]
    for i, values in enumerate(split):
        runs += [base[:i] + [v] + base[i + 1:] for v in values[1:]]
    return runs


def _adds_group(override: str) -> bool:
    """`+experiment=...`, `+attack@...`: a config group, which Hydra checks itself (and which later overrides may
    need: `+experiment=X defense.warmup_steps=3` is only valid with the experiment in)."""
    key = override.lstrip("+").split("=")[0]
    return "@" in key or "/" in key or ("." not in key and (Path(CONF_DIR) / key).is_dir())


def _unknown_added_key(cfg, without, override: str) -> str | None:
    """`+a.b=v` adds a key; refuse it where the parent is a typed block (bench/schema.py) that has no such field."""
    from omegaconf import OmegaConf

    key = override.lstrip("+").split("=")[0]
    parent, leaf = key.rsplit(".", 1) if "." in key else ("", key)
    node = OmegaConf.select(without, parent) if parent else without
    if node is None or not OmegaConf.is_dict(node) or leaf in node:
        return None
    if OmegaConf.get_type(node) in (dict, None) or (parent and OmegaConf.is_missing(without, parent)):
        return None  # an open block (model kwargs, suite.attacks): instantiation checks its arguments
    known = ", ".join(sorted(str(k) for k in node.keys()))
    return (f"unknown key {key}: '{parent or 'the config'}' has no field '{leaf}' (its fields: {known}); `+` adds "
            "keys only to open blocks, so check the spelling")


def _run_folder_problem(args: list[str]) -> str | None:
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") != "hydra.run.dir" or not value:
            continue
        path = Path(value)
        if any(len(part.encode()) > 255 for part in path.parts):
            return f"hydra.run.dir={value[:60]}...: a folder name is longer than 255 bytes; choose a shorter one"
        if path.exists() and not path.is_dir():
            return f"hydra.run.dir={value} is a file, not a folder; choose another path"
    return None


def _check_overrides(args: list[str]) -> str | None:
    """Compose the config from the command line before Hydra does, so that a malformed override, a value of
    the wrong type (checked against bench/schema.py), an unknown option or key (also with `+`) or a run folder
    that cannot be one is one line, not a report. A sweep (`-m`) is checked value by value."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.split("=")[0] in _HYDRA_FLAGS_WITHOUT_RUN for a in args):
        return None
    overrides = [a for a in args if a not in _SWEEP_FLAGS]
    sweep = len(overrides) != len(args)
    if (problem := _run_folder_problem(overrides)) is not None:
        return problem
    runs = _sweep_choices(overrides) if sweep else [overrides]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            for run in runs:
                cfg = compose(config_name="config", overrides=run)
                for i, override in enumerate(run):
                    if override.startswith("+") and not _adds_group(override):
                        without = compose(config_name="config", overrides=run[:i] + run[i + 1:])
                        if (problem := _unknown_added_key(cfg, without, override)) is not None:
                            return problem
    except (HydraException, OmegaConfBaseException) as err:
        lines = []
        while err is not None:  # Hydra's message, then its cause's (the type error itself)
            lines += [line.strip() for line in str(err).split("Config search path")[0].splitlines()]
            err = err.__cause__
        keep = [line for line in lines if line and not line.startswith(
            ("full_key", "reference_type", "object_type", "See https", "Set the environment"))]
        where = f" (in the sweep: {' '.join(run)})" if sweep else ""
        return ("; ".join(dict.fromkeys(keep)).replace(":;", ":") + where
                + " (`python -m bench --help` lists the options)")
    return None


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Compose, instantiate the scenario, run it, finish (records, history, table). No scenario logic here."""
    from bench import cache, report

    cache.enable()  # a second run of the same config does not compile again (bench/cache.py)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU found" lines on CPU
    if cfg.distributed:  # before anything touches a device
        jax.distributed.initialize()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    started = time.perf_counter()
    try:
        scenario = instantiate(cfg.scenario, _convert_="object")
        experiment = prepare(cfg, run_dir, HydraConfig.get().runtime.choices, scenario.streams)
        frame = finish(experiment, scenario, scenario.run(experiment))
    except Exception as err:
        message = _bad_input(err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one job's failure is its own: the sweep goes on
            hydra_cfg = HydraConfig.get()
            line = record_failure(run_dir, hydra_cfg.job.num, list(hydra_cfg.overrides.task), err, message)
            print(f"error: {line}", file=sys.stderr)
            return
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    print(report.to_markdown(scenario.table(frame)))
    print(f"records: {run_dir / records.RECORDS_FILE} ({time.perf_counter() - started:.1f} s in all)")


def cli(argv: list[str] | None = None) -> int:
    """`python -m bench ARGS` as a function: the exit status (0 done, 2 bad input, 1 a failure Hydra reported).
    With `argv` it runs in this process (the tests' bad-input table does), else on `sys.argv`."""
    from hydra.core.global_hydra import GlobalHydra

    in_process = argv is not None
    argv = sys.argv[1:] if argv is None else list(argv)
    if (problem := _check_overrides(argv)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # In a caller's process Hydra leaves logging alone (its dictConfig would close the caller's handlers).
    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none"] if in_process else []
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *argv, *quiet]
    try:
        main()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
