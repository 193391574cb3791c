"""The typed shape of a run's config (Hydra structured config): wrong types fail at compose time, before any work.

`conf/config.yaml` lists `bench_schema` first in its defaults, so every value it
and the command line set is checked against these dataclasses: `train.epochs=ten`
or `seed=1.5` is rejected before data are loaded. `suite:` is typed by `Suite`
below; each scenario's parameters by its own dataclass (bench/scenarios/, the
schema `<name>_schema` its yaml lists first). The other groups (dataset, model,
defense, attacks, certifiers) are `_target_` blocks checked when instantiated.
Fields set in conf/config.yaml have no default here (MISSING): the yaml is the
one place their values live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OverfitCheck:
    enabled: bool = MISSING
    norm: str = MISSING
    eps: float = MISSING
    steps: int = MISSING
    step_size: Optional[float] = MISSING
    n_examples: int = MISSING
    max_drop: float = MISSING
    floor: float = MISSING
    max_gap: Optional[float] = MISSING
    restore: bool = MISSING


@dataclass
class Train:
    epochs: int = MISSING
    batch_size: int = MISSING
    optimizer: str = MISSING
    learning_rate: float = MISSING
    schedule: str = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    overfit_check: OverfitCheck = field(default_factory=OverfitCheck)


@dataclass
class Checkpoint:
    dir: Optional[str] = MISSING
    every_steps: int = MISSING
    resume: bool = MISSING


@dataclass
class Suite:
    """The attack suite (conf/suite/*.yaml): attacks and certifiers by name, the threat, sizes and checks."""

    attacks: Dict[str, Any] = field(default_factory=dict)     # name -> attack factory block (conf/attack/)
    norm: str = MISSING
    eps: List[float] = MISSING
    n_examples: Optional[int] = None     # first N test examples (None: all)
    split: str = "test"                  # test | validation: the split the attacks run on (tuning: validation)
    batch_size: int = 100                # attack batch; on the CPU about 100 is fastest (results/speed.md)
    cumulative: bool = False             # attacks in order, each on the examples still robust (AutoAttack)
    sanity: bool = True                  # gradient-masking checks (bench/sanity.py)
    sanity_examples: int = 200
    certifiers: Dict[str, Any] = field(default_factory=dict)  # name -> certifier factory block (conf/certify/)
    certify_batch_size: int = 100
    smoothing: Any = None                # randomized smoothing block for `python -m bench.certify --smoothing`


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    defense: Any = MISSING
    suite: Suite = field(default_factory=Suite)
    scenario: Any = MISSING
    attack: Any = None                # `+attack=NAME` / `+certify=NAME` compose one block of those groups
    certify: Any = None
    seed: int = MISSING
    progress: bool = MISSING
    validation: int = MISSING
    load_params: Optional[str] = MISSING
    distributed: bool = MISSING
    train: Train = field(default_factory=Train)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    reduced_of: Optional[str] = None  # set by reduced paper presets (conf/experiment/*_reduced.yaml)
    paper: Any = None                 # the reported numbers of a paper preset


def register() -> None:
    ConfigStore.instance().store(name="bench_schema", node=Config)
    from bench.scenarios import register_schemas  # each scenario's parameter types (group `scenario`)

    register_schemas()


register()
