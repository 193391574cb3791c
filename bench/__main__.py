"""`python -m bench [GROUP=OPTION ...] [key=value ...]`: compose, train, evaluate, record.

Examples:
  python -m bench                                     # mnist5k, cnn_small, standard, FGSM+PGD
  python -m bench dataset=digits model=mlp defense=standard
  python -m bench -m model=mlp,cnn_small seed=0,1     # a sweep
  python -m bench --help                              # the config groups
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import jax
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from bench import records
from bench.errors import BenchError
from bench.experiment import finish, prepare


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
    """Compose, instantiate the scenario, run it, finish (records, history, table). No scenario logic here."""
    from bench import report

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU found" lines on CPU
    if cfg.distributed:  # before anything touches a device
        jax.distributed.initialize()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        scenario = instantiate(cfg.scenario, _convert_="object")
        experiment = prepare(cfg, run_dir, HydraConfig.get().runtime.choices, scenario.streams)
        frame = finish(experiment, scenario, scenario.run(experiment))
    except Exception as err:
        message = _bad_input(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    print(report.to_markdown(scenario.table(frame)))
    print(f"records: {run_dir / records.RECORDS_FILE}")


if __name__ == "__main__":
    if (problem := _check_overrides(sys.argv[1:])) is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
