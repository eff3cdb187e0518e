"""Which distributions the GPU check imports, and whether each is in the GPU image or carried in ``.whl``.

Run by ``bench/gpu/dry_run.sh`` on this CPU machine: it imports every module the check runs and
exercises the code paths that import lazily (a QLoRA and a padding-free LoRA step on the tiny model,
TRL's ``SFTTrainer``/``pack_dataset``, generation), then maps every loaded module to its
distribution. Exit status 1 when one is neither in ``bench/gpu/image_packages.txt`` nor carried.

    python bench/gpu/import_trace.py .whl
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(HERE)]
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")

from wheels import image_packages, wheel_name  # noqa: E402

CHECK_MODULES = (
    "bench_train", "check", "check_report", "default_model", "random_model", "wheels",
    "sft_pipeline.train", "sft_pipeline.train.levers", "sft_pipeline.testing", "sft_pipeline.evaluate",
    "sft_pipeline.evaluate.generate", "sft_pipeline.train.samples", "sft_pipeline.models",
    "trl", "peft", "bitsandbytes", "datasets", "pydantic", "gguf", "pytest", "xml.etree.ElementTree",
)


def exercise(assets: Path) -> None:
    """Run the lazily importing paths once, on the CPU, with the carried tokenizer."""
    import json

    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer, pack_dataset  # noqa: F401 - the TRL side of the benchmark

    from sft_pipeline import constants as C
    from sft_pipeline.config import ModelConfig, TrainConfig
    from sft_pipeline.evaluate import attach_adapter  # noqa: F401
    from sft_pipeline.evaluate.generate import generate
    from sft_pipeline.models import load_causal_lm, load_tokenizer
    from sft_pipeline.testing import make_tiny_model
    from sft_pipeline.train import train_model
    from sft_pipeline.train.samples import labelled_rows, pack_rows, toy_conversations, write_rows

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_tiny_model(tmp / "tiny", tokenizer_source=str(assets / "tokenizer"))
        rows = labelled_rows(AutoTokenizer.from_pretrained(model), toy_conversations(8), 64)
        write_rows(rows, tmp / "tok" / C.TRAIN_TOKENS_FILE)
        pack_rows(rows, 128)
        cfg = ModelConfig(name_or_path=str(model))
        for method, padding_free in (("qlora", "off"), ("lora", "on")):
            train_model(cfg, tmp / "tok", tmp / method, TrainConfig(method=method, max_steps=1, batch_size=2,
                        gradient_accumulation=1, padding_free=padding_free, save_steps=1), seed=0)
        generate(load_causal_lm(cfg), load_tokenizer(cfg), ["Hi"], batch_size=1, max_new_tokens=2)
        json.dumps({})


def distribution_of(module: str, owners: dict[str, list[str]]) -> str | None:
    top = module.split(".")[0]
    names = owners.get(top)
    return canonicalize_name(names[0]) if names else None


def main() -> int:
    wheels = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / ".whl")
    for name in CHECK_MODULES:
        importlib.import_module(name)
    exercise(wheels / "assets")
    image, carried = image_packages(), {wheel_name(w)[0] for w in wheels.glob("*.whl")}
    owners = md.packages_distributions()
    found: dict[str, str] = {}
    for module, obj in list(sys.modules.items()):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in found or not getattr(obj, "__file__", None):
            continue
        dist = distribution_of(module, owners)
        if dist is None:
            where = "this checkout" if str(REPO) in str(obj.__file__) else "no distribution (built in?)"
        elif dist in carried:
            where = "carried (.whl)"
        elif dist in image:
            where = "image"
        else:
            where = "MISSING"
        found[top] = f"{dist or '-'}: {where}"
    missing = sorted(k for k, v in found.items() if v.endswith("MISSING"))
    for top in sorted(found):
        print(f"  {top:28} {found[top]}")
    print(f"{len(found)} top-level modules imported; "
          + (f"MISSING from image and .whl: {', '.join(missing)}" if missing else "every one is in the image or carried"))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
