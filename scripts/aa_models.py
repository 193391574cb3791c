"""The two cnn_small models the AutoAttack comparisons attack (scripts/peer_autoattack.py, scripts/square_schedule.py).

Imported from scripts/ (which Python puts on sys.path); needs no torch.
"""

from __future__ import annotations

import jax

from bench import models, train
from bench.defenses import pgd_at, standard


def train_model(d, seed: int, defense: str, epochs: int):
    """A cnn_small trained on mnist5k: "standard" or "pgd_at" (PGD-10, eps 0.3, warm-up over a quarter)."""
    model = models.cnn_small(d.num_classes, d.mean, d.std)
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(seed), d.image_shape)
    per_epoch = train.steps_per_epoch(len(d.y_train), 64)
    if defense == "standard":
        objective = standard(logits_fn)
    else:
        objective = pgd_at(logits_fn, eps=0.3, steps=10, warmup_steps=(epochs * per_epoch) // 4)
    optimizer = train.make_optimizer("adam", 1e-3, "cosine", epochs * per_epoch)
    params, _ = train.train(objective, params, optimizer, d.x_train, d.y_train, epochs=epochs, batch_size=64,
                            key=jax.random.key(seed + 1), progress=False)
    return logits_fn, params
