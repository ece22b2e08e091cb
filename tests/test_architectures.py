"""From GPT-2 to Llama 3 and Qwen3: the config switches against transformers' own classes.

Small, randomly initialised LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM folders are
written to tmp folders, read as ScratchGPT, and written back out as the native classes.
"""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from scratch_gpt.cli import main

NATIVE = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
SMALL = dict(
    vocab_size=512, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
    num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=1,
)
# Each family with what sets it apart: Llama 3's rope scaling, untied head, MLP bias; Qwen2's q/k/v
# bias; Qwen3's QK-norm and a head size of its own (6 heads x 16 != 48).
EXTRA = {
    "llama": dict(
        tie_word_embeddings=False, mlp_bias=True, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
    ),
    "qwen2": dict(tie_word_embeddings=True, rope_theta=1000000.0),
    "qwen3": dict(tie_word_embeddings=True, head_dim=16, rope_theta=1000000.0),
}


def native_model(model_type: str, **overrides):
    config_class, model_class = NATIVE[model_type]
    torch.manual_seed(0)
    model = model_class(config_class(**{**SMALL, **EXTRA[model_type], **overrides}))
    with torch.no_grad():  # larger than the 0.02 init, so that logits differ by more than rounding
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.ndim > 1 else 0.3))
    return model.eval()


@pytest.fixture(scope="module", params=list(NATIVE))
def converted(request, tmp_path_factory):
    """(native model, the ScratchGPT read from its saved folder, the folder)."""
    native = native_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    native.save_pretrained(folder)
    return native, ScratchGPTForCausalLM.from_pretrained(folder).eval(), folder


PROMPTS = [[5, 9, 23, 7, 301, 44, 12], [77, 3], [400, 2, 19, 66]]


# ---------------------------------------------------------------------------------------- presets
PUBLISHED = {  # preset -> (native config of the published model, published parameter count)
    "smollm2-135m": (
        LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000.0),
        134_515_008,
    ),
    "qwen3-0.6b": (
        Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True, rope_theta=1000000.0),
        596_049_920,
    ),
    "llama-3.2-1b": (
        LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, max_position_embeddings=131072, tie_word_embeddings=True, rope_theta=500000.0,
                    rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192)),
        1_235_814_400,
    ),
}


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_presets_have_the_published_parameter_counts(preset):
    native_config, published = PUBLISHED[preset]
    with torch.device("meta"):
        ours = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset(preset))
        native = AutoModelForCausalLM.from_config(native_config)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731 (tied weights once)
    assert count(ours) == count(native) == published
    # the converted config of the published shape is the preset
    from scratch_gpt.convert import config_from_llama

    converted = config_from_llama(native_config)
    for name in ("num_key_value_heads", "head_dim", "intermediate_size", "qk_norm", "rope_parameters", "tie_word_embeddings"):
        assert getattr(converted, name) == getattr(ours.config, name), name


def test_llama3_rope_scaling_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from scratch_gpt.modeling_scratch_gpt import rope_inv_freq

    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](PUBLISHED["llama-3.2-1b"][0], "cpu")
    torch.testing.assert_close(rope_inv_freq(ScratchGPTConfig.from_preset("llama-3.2-1b")), expected, atol=0, rtol=1e-6)


def test_inconsistent_shapes_raise_at_construction_with_the_numbers():
    with pytest.raises(ValueError, match=r"num_attention_heads \(12\) must be divisible by num_key_value_heads \(5\)"):
        ScratchGPTConfig(num_key_value_heads=5)
    with pytest.raises(ValueError, match=r"RoPE type 'yarn'"):
        ScratchGPTConfig(position_embedding_type="rope", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="norm_type 'batchnorm'"):
        ScratchGPTConfig(norm_type="batchnorm")
    with pytest.raises(ValueError, match=r"Preset .smollm2-135m. shares each key/value head among 3"):
        ScratchGPTConfig.from_preset("smollm2-135m", hidden_size=64, num_attention_heads=4)


# ------------------------------------------------------------------------------- checkpoints in
def test_logits_match_the_native_model(converted):
    native, ours, _ = converted
    ids = torch.tensor([PROMPTS[0] * 3])
    with torch.no_grad():
        expected, got = native(ids).logits, ours(ids).logits
    assert expected.abs().max() > 0.1  # not a near-zero output that any model would match
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in native.parameters())


def test_greedy_generation_and_the_kv_cache_match(converted):
    native, ours, _ = converted
    ids = torch.tensor([PROMPTS[0]])
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=1, eos_token_id=None)
    assert torch.equal(ours.generate(ids, **kwargs), native.generate(ids, **kwargs))
    # cached decoding equals one forward over the whole sequence
    full = torch.tensor([PROMPTS[0] + PROMPTS[2]])
    with torch.no_grad():
        whole = ours(full).logits
        first = ours(full[:, :7], use_cache=True)
        rest = ours(full[:, 7:], cache=first.cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], dim=1), whole, atol=1e-5, rtol=0)


