"""A JAX benchmark suite for machine-learning security (see README.md)."""

import os as _os
import uuid as _uuid

from omegaconf import OmegaConf as _OmegaConf

# `${unique:}` in conf/config.yaml's run and sweep folders: one value per process (its pid and a random part), so
# runs started in the same second never share a folder.
_UNIQUE = f"{_os.getpid()}{_uuid.uuid4().hex[:4]}"
_OmegaConf.register_new_resolver("unique", lambda: _UNIQUE, replace=True)

from bench import schema as _schema  # noqa: E402,F401  registers the structured config `bench_schema` with Hydra
