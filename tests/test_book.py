"""The book's recipes (scripts/book/*.yaml) and the switches that make a run match the book's code."""

import json
import math
from pathlib import Path
from unittest import mock

import pytest
import torch

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.cli import main, parse_command
from scratch_gpt.training.loop import TrainingConfig, build_optimizer, lr_factor, train

BOOK = Path(__file__).resolve().parents[1] / "scripts" / "book"
RECIPES = {"ch05.yaml": "pretrain", "ch06.yaml": "finetune-classifier", "ch07.yaml": "finetune-instruct"}


def parse_args(command: str, argv: list[str]):
    return parse_command(command, argv)[0]


def from_args(options) -> TrainingConfig:
    return options.part(TrainingConfig)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_parses_with_its_commands_parser_and_flags_override_it(name, tmp_path):
    parser = RECIPES[name]
    args = parse_args(parser, ["--config", str(BOOK / name)])  # an unknown key would raise here
    config = from_args(args)
    assert args.seed == 123 and config.seed == 123
    assert config.max_grad_norm == 0 and config.warmup_steps == 0 and config.min_lr_ratio == 1.0
    assert config.weight_decay_all and config.adam_betas == (0.9, 0.999) and config.book_figures
    overrides = ["--data", str(tmp_path / "local.txt"), "--output-dir", str(tmp_path / "out")]
    overrides += ["--tokenizer", "local-tokenizer"] if name == "ch05.yaml" else ["--model", "local-model"]
    args = parse_args(parser, ["--config", str(BOOK / name), *overrides])
    assert args.data == str(tmp_path / "local.txt") and args.output_dir == str(tmp_path / "out")
    assert (args.tokenizer if name == "ch05.yaml" else args.model).startswith("local-")


def test_the_recipes_name_the_books_base_models_and_settings():
    ch05 = parse_args("pretrain", ["--config", str(BOOK / "ch05.yaml")])
    assert ch05.tokenizer == "openai-community/gpt2" and ch05.preset == "gpt2-small"
    assert (ch05.block_size, ch05.stride, ch05.batch_size, ch05.num_epochs, ch05.learning_rate) == (256, 256, 2, 10, 4e-4)
    assert ch05.untied_head and ch05.no_qkv_bias and ch05.init_style == "pytorch" and ch05.dropout == 0.1
    assert ch05.train_eval_batches == 5 and ch05.eval_every == 5 and ch05.eval_max_batches == 5
    ch06 = parse_args("finetune-classifier", ["--config", str(BOOK / "ch06.yaml")])
    assert ch06.model == "openai-community/gpt2" and ch06.balance and ch06.trainable == "last-blocks"
    assert (ch06.val_fraction, ch06.test_fraction, ch06.num_epochs, ch06.batch_size) == (0.1, 0.2, 5, 8)
    ch07 = parse_args("finetune-instruct", ["--config", str(BOOK / "ch07.yaml")])
    assert ch07.model == "openai-community/gpt2-medium" and (ch07.num_epochs, ch07.batch_size) == (2, 8)


def book_model(**overrides) -> ScratchGPTForCausalLM:
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset("tiny", tie_word_embeddings=False, qkv_bias=False, init_style="pytorch", **overrides)
    return ScratchGPTForCausalLM(config)


def test_book_model_switches_untied_head_no_qkv_bias_and_torch_default_init():
    model = book_model()
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.model.layers[0].attn.qkv_proj.bias is None
    embedding = model.model.embed_tokens.weight
    assert abs(embedding.std().item() - 1.0) < 0.05  # nn.Embedding's N(0, 1), not GPT-2's N(0, 0.02)
    bound = 1 / model.config.hidden_size**0.5  # nn.Linear's uniform(+-1/sqrt(fan_in))
    assert model.lm_head.weight.abs().max().item() <= bound and model.lm_head.weight.abs().max().item() > 0.9 * bound
    for module in model.modules():  # residual projections too: the book scales none
        if isinstance(module, torch.nn.Linear):
            assert module.weight.abs().max().item() <= 1 / module.in_features**0.5
    # the defaults stay GPT-2's: tied head, qkv bias, N(0, 0.02)
    default = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny"))
    assert default.lm_head.weight.data_ptr() == default.model.embed_tokens.weight.data_ptr()
    assert default.model.layers[0].attn.qkv_proj.bias is not None
    assert abs(default.model.embed_tokens.weight.std().item() - 0.02) < 0.005


def test_an_untied_pytorch_init_model_round_trips_through_save_pretrained(tmp_path):
    model = book_model()
    model.save_pretrained(tmp_path)
    loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.init_style == "pytorch" and not loaded.config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)  # loading never re-initialises
    with pytest.raises(ValueError, match="init_style"):
        ScratchGPTConfig(init_style="xavier")


