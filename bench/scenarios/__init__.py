"""Scenarios: one file per threat family, one yaml, one line in SCENARIOS (ARCHITECTURE.md, "Adding a scenario").

A scenario is a dataclass of its typed parameters (conf/scenario/<name>.yaml fills
them; a wrong type fails at compose time) with
- `name`: the records' `scenario` column; `streams`: its named random streams;
- `run(experiment) -> Result`: the work, on the prepared `bench.experiment.Experiment`;
- `defense_label(defense) -> str`: the records' `defense` column for the configured defense;
- `table(frame)` and `write_tables(frame, out)`: its table from records (used by the entry point and the report).
"""

import importlib

from hydra.core.config_store import ConfigStore


def _load(target: str):
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


# Every registered scenario, one line each; tests/test_scenarios.py holds this table equal to the `_target_`s
# under conf/scenario/.
SCENARIOS = {name: _load(target) for name, target in {
    "evasion": "bench.scenarios.evasion.Evasion",
    "privacy": "bench.scenarios.privacy.Privacy",
    "poisoning": "bench.scenarios.poisoning.Poisoning",
    "physical": "bench.scenarios.physical.Physical",
    "transfer": "bench.scenarios.transfer.Transfer",
    "blackbox": "bench.scenarios.blackbox.BlackBox",
    "theft": "bench.scenarios.theft.Theft",
}.items()}


def register_schemas() -> None:
    """Each scenario's dataclass as the schema `<name>_schema` of the config group `scenario`."""
    for name, cls in SCENARIOS.items():
        ConfigStore.instance().store(group="scenario", name=f"{name}_schema", node=cls)


register_schemas()

__all__ = ["SCENARIOS", "register_schemas"]