def test_a_left_padded_batch_equals_each_prompt_alone(converted):
    native, ours, _ = converted
    length = max(map(len, PROMPTS))
    ids = torch.tensor([[1] * (length - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in PROMPTS])
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=1, eos_token_id=None)
    batch = ours.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, length:]
    with torch.no_grad():
        last = ours(input_ids=ids, attention_mask=mask).logits[:, -1]
    for row, prompt in enumerate(PROMPTS):
        alone = torch.tensor([prompt])
        assert torch.equal(batch[row], ours.generate(alone, **kwargs)[0, len(prompt):])
        with torch.no_grad():
            torch.testing.assert_close(last[row], ours(alone).logits[0, -1], atol=1e-5, rtol=0)
    assert torch.equal(batch, native.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, length:])


def test_eager_sdpa_and_flex_attention_agree(converted):
    _, ours, folder = converted
    ids = torch.tensor([[1, 1] + PROMPTS[0], PROMPTS[2] + PROMPTS[1] + [8, 9, 10]])
    mask = torch.tensor([[0, 0] + [1] * 7, [1] * 9])
    outputs = {}
    for implementation in ("eager", "sdpa", "flex_attention"):
        try:
            model = ScratchGPTForCausalLM.from_pretrained(folder, attn_implementation=implementation).eval()
            with torch.no_grad():
                outputs[implementation] = model(input_ids=ids, attention_mask=mask).logits * mask[..., None]
        except Exception as error:  # flex needs a torch that can run it on this device
            if implementation != "flex_attention":
                raise
            print(f"flex attention skipped: {error}")
    for implementation, logits in outputs.items():
        torch.testing.assert_close(logits, outputs["eager"], atol=1e-5, rtol=0, msg=implementation)


def test_a_classifier_reads_the_checkpoint_with_a_fresh_head(converted):
    native, _, folder = converted
    classifier = ScratchGPTForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    assert classifier(torch.tensor([PROMPTS[1]])).logits.shape == (1, 3)
    torch.testing.assert_close(classifier.model.embed_tokens.weight, native.model.embed_tokens.weight)


@pytest.mark.parametrize(
    "model_type, overrides, feature",
    [
        ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=0), "sliding-window attention"),
        ("llama", dict(rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)), "RoPE type 'yarn'"),
        ("llama", dict(pretraining_tp=2), "pretraining_tp"),
    ],
)
def test_features_the_switches_do_not_cover_are_refused(tmp_path, model_type, overrides, feature):
    config_class, _ = NATIVE[model_type]
    config_class(**{**SMALL, **EXTRA[model_type], **overrides}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"ScratchGPT cannot load this {model_type} checkpoint: it uses .*{feature}"):
        ScratchGPTForCausalLM.from_pretrained(tmp_path)


def test_a_mixture_of_experts_checkpoint_is_refused(tmp_path):
    from transformers import Qwen3MoeConfig

    Qwen3MoeConfig(**SMALL).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot read a checkpoint of model type 'qwen3_moe'"):
        ScratchGPTForCausalLM.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------- checkpoints out
def saved_layout(folder) -> tuple[dict, set]:
    config = json.loads((folder / "config.json").read_text())
    config.pop("transformers_version")
    with safe_open(folder / "model.safetensors", "pt") as weights:
        return config, set(weights.keys())


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_export_writes_the_native_class(tmp_path, model_type):
    reference = native_model(model_type)
    reference.save_pretrained(tmp_path / "reference")
    ours = ScratchGPTForCausalLM.from_pretrained(tmp_path / "reference")
    ours.save_pretrained(tmp_path / "ours")
    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "out"), "--to", model_type]) == 0
    config, weights = saved_layout(tmp_path / "out")
    # what older readers look for (transformers 4.x reads the RoPE base and scaling at the top level)
    assert config.pop("rope_theta") == config["rope_parameters"]["rope_theta"] == EXTRA[model_type]["rope_theta"]
    if model_type == "llama":
        assert config.pop("rope_scaling") == config["rope_parameters"]
    assert (config, weights) == saved_layout(tmp_path / "reference")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # no remote code
    assert type(exported) is type(reference)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)


