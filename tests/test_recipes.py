"""The north-star recipe, scripts/recipes/gpt2-124m-fineweb.yaml: GPT-2 124M on FineWeb-Edu's 10B-token
sample with build-nanogpt's settings. Checked on paper, offline: it is a `--config` file `pretrain`
accepts, and its numbers are the published ones (524,288 tokens a step on 1, 8 or 16 GPUs)."""

from pathlib import Path

import pytest
import torch

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.cli import main, parse_command
from scratch_gpt.training.loop import lr_factor, per_process_batch_size

RECIPE = Path(__file__).resolve().parents[1] / "scripts" / "recipes" / "gpt2-124m-fineweb.yaml"
TOKENS_PER_STEP = 524_288  # 2**19, build-nanogpt's total_batch_size



def recipe(*flags):
    return parse_command("pretrain", ["--config", str(RECIPE), *flags])[0]


def test_pretrain_accepts_the_recipe_offline_and_prints_it_back(no_network, capsys):
    assert main(["pretrain", "--config", str(RECIPE), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "data: hub:HuggingFaceFW/fineweb-edu:sample-10BT\n" in printed and "global-batch-size: 512\n" in printed


def test_the_recipe_holds_build_nanogpts_settings(no_network):
    args = recipe()
    assert args.data == "hub:HuggingFaceFW/fineweb-edu:sample-10BT" and args.streaming
    assert args.tokenizer == "openai-community/gpt2" and args.preset == "gpt2-small" and args.block_size == 1024
    assert (args.max_steps, args.warmup_steps, args.learning_rate, args.min_lr_ratio) == (19073, 715, 6e-4, 0.1)
    assert (args.weight_decay, tuple(args.adam_betas), args.max_grad_norm, args.mixed_precision) == (0.1, (0.9, 0.95), 1.0, "bf16")
    assert (args.eval_every, args.eval_max_batches, args.seed, args.dropout) == (250, 20, 1337, 0.0)
    # one pass over the ~10B tokens of the sample
    assert args.max_steps * TOKENS_PER_STEP == pytest.approx(10e9, rel=0.001)
    # the schedule: 1/715 of the peak at the first step, the peak after warmup, 6e-5 at the end
    schedule = dict(warmup_steps=715, total_steps=19073, min_lr_ratio=0.1)
    assert [lr_factor(step, **schedule) * args.learning_rate for step in (0, 714, 19073)] == pytest.approx([6e-4 / 715, 6e-4, 6e-5])


@pytest.mark.parametrize(("processes", "accumulation", "per_process"), [(8, 1, 64), (16, 1, 32), (1, 8, 64)])
def test_every_launch_of_the_recipe_takes_524288_tokens_a_step(processes, accumulation, per_process, monkeypatch):
    """1 node x 8 GPUs, 2 nodes x 8 GPUs, and one GPU with 8 micro-batches a step (as the recipe says)."""
    monkeypatch.setenv("WORLD_SIZE", str(processes))
    args = recipe("--gradient-accumulation-steps", str(accumulation))
    batch = per_process_batch_size(args.training())
    assert batch == per_process
    assert batch * processes * accumulation * args.block_size == TOKENS_PER_STEP


def test_the_recipes_model_is_gpt2_124m():
    """The model pretrain builds from the recipe: GPT-2 small, 124,475,904 parameters with 50,304
    embedding rows (build-nanogpt's count), counted on the meta device."""
    args = recipe()
    config = ScratchGPTConfig.from_preset(args.preset, vocab_size=args.model_vocab_size, max_position_embeddings=args.block_size)
    with torch.device("meta"):
        model = ScratchGPTForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 124_475_904
