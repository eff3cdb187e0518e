"""Prefect flows: `sft` (the whole pipeline) and `sft-train` (training on a GPU work pool)."""
