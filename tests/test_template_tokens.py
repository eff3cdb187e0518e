"""Untrained chat-template tokens: found by their row norm, trained as PEFT token rows, saved and loaded back,
and exact in the supervised-positions loss."""

from __future__ import annotations

import pytest
import torch

from sft_pipeline import constants, supervised_head
from sft_pipeline.config import ModelConfig, TrainConfig
from sft_pipeline.train import TrainJob
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows
from sft_pipeline.train.template_tokens import ALL, choose, template_token_ids, untrained_rows
from sft_pipeline.train.trainer import train_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_the_templates_control_tokens_are_found(tiny_tokenizer):
    names = [tiny_tokenizer.convert_ids_to_tokens(i) for i in template_token_ids(tiny_tokenizer)]
    assert names == ["<|im_start|>", "<|im_end|>"]  # SmolLM2's ChatML


def test_a_row_far_below_the_typical_norm_is_untrained_and_a_trained_one_is_not(tiny, tiny_tokenizer):
    weight = tiny.get_input_embeddings().weight.detach().clone()
    start, end = template_token_ids(tiny_tokenizer)
    # The tiny model's pad token is its end-of-turn token, and nn.Embedding initialises the pad row to zero:
    # exactly a row no training ever reached.
    assert float(weight[end].norm()) == 0.0
    assert untrained_rows(weight, [start, end], 0.5) == [end]
    weight[start] *= 0.1
    assert untrained_rows(weight, [start, end], 0.5) == [start, end]
    assert choose(tiny, tiny_tokenizer, ALL, 0.5) == [start, end]
    assert choose(tiny, tiny_tokenizer, "none", 0.5) == []


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenized")
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(8), 64), folder / constants.TRAIN_TOKENS_FILE)
    out = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(max_steps=3, batch_size=2, gradient_accumulation=1, learning_rate=1e-2, warmup_ratio=0.0,
                      save_steps=3, template_tokens="untrained")
    train_model(TrainJob(ModelConfig(name_or_path=str(tiny_model_dir)), cfg, folder, out, seed=0))
    return out / constants.ADAPTER_DIR


def test_trained_token_rows_are_saved_and_loaded_back(trained, tiny, tiny_tokenizer):
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file

    saved = load_file(trained / "adapter_model.safetensors")
    rows = [v for k, v in saved.items() if "trainable_tokens_delta" in k]
    assert len(rows) == 1 and rows[0].shape == (1, tiny.config.hidden_size) and rows[0].dtype == torch.float32
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert float(rows[0].norm()) > 0, "the zero row of <|im_end|> must have trained"
    loaded = AutoPeftModelForCausalLM.from_pretrained(trained).merge_and_unload()
    assert torch.equal(loaded.get_input_embeddings().weight[end], rows[0][0])
    assert torch.equal(loaded.get_output_embeddings().weight[end], rows[0][0]), "tied: the head row moves with it"
    others = torch.ones(tiny.config.vocab_size, dtype=torch.bool)
    others[end] = False
    assert torch.equal(loaded.get_input_embeddings().weight[others], tiny.get_input_embeddings().weight[others])


def test_the_supervised_head_loss_equals_the_full_logits_loss_with_trained_rows(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[5, 7],
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "trainable_tokens_delta" in name:
                param.add_(torch.randn_like(param))  # rows unlike the base's, so using the base's would show
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :4] = constants.IGNORE_INDEX
    labels[0, 6], labels[1, 8] = 7, 5  # targets on the trained rows
    reference = peft(input_ids=ids, labels=labels).loss  # full logits through PEFT's wrapped head
    supervised_head.attach(peft)
    ours = peft(input_ids=ids, labels=labels, fused_lm_head=True)
    assert torch.allclose(ours.loss, reference, rtol=1e-5)
    ours.loss.backward()
    grads = [p.grad for n, p in peft.named_parameters() if "trainable_tokens_delta" in n]
    assert grads and float(grads[0].abs().sum()) > 0