def test_weight_decay_all_puts_every_parameter_in_the_decayed_group():
    model = book_model()
    ours = build_optimizer(model, TrainingConfig(weight_decay=0.1))
    book = build_optimizer(model, TrainingConfig(weight_decay=0.1, weight_decay_all=True))
    embedding = model.model.embed_tokens.weight
    assert any(p is embedding for p in ours.param_groups[1]["params"]) and ours.param_groups[1]["weight_decay"] == 0
    assert len(book.param_groups[0]["params"]) == len(list(model.parameters())) and not book.param_groups[1]["params"]
    assert book.param_groups[0]["weight_decay"] == 0.1


def test_no_warmup_and_min_lr_ratio_one_is_a_constant_learning_rate():
    factors = [lr_factor(step, warmup_steps=0, total_steps=90, min_lr_ratio=1.0) for step in range(91)]
    assert factors == [1.0] * 91


def rows(num_rows=12, length=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 512, (num_rows, length), generator=generator).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def test_no_clipping_with_max_grad_norm_zero(tmp_path):
    from accelerate import Accelerator

    for norm, called in ((0.0, False), (1.0, True)):
        config = TrainingConfig(output_dir=str(tmp_path / str(norm)), max_steps=2, batch_size=4, max_grad_norm=norm,
                                report_to="none", progress=False, eval_at_start=False)  # fmt: skip
        with mock.patch.object(Accelerator, "clip_grad_norm_") as clip:
            train(book_model(), rows(), None, config)
        assert clip.called == called


def test_train_eval_loss_is_the_eval_mode_loss_of_the_first_training_batches_and_book_figures_print(tmp_path, capsys):
    model = book_model(drop_rate=0.5)  # dropout on: eval mode and train mode differ
    data = rows(num_rows=16)
    expected = []
    model.eval()
    with torch.no_grad():  # the first 2 batches of 4, in order, before any step
        for start in (0, 4):
            batch = {k: torch.tensor([r[k] for r in data[start : start + 4]]) for k in ("input_ids", "labels")}
            expected.append(model(**batch).loss.item())
    model.train()
    config = TrainingConfig(
        output_dir=str(tmp_path / "run"), max_steps=2, batch_size=4, train_eval_batches=2, eval_every=1,
        report_to="none", progress=False, book_figures={"train_eval_loss": 0.57, "best_eval_loss": 6.12, "nothing": 1.0},
    )  # fmt: skip
    results = train(model, data, rows(num_rows=4, seed=1), config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if "train_eval_loss" in r)
    assert first["step"] == 0 and math.isclose(first["train_eval_loss"], sum(expected) / 2, rel_tol=1e-5)
    assert [r["step"] for r in records if "train_eval_loss" in r] == [0, 1, 2]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert results["best_eval_loss"] == min(evals)

    printed = capsys.readouterr().out
    assert f"train_eval_loss: book: 0.57, ours: {results['train_eval_loss']:.4g}" in printed
    assert "best_eval_loss: book: 6.12, ours:" in printed and "nothing: book: 1, ours: not measured" in printed
    assert records[-1]["book_best_eval_loss"] == 6.12 and records[-1]["ours_best_eval_loss"] == results["best_eval_loss"]


def test_book_figures_from_the_command_line_and_bad_values(tmp_path):
    parser = "pretrain"
    args = parse_args(parser, ["--book-figures", '{"eval_loss": 6.12}', "--output-dir", str(tmp_path)])
    assert args.book_figures == {"eval_loss": 6.12}
    bad = tmp_path / "bad.yaml"
    bad.write_text("book-figures: [1, 2]\n")
    with pytest.raises(ValueError, match="book-figures"):
        parse_args(parser, ["--config", str(bad)])
    bad.write_text("adam-betas: [0.9]\n")
    with pytest.raises(ValueError, match="takes 2 values"):
        parse_args(parser, ["--config", str(bad)])


def test_ch05_recipe_runs_offline_end_to_end_on_a_tiny_story(tmp_path, tiny_tokenizer, capsys):
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    story = tmp_path / "story.txt"
    story.write_text(" ".join(["The verdict was a surprise to everyone who knew the painter."] * 60))
    out = tmp_path / "run"
    flags = [
        "--config", str(BOOK / "ch05.yaml"), "--data", str(story), "--tokenizer", str(tmp_path / "tokenizer"),
        "--output-dir", str(out), "--preset", "tiny", "--model-vocab-size", "512", "--block-size", "16",
        "--stride", "16", "--epochs", "1", "--sample-tokens", "3", "--no-progress",
    ]  # fmt: skip
    assert main(["pretrain", *flags]) == 0
    printed = capsys.readouterr().out
    assert "train_eval_loss: book: 0.57, ours:" in printed and "best_eval_loss: book: 6.12, ours:" in printed
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["init_style"] == "pytorch" and config["tie_word_embeddings"] is False and config["qkv_bias"] is False
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["lr"] for r in records if "lr" in r} == {4e-4}  # constant
