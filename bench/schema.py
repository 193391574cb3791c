"""The typed shape of a run's config (Hydra structured config): wrong types fail at compose time, before any work.

`conf/config.yaml` lists `bench_schema` first in its defaults, so every value it
and the command line set is checked against these dataclasses: `train.epochs=ten`
or `seed=1.5` is rejected before data are loaded. The config groups (dataset,
model, defense, suite, scenario) are `_target_` blocks checked when instantiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OverfitCheck:
    enabled: bool = False
    norm: str = "linf"
    eps: float = 0.3
    steps: int = 10
    step_size: Optional[float] = None
    n_examples: int = 200
    max_drop: float = 0.2
    floor: float = 0.0
    max_gap: Optional[float] = None
    restore: bool = True


@dataclass
class Train:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    overfit_check: OverfitCheck = field(default_factory=OverfitCheck)


@dataclass
class Checkpoint:
    dir: Optional[str] = "results/checkpoints"
    every_steps: int = 500
    resume: bool = True


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    defense: Any = MISSING
    suite: Any = MISSING
    scenario: Any = MISSING
    attack: Any = None                # `+attack=NAME` / `+certify=NAME` compose one block of those groups
    certify: Any = None
    seed: int = 0
    progress: bool = True
    load_params: Optional[str] = None
    distributed: bool = False
    train: Train = field(default_factory=Train)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    reduced_of: Optional[str] = None  # set by reduced paper presets (conf/experiment/*_reduced.yaml)
    paper: Any = None                 # the reported numbers of a paper preset


def register() -> None:
    ConfigStore.instance().store(name="bench_schema", node=Config)


register()
