"""Which distributions the GPU check imports, and whether each is in the GPU image or carried in ``.whl``.

Run by ``bench/gpu/dry_run.sh`` on this CPU machine: it imports every module the check runs and
exercises the code paths that import lazily (a QLoRA and a padding-free LoRA step on the tiny model,
TRL's ``SFTTrainer``/``pack_dataset``, generation), then maps every loaded module to its
distribution. Exit status 1 when one is neither in ``bench/gpu/image_packages.txt`` nor carried.

    python bench/gpu/import_trace.py .whl
"""

from __future__ import annotations

import importlib
import importlib.abc
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
    "bench_train", "check", "check_report", "default_model", "random_model", "wheels", "train_report", "windows",
    "sft_pipeline.train", "sft_pipeline.train.levers", "sft_pipeline.train.memory", "sft_pipeline.train.fitting",
    "sft_pipeline.tiny_model", "sft_pipeline.evaluate",
    "sft_pipeline.evaluate.generate", "sft_pipeline.train.samples", "sft_pipeline.models",
    "trl", "peft", "bitsandbytes", "datasets", "pydantic", "gguf", "pytest", "xml.etree.ElementTree",
)


def exercise(assets: Path) -> None:
    """Run the lazily importing paths once, on the CPU, with the carried tokenizer."""
    import json

    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer, pack_dataset  # noqa: F401 - the TRL side of the benchmark

    from sft_pipeline import constants
    from sft_pipeline.config import ModelConfig, TrainConfig
    from sft_pipeline.evaluate.model_eval import attach_adapter  # noqa: F401
    from sft_pipeline.evaluate.generate import generate
    from sft_pipeline.models import load_causal_lm, load_tokenizer
    from sft_pipeline.tiny_model import make_tiny_model
    from sft_pipeline.train import TrainJob
    from sft_pipeline.train.samples import labelled_rows, pack_rows, toy_conversations, write_rows
    from sft_pipeline.train.trainer import train_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_tiny_model(tmp / "tiny", assets / "tokenizer")
        rows = labelled_rows(AutoTokenizer.from_pretrained(model), toy_conversations(8), 64)
        write_rows(rows, tmp / "tok" / constants.TRAIN_TOKENS_FILE)
        pack_rows(rows, 128)
        cfg = ModelConfig(name_or_path=str(model))
        for method, padding_free in (("qlora", "off"), ("lora", "on")):
            train_cfg = TrainConfig(method=method, max_steps=1, batch_size=2, gradient_accumulation=1,
                                    padding_free=padding_free, save_steps=1)
            train_model(TrainJob(cfg, train_cfg, tmp / "tok", tmp / method, seed=0))
        generate(load_causal_lm(cfg), load_tokenizer(cfg), ["Hi"], batch_size=1, max_new_tokens=2)
        exercise_default_model(assets, tmp)
        json.dumps({})


def exercise_default_model(assets: Path, tmp: Path) -> None:
    """The default model's paths: its carried config and tokenizer, a small Gemma 3 planned and run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    from default_model import GEMMA3_TEMPLATES, tokenizer_folder, trl_template
    from random_model import flops_per_token, model_config
    from sft_pipeline.config import LoraSection
    from sft_pipeline.train.memory import plan_model
    from sft_pipeline.train.samples import label_conversation, toy_conversations

    flops_per_token(model_config("gemma3-270m", assets), 512)
    folder, carried = tokenizer_folder(assets, tmp)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if carried:
        label_conversation(tokenizer, toy_conversations(1)[0], 64, trl_template(GEMMA3_TEMPLATES[1]))
    small = Gemma3TextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    plan_model(small, "qlora", LoraSection(), torch.float32, "cpu")
    AutoModelForCausalLM.from_config(small)(torch.tensor([[1, 2, 3]]))


class FirstImporter(importlib.abc.MetaPathFinder):
    """Records, for each top-level module, the module whose code first imported it."""

    def __init__(self):
        self.by: dict[str, str] = {}

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        if top not in self.by:
            frame = sys._getframe(1)
            while frame and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                frame = frame.f_back
            self.by[top] = frame.f_globals.get("__name__", "?") if frame else "?"
        return None


def distribution_of(module: str, owners: dict[str, list[str]]) -> str | None:
    top = module.split(".")[0]
    names = owners.get(top)
    return canonicalize_name(names[0]) if names else None


def classify(top: str, ctx: dict, seen: frozenset = frozenset()) -> str:
    """Where a top-level module comes from on the GPU machine.

    A module neither in the image nor carried is missing, unless an image package imported it (maybe
    through other such modules): an image package's imports are its own business there, and this venv
    may hold another version of it with other optional imports (huggingface_hub's HTTP client, torch's
    optional redis cache, ...).
    """
    module = sys.modules.get(top)
    source = str(getattr(module, "__file__", ""))
    if source.startswith(str(REPO)) and not source.startswith(sys.prefix):  # the venv may live in the checkout
        return "this checkout"
    dist = distribution_of(top, ctx["owners"])
    if dist is None:
        return "no distribution (built in?)"
    if dist in ctx["carried"]:
        return f"{dist}: carried (.whl)"
    if dist in ctx["image"]:
        return f"{dist}: image"
    importer = ctx["by"].get(top, "?").split(".")[0]
    via = classify(importer, ctx, seen | {top}) if importer not in seen | {top, "?"} else "MISSING"
    if via.endswith(": image") or via.startswith("not needed"):
        return f"not needed: {dist}, imported by {ctx['by'][top]} (an image package's own import)"
    return f"{dist}: MISSING (first imported by {ctx['by'].get(top, '?')})"


def main() -> int:
    wheels = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / ".whl")
    importers = FirstImporter()
    sys.meta_path.insert(0, importers)
    for name in CHECK_MODULES:
        importlib.import_module(name)
    exercise(wheels / "assets")
    image, carried = image_packages(), {wheel_name(w)[0] for w in wheels.glob("*.whl")}
    owners = md.packages_distributions()
    ctx = {"owners": owners, "image": image, "carried": carried, "by": importers.by}
    found: dict[str, str] = {}
    for module, obj in list(sys.modules.items()):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in found or not getattr(obj, "__file__", None):
            continue
        found[top] = classify(top, ctx)
    missing = sorted(k for k, v in found.items() if "MISSING" in v)
    for top in sorted(found):
        print(f"  {top:30} {found[top]}")
    print(f"{len(found)} top-level modules imported; "
          + (f"MISSING from image and .whl: {', '.join(missing)}" if missing else "none is missing (each is in the image, carried, this checkout, or an image package's own import)"))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