def test_export_to_gpt2_and_its_refusal_of_a_llama_shape(tmp_path, tiny_model, capsys):
    tiny_model.save_pretrained(tmp_path / "gpt2-shaped")
    assert main(["export", str(tmp_path / "gpt2-shaped"), str(tmp_path / "gpt2"), "--to", "gpt2"]) == 0
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")).__name__ == "GPT2LMHeadModel"
    ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("smollm2-135m", **SMALL)).save_pretrained(tmp_path / "llama")
    assert main(["export", str(tmp_path / "llama"), str(tmp_path / "out"), "--to", "gpt2"]) == 2
    assert "cannot be written as GPT2LMHeadModel" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["export", str(tmp_path / "llama"), str(tmp_path / "out"), "--to", "qwen3"]) == 2  # no QK-norm


def test_a_llama_shaped_pretrain_keeps_the_presets_qkv_bias_and_exports_as_llama(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"word{i % 37} and more words" for i in range(400)))
    flags = ["--data", str(corpus), "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--block-size", "16",
             "--vocab-size", "300", "--max-steps", "1", "--batch-size", "2", "--no-progress", "--report-to", "none"]  # fmt: skip
    assert main(["pretrain", "--preset", "smollm2-135m", "--num-kv-heads", "1", *flags, "--output-dir", str(tmp_path / "llama")]) == 0
    assert json.loads((tmp_path / "llama" / "model" / "config.json").read_text())["qkv_bias"] is False
    assert main(["export", str(tmp_path / "llama" / "model"), str(tmp_path / "hf"), "--to", "llama"]) == 0
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "hf")).__name__ == "LlamaForCausalLM"
    tokenizer = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"  # a name transformers 4.x knows too
    assert main(["pretrain", *flags, "--output-dir", str(tmp_path / "gpt2")]) == 0  # GPT-2's preset: a qkv bias
    assert json.loads((tmp_path / "gpt2" / "model" / "config.json").read_text())["qkv_bias"] is True
    assert main(["export", str(tmp_path / "gpt2" / "model"), str(tmp_path / "gpt2-hf"), "--to", "gpt2"]) == 0
    gpt2 = json.loads((tmp_path / "gpt2-hf" / "config.json").read_text())
    assert gpt2["n_ctx"] == gpt2["n_positions"] == 16


# ---------------------------------------------------------------------------------- LoRA, commands
def test_lora_default_targets_follow_the_mlp():
    from peft import LoraConfig, get_peft_model

    from scratch_gpt.lora import SWIGLU_TARGETS, default_targets

    config = ScratchGPTConfig.from_preset("qwen3-0.6b", **{**SMALL, "head_dim": 16})
    assert default_targets(config) == SWIGLU_TARGETS
    model = get_peft_model(ScratchGPTForCausalLM(config), LoraConfig(task_type="CAUSAL_LM", r=4))
    adapted = {name.split(".base_layer")[0].rsplit(".", 1)[-1] for name, _ in model.named_modules() if name.endswith("base_layer")}
    assert adapted == set(SWIGLU_TARGETS)


@pytest.mark.slow
def test_pretrain_a_llama_shaped_model_then_classify_and_instruct_from_a_qwen3_folder(tmp_path, tiny_tokenizer, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. A model predicts the next token.\n" * 200)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    common = ["--no-progress", "--report-to", "none"]
    code = main(["pretrain", "--data", str(corpus), "--tokenizer", str(tmp_path / "tok"), "--preset", "smollm2-135m",
                 "--hidden-size", "48", "--num-layers", "2", "--num-heads", "6", "--block-size", "32", "--max-steps", "4",
                 "--output-dir", str(tmp_path / "pre"), *common])
    assert code == 0, capsys.readouterr().err
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pre" / "model")
    assert (model.config.mlp_type, model.config.num_key_value_heads, model.config.head_dim) == ("swiglu", 2, 8)

    native_model("qwen3", max_position_embeddings=256).save_pretrained(tmp_path / "qwen3")
    tiny_tokenizer.save_pretrained(tmp_path / "qwen3")
    rows = "".join(f"{'good fox' if i % 2 else 'lazy dog'} {i},{i % 2}\n" for i in range(40))
    (tmp_path / "labels.csv").write_text("text,label\n" + rows)
    code = main(["finetune-classifier", "--model", str(tmp_path / "qwen3"), "--data", str(tmp_path / "labels.csv"),
                 "--output", str(tmp_path / "cls"), "--lora", "--max-steps", "2", *common])
    assert code == 0, capsys.readouterr().err
    records = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ["fox", "dog", "cat", "owl"] * 5]
    (tmp_path / "inst.json").write_text(json.dumps(records))
    code = main(["finetune-instruct", "--model", str(tmp_path / "qwen3"), "--data", str(tmp_path / "inst.json"),
                 "--output", str(tmp_path / "inst"), "--lora", "--save-merged", "--max-steps", "2", "--max-new-tokens", "2", *common])
    assert code == 0, capsys.readouterr().err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "inst")
    assert merged.config.qk_norm and type(merged).__name__ == "ScratchGPTForCausalLM"
