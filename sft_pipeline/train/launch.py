"""Command lines for multi-GPU training with ``accelerate launch`` (DDP or FSDP).

One GPU needs none of this: the Prefect task calls :func:`train_model` in-process.
For several GPUs on one machine the task runs, instead of ``run_train``::

    argv = accelerate_command("pipeline.yaml", tokenized_dir, out_dir, num_processes=4, strategy="fsdp")
    subprocess.run(argv, check=True)   # each rank runs ``python -m sft_pipeline.train``

Every rank trains on its shard of the batches (HF Trainer + accelerate); the
effective batch becomes ``batch_size * gradient_accumulation * num_processes``.
Rank 0 alone writes metrics, loss curve and the merged model; checkpoints are
written collectively, so resume works the same way. QLoRA under FSDP relies on
``bnb_4bit_quant_storage`` matching the compute dtype, which ``load_causal_lm`` sets.
Not exercised here (no multi-GPU machine was available); DDP is the simpler first choice.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Sequence

STRATEGIES = ("ddp", "fsdp")
FSDP_ARGS = (
    "--use_fsdp",
    "--fsdp_version", "2",
    "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
    "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
    "--fsdp_cpu_ram_efficient_loading", "true",
    "--fsdp_reshard_after_forward", "true",
)


def accelerate_command(
    config: str | Path,
    tokenized_dir: str | Path,
    out_dir: str | Path,
    *,
    num_processes: int,
    strategy: Literal["ddp", "fsdp"] = "ddp",
    overrides: Sequence[str] = (),
    mixed_precision: str = "bf16",
) -> list[str]:
    """The ``accelerate launch`` argv running the train stage on ``num_processes`` GPUs.

    >>> accelerate_command("p.yaml", "tok", "out", num_processes=2)[:8]
    ['accelerate', 'launch', '--num_processes', '2', '--mixed_precision', 'bf16', '--multi_gpu', '-m']
    >>> accelerate_command("p.yaml", "tok", "out", num_processes=2, overrides=["train.max_steps=5"])[-2:]
    ['--set', 'train.max_steps=5']
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if num_processes < 1:
        raise ValueError("num_processes must be at least 1")
    argv = ["accelerate", "launch", "--num_processes", str(num_processes), "--mixed_precision", mixed_precision]
    argv += ["--multi_gpu"] if strategy == "ddp" else list(FSDP_ARGS)
    argv += ["-m", "sft_pipeline.train", "--config", str(config), "--tokenized", str(tokenized_dir), "--out", str(out_dir)]
    for item in overrides:
        argv += ["--set", item]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sft_pipeline.train --config C --tokenized DIR --out DIR [--set k=v ...]`` (one rank)."""
    import argparse
    import json

    from sft_pipeline.config import load_config
    from sft_pipeline.errors import PipelineError
    from sft_pipeline.train.trainer import train_model

    parser = argparse.ArgumentParser(prog="python -m sft_pipeline.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline YAML config")
    parser.add_argument("--tokenized", required=True, help="tokenize stage output folder")
    parser.add_argument("--out", required=True, help="train stage output folder (checkpoints live here)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        counts = train_model(cfg.model, Path(args.tokenized), Path(args.out), cfg.train, seed=cfg.run.seed)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts, sort_keys=True))
    return 0
