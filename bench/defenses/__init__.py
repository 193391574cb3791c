"""Defenses: training objectives `(params, batch, key, step) -> (loss, aux)`.

Each is a factory taking `logits_fn` (and plain hyper-parameters) and returning
the objective that `bench.train.train` minimises. Adding one:
`bench/defenses/<name>.py`, `conf/defense/<name>.yaml`, one line in DEFENSES.
"""

from bench.defenses.standard import standard

DEFENSES = {
    "standard": standard,
}

__all__ = ["DEFENSES", "standard"]
