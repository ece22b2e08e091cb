"""ScratchGPT inside the Hugging Face ecosystem: Auto classes, remote code, pipeline, Trainer, GPT-2 interop."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    pipeline,
)

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from scratch_gpt.convert import to_gpt2

PROBE = [[5, 17, 42, 99, 3, 250, 7, 8]]


def test_save_pretrained_writes_safetensors_auto_map_and_code(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_scratch_gpt.py", "configuration_scratch_gpt.py"} <= names
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_scratch_gpt.ScratchGPTForCausalLM"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded(torch.tensor(PROBE)).logits, tiny_model(torch.tensor(PROBE)).logits)


def test_remote_code_loads_without_the_package(tmp_path, tiny_model, run_without_scratch_gpt):
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    expected = tiny_model(torch.tensor(PROBE)).logits
    out = run_without_scratch_gpt(
        f"""
import json, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
print(json.dumps({{"class": type(model).__module__, "logits": model(torch.tensor({PROBE})).logits.tolist()}}))
"""
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert not result["class"].startswith("scratch_gpt")
    assert torch.equal(torch.tensor(result["logits"]), expected)


def test_text_generation_pipeline_on_a_saved_model(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path), tokenizer=str(tmp_path), device="cpu")
    text = generator("The quick brown", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The quick brown") and len(text) > len("The quick brown")


def test_transformers_trainer_trains_it(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", vocab_size=len(tiny_tokenizer)))
    block = tiny_tokenizer("the quick brown fox jumps over the lazy dog " * 4)["input_ids"][:32]
    data = [{"input_ids": block, "labels": block}] * 16
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=12, learning_rate=3e-3,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] - 1.0


# ---------------------------------------------------------------------------- classification head
def test_classifier_pools_the_last_real_token_for_left_and_right_padding(tiny_config):
    torch.manual_seed(0)
    model = ScratchGPTForSequenceClassification(ScratchGPTConfig.from_preset("tiny", num_labels=3)).eval()
    tokens = [7, 8, 9, 10]
    alone = model(torch.tensor([tokens])).logits
    right = model(torch.tensor([tokens + [1, 1]]), attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
    left = model(torch.tensor([[1, 1] + tokens]), attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]])).logits
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    loss = model(torch.tensor([tokens]), labels=torch.tensor([2])).loss
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(alone, torch.tensor([2])))


def test_classifier_returns_hidden_states_attentions_and_tuples(tiny_config):
    model = ScratchGPTForSequenceClassification(tiny_config).eval()
    x = torch.tensor(PROBE)
    out = model(x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == tiny_config.num_hidden_layers + 1 and len(out.attentions) == tiny_config.num_hidden_layers
    torch.testing.assert_close(model(x, return_dict=False)[0], out.logits)  # eager (weights) vs sdpa: not bit-equal


def test_classifier_from_a_causal_lm_folder_reuses_the_body(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1}
    )
    assert isinstance(classifier, ScratchGPTForSequenceClassification)
    torch.testing.assert_close(classifier.model.layers[1].mlp.fc_in.weight, tiny_model.model.layers[1].mlp.fc_in.weight)
    assert classifier.score.weight.shape == (2, 64)


def test_text_classification_pipeline_returns_label_names(tmp_path, tiny_tokenizer):
    config = ScratchGPTConfig.from_preset("tiny", vocab_size=len(tiny_tokenizer), id2label={0: "ham", 1: "spam"})
    config.label2id = {"ham": 0, "spam": 1}
    ScratchGPTForSequenceClassification(config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    classify = pipeline("text-classification", model=str(tmp_path), device="cpu")
    assert classify("hello world")[0]["label"] in {"ham", "spam"}


# ---------------------------------------------------------------------------- GPT-2 in and out
@pytest.fixture
def local_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def test_from_gpt2_matches_gpt2_logits_and_greedy_generations(tmp_path, local_gpt2):
    local_gpt2.save_pretrained(tmp_path)
    ours = ScratchGPTForCausalLM.from_gpt2(tmp_path)
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    assert (ours(x).logits - local_gpt2(x).logits).abs().max() < 1e-5
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(x[:, :6], **kwargs), local_gpt2.generate(x[:, :6], **kwargs))


def test_from_pretrained_converts_a_gpt2_folder_and_saves_a_scratch_gpt_folder(tmp_path, local_gpt2):
    local_gpt2.save_pretrained(tmp_path / "gpt2")
    ours = ScratchGPTForCausalLM.from_pretrained(tmp_path / "gpt2")
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    assert (ours(x).logits - local_gpt2(x).logits).abs().max() < 1e-5
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(x[:, :6], **kwargs), local_gpt2.generate(x[:, :6], **kwargs))
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == "scratch_gpt" and (tmp_path / "ours" / "modeling_scratch_gpt.py").is_file()
    assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "ours")(x).logits, ours(x).logits)
    assert ScratchGPTForCausalLM.from_pretrained(tmp_path / "gpt2", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_classifier_from_a_gpt2_hub_id_gets_a_fresh_head_on_the_same_body(tmp_path, local_gpt2):
    from scratch_gpt.hub import add_to_hub_cache

    local_gpt2.save_pretrained(tmp_path / "gpt2")
    add_to_hub_cache(tmp_path / "gpt2", "owner/tiny-gpt2", cache_dir=tmp_path / "cache")  # offline, as if downloaded
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    classifier = ScratchGPTForSequenceClassification.from_pretrained(
        "owner/tiny-gpt2", cache_dir=tmp_path / "cache", num_labels=3, id2label=labels, pad_token_id=0
    )
    assert classifier.config.id2label == labels and classifier.config.pad_token_id == 0
    assert classifier.score.weight.shape == (3, 32) and not hasattr(classifier, "lm_head")
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    body = classifier.model(x).last_hidden_state
    assert torch.allclose(body, local_gpt2.transformer(x).last_hidden_state, atol=1e-5, rtol=0)
    assert classifier(x).logits.shape == (2, 3)


def test_a_checkpoint_of_another_model_type_gives_one_clear_error(tmp_path, run_without_scratch_gpt):
    GPT2Config(n_layer=1).save_pretrained(tmp_path / "gpt2")
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match="model type 'bert'; it reads scratch_gpt, gpt2"):
        ScratchGPTForSequenceClassification.from_pretrained(tmp_path / "bert")
    # As remote code without the package, no converter is registered: GPT-2 is refused the same way.
    ours = tmp_path / "ours"
    ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny")).save_pretrained(ours)
    out = run_without_scratch_gpt(
        f"""
