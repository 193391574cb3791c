"""Examples (not part of the `bench` package): run them from the repository root."""
