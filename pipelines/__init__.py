"""Pipeline steps: one `python -m pipelines.<step>` per step, each a thin `main(config) -> dict`."""