from transformers import AutoModelForCausalLM
model_class = type(AutoModelForCausalLM.from_pretrained({str(ours)!r}, trust_remote_code=True))
try:
    model_class.from_pretrained({str(tmp_path / "gpt2")!r})
except ValueError as error:
    print(error)
"""
    )
    assert "model type 'gpt2'; it reads scratch_gpt (install the scratch_gpt package" in out


def test_importing_scratch_gpt_fills_the_modeling_hooks():
    from scratch_gpt import convert, hub, modeling_scratch_gpt

    assert modeling_scratch_gpt.CHECKPOINT_CONVERTERS["gpt2"] is convert.convert_gpt2
    assert modeling_scratch_gpt.PUSH_TO_HUB is hub.push_model


def test_export_round_trip_is_exact(tiny_model):
    gpt2 = to_gpt2(tiny_model)
    x = torch.tensor(PROBE)
    assert (gpt2(x).logits - tiny_model(x).logits).abs().max() < 1e-5
    back = ScratchGPTForCausalLM.from_gpt2(gpt2)
    assert torch.equal(back(x).logits, tiny_model(x).logits)


def test_export_without_qkv_bias():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", qkv_bias=False)).eval()
    x = torch.tensor(PROBE)
    assert (to_gpt2(model)(x).logits - model(x).logits).abs().max() < 1e-5


def test_export_gpt2_command_writes_a_plain_gpt2_folder(tmp_path, tiny_model, tiny_tokenizer, run_without_scratch_gpt):
    source, target = tmp_path / "ours", tmp_path / "gpt2"
    tiny_model.save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    done = subprocess.run(
        [sys.executable, "-m", "scratch_gpt.cli", "export-gpt2", str(source), str(target)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((target / "config.json").read_text())["model_type"] == "gpt2"
    expected = tiny_model(torch.tensor(PROBE)).logits
    out = run_without_scratch_gpt(
        f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(target)!r})  # no trust_remote_code
AutoTokenizer.from_pretrained({str(target)!r})
print(json.dumps({{"class": type(model).__name__, "logits": model(torch.tensor({PROBE})).logits.tolist()}}))
"""
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["class"] == "GPT2LMHeadModel"
    assert (torch.tensor(result["logits"]) - expected).abs().max() < 1e-5


def test_export_gpt2_command_rejects_a_folder_without_config(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "scratch_gpt.cli", "export-gpt2", str(tmp_path), str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert "No config.json" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_pickle_weights_load_only_when_asked(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=False)  # opt-in, weights_only=True
    assert torch.equal(loaded(torch.tensor(PROBE)).logits, tiny_model(torch.tensor(PROBE)).logits)
