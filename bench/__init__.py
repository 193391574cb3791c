"""A JAX benchmark suite for machine-learning security (see README.md)."""

from bench import schema as _schema  # noqa: F401  registers the structured config `bench_schema` with Hydra
