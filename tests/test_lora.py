"""LoRA (stage 7.0): PEFT adapters on ScratchGPT's projections, trained, merged, saved and loaded."""

import pytest
import torch
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, PeftModel, get_peft_model

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from scratch_gpt.lora import DEFAULT_TARGETS, count_parameters, describe_trainable, lora_config

VOCAB = 96


def tiny_config(**overrides) -> ScratchGPTConfig:
    return ScratchGPTConfig.from_preset(
        "tiny",
        vocab_size=VOCAB,
        hidden_size=32,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        **overrides,
    )


@pytest.fixture
def base_dir(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "base"
    ScratchGPTForCausalLM(tiny_config()).save_pretrained(path)
    return path


def batch(seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0  # one right-padded row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def train_a_few_steps(model, labels, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def frozen_state(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}


def test_lora_config_defaults_and_bad_values():
    causal = lora_config()
    assert set(causal.target_modules) == set(DEFAULT_TARGETS)
    assert (causal.r, causal.lora_alpha, causal.lora_dropout) == (8, 16, 0.0)
    assert causal.modules_to_save is None
    assert lora_config("classification").modules_to_save == ["score"]
    with pytest.raises(ValueError, match="Unknown LoRA task"):
        lora_config("translation")
    with pytest.raises(ValueError, match="c_attn"):
        lora_config(targets=("c_attn",))
    with pytest.raises(ValueError, match="rank"):
        lora_config(r=0)


def test_causal_lora_trains_only_adapters_and_merges_exactly(base_dir):
    model = get_peft_model(ScratchGPTForCausalLM.from_pretrained(base_dir), lora_config(r=4, alpha=8))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    # every block's four projections got an adapter pair
    assert len(trainable) == 2 * len(DEFAULT_TARGETS) * model.config.num_hidden_layers
    trainable_count, total = count_parameters(model)
    assert describe_trainable(model).startswith(f"trainable params: {trainable_count:,} || all params: {total:,}")

    frozen_before = frozen_state(model)
    inputs = batch()
    base_logits = model(**inputs).logits.detach()
    train_a_few_steps(model, labels=inputs["input_ids"])
    for name, value in frozen_state(model).items():
        assert torch.equal(value, frozen_before[name]), f"{name} changed although it is frozen"

    adapted = model(**inputs).logits.detach()
    assert not torch.allclose(adapted, base_logits)  # the adapters learned something
    merged = model.merge_and_unload()
    assert type(merged) is ScratchGPTForCausalLM
    torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-5, rtol=0)


def test_classifier_lora_keeps_new_head_trainable_and_merges_exactly(base_dir):
    classifier = ScratchGPTForSequenceClassification.from_pretrained(base_dir, num_labels=3)
    model = get_peft_model(classifier, lora_config("classification"))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    heads = [name for name in trainable if "lora_" not in name]
    assert heads == ["base_model.model.score.modules_to_save.default.weight"]

    inputs = batch()
    frozen_before = frozen_state(model)
    train_a_few_steps(model, labels=torch.tensor([0, 1, 2]))
    for name, value in frozen_state(model).items():
        assert torch.equal(value, frozen_before[name]), f"{name} changed although it is frozen"

    adapted = model(**inputs).logits.detach()
    merged = model.merge_and_unload()
    assert type(merged) is ScratchGPTForSequenceClassification
    torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-5, rtol=0)


def test_adapters_save_and_load_with_peft_and_auto_peft(base_dir, tmp_path):
    inputs = batch()
    causal = get_peft_model(ScratchGPTForCausalLM.from_pretrained(base_dir), lora_config())
    train_a_few_steps(causal, labels=inputs["input_ids"])
    expected = causal(**inputs).logits.detach()
    causal.save_pretrained(tmp_path / "causal-adapter")
    assert (tmp_path / "causal-adapter" / "adapter_model.safetensors").is_file()

    reloaded = PeftModel.from_pretrained(ScratchGPTForCausalLM.from_pretrained(base_dir), tmp_path / "causal-adapter")
    torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-6, rtol=0)
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "causal-adapter")
    torch.testing.assert_close(auto(**inputs).logits, expected, atol=1e-6, rtol=0)

    classifier = get_peft_model(
        ScratchGPTForSequenceClassification.from_pretrained(base_dir, num_labels=2), lora_config("classification")
    )
    train_a_few_steps(classifier, labels=torch.tensor([0, 1, 1]))
    expected = classifier(**inputs).logits.detach()
    classifier.save_pretrained(tmp_path / "classifier-adapter")
    # The trained head is saved with the adapter; the base folder is the causal LM.
    auto = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "classifier-adapter", num_labels=2)
    torch.testing.assert_close(auto(**inputs).logits, expected, atol=1e-6, rtol=0)


def test_plain_peft_lora_config_finds_the_default_targets():
    from peft import LoraConfig

    model = get_peft_model(ScratchGPTForCausalLM(tiny_config()), LoraConfig(task_type="CAUSAL_LM", r=4))
    adapted = {name.split(".base_layer")[0].rsplit(".", 1)[-1] for name, _ in model.named_modules() if name.endswith("base_layer")}
    assert adapted == set(DEFAULT_TARGETS)


def test_the_lora_targets_flag_defaults_to_every_target_peft_knows():
    """`--lora-targets` is declared in args.py, which cannot import this torch module: the two lists must agree."""
    from scratch_gpt.args import LoraOptions
    from scratch_gpt.lora import ALL_TARGETS

    assert LoraOptions().lora_targets.split(",") == list(ALL_TARGETS)
