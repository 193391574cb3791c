"""Every config file under conf/ composes, and every `_target_` in it resolves and accepts its arguments."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from bench import models
from bench.evaluate import build_suite

CONF = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_GROUPS = {"dataset", "model", "defense", "suite", "scenario", "debug"}
OPTIONS = sorted((p.parent.relative_to(CONF).as_posix(), p.stem) for p in CONF.glob("*/**/*.yaml")
                 if p.parent.name != "launcher")


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=overrides)


def _targets(node, path="cfg"):
    """Yield (path, target, kwargs) for every node with a `_target_`."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node["_target_"], {k: v for k, v in node.items() if not k.startswith("_")}
        for k, v in node.items():
            yield from _targets(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def test_there_are_configs():
    groups = {g for g, _ in OPTIONS}
    assert {"dataset", "model", "defense", "attack", "suite"} <= groups


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_config_composes_and_targets_resolve(group, option):
    prefix = "" if group in DEFAULT_GROUPS else "+"
    cfg = _compose([f"{prefix}{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    found = list(_targets(container))
    for path, target, kwargs in found:
        obj = get_object(target)
        assert callable(obj), f"{path}: {target} is not callable"
        inspect.signature(obj).bind_partial(**kwargs)  # every configured key is a real parameter

    # The groups every run instantiates: model, defense and the suite's attacks.
    model = instantiate(cfg.model, num_classes=10, mean=(0.5,), std=(0.25,))
    logits_fn = models.make_logits_fn(model)
    defense_kwargs = {"logits_fn": logits_fn}
    if "model" in inspect.signature(get_object(cfg.defense._target_)).parameters:
        defense_kwargs["model"] = model
    objective = instantiate(cfg.defense, _partial_=True)(**defense_kwargs)  # as bench/__main__.py does
    assert callable(objective)
    factories = {name: instantiate(a) for name, a in cfg.suite.attacks.items()}
    assert factories and all(callable(a) for a in build_suite(factories, cfg.suite.norm, list(cfg.suite.eps)).values())
    if group == "attack":
        attack = instantiate(cfg.attack)
        supported = []
        for norm, eps in (("linf", 0.1), ("l2", 1.0)):
            try:
                supported.append(callable(attack(norm=norm, eps=eps)))
            except Exception as err:  # an attack may support one norm only, with a clear error for the other
                assert "norm" in str(err).lower()
        assert any(supported)
