"""Prefect tasks: thin, cached, retryable wrappers over `sft_pipeline.stages`."""
