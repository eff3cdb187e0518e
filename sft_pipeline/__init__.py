"""sft-pipeline: a data-to-model supervised fine-tuning library.

The library is orchestrator-free: nothing here imports Prefect. Prefect tasks in
``tasks/`` are thin wrappers around the stage functions of this package.
"""

__version__ = "0.1.0"
