"""One description of the options: the same names, aliases and --config keys in every command, generated
from the declarations in scratch_gpt.args; one save path for every head."""

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import launch_processes
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.args import TrainingConfig, TrainingOptions, declared
from scratch_gpt.cli import COMMANDS, main, parse_command
from scratch_gpt.cli.parsing import build_parser
from scratch_gpt.training.loop import save_model

ROOT = Path(__file__).resolve().parents[1]
TRAINING_COMMANDS = ("pretrain", "finetune-classifier", "finetune-instruct", "finetune-dpo")
REQUIRED = {"pretrain": []} | dict.fromkeys(TRAINING_COMMANDS[1:], ["--model", "m", "--data", "d"])


def parse_args(command: str, argv: list[str]):
    return parse_command(command, argv)[0]


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_every_training_command_has_every_shared_flag_and_the_old_spellings(command):
    names = {f.name for f in declared(COMMANDS[command].options)}  # the flags are generated from these
    assert {f.name for f in declared(TrainingOptions)} | {"data", "encoding", "encoding_errors"} <= names
    old = parse_args(command, [*REQUIRED[command], "--output", "o", "--grad-accum", "3", "--lr", "0.5"])
    new = parse_args(command, [*REQUIRED[command], "--output-dir", "o", "--gradient-accumulation-steps", "3", "--lr", "0.5"])
    assert old == new
    config = new.part(TrainingConfig)
    assert (config.output_dir, config.gradient_accumulation_steps, config.learning_rate) == ("o", 3, 0.5)
    help_text = build_parser(command, COMMANDS[command].options, {}).format_help()
    assert "--output " not in help_text and "--grad-accum" not in help_text  # aliases are hidden


def test_every_flag_sets_its_declared_field(monkeypatch):
    from scratch_gpt.training import loop

    monkeypatch.setattr(loop, "bf16_supported", lambda: True)  # the mapping, not this machine's CPU, is under test
    options = parse_args(
        "pretrain",
        ["--epochs", "2", "--max-steps", "7", "--batch-size", "3", "--max-grad-norm", "0", "--mixed-precision", "bf16",
         "--compile", "--gradient-checkpointing", "--eval-batches", "4", "--sample-prompt", "a", "--sample-prompt", "b",
         "--no-progress", "--report-to", "none", "--resume", "--save-every", "5", "--keep-checkpoints", "1"]
    )  # fmt: skip
    config = options.part(TrainingConfig)
    assert (config.num_epochs, config.max_steps, config.batch_size, config.max_grad_norm) == (2, 7, 3, 0.0)
    assert config.mixed_precision == "bf16" and config.compile and config.gradient_checkpointing
    assert config.eval_max_batches == 4 and config.sample_prompts == ("a", "b") and config.progress is False
    assert config.report_to == "none" and config.resume and (config.save_every, config.keep_checkpoints) == (5, 1)
    defaults = parse_args("finetune-instruct", REQUIRED["finetune-instruct"] + ["--output-dir", "x"]).part(TrainingConfig)
    expected = TrainingConfig(output_dir="x", **{k: v for k, v in COMMANDS["finetune-instruct"].defaults.items()})
    assert defaults == expected  # the declared defaults, then the command's own


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_config_file_keys_are_the_flag_names_aliases_too_and_flags_win(command, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "grad-accum: 4\nmax_steps: 9\nlr: 1e-4\nsample_prompt: one prompt\nno-progress: true\noutput: from-file\n"
        + ("model: base\ndata: data.json\n" if REQUIRED[command] else "")
    )
    args = parse_args(command, ["--config", str(config), "--max-steps", "11"])
    assert args.gradient_accumulation_steps == 4 and args.learning_rate == 1e-4  # YAML reads 1e-4 as a string
    assert args.max_steps == 11  # the command line wins
    assert args.sample_prompts == ["one prompt"]  # one string for a list option is one item
    assert args.progress is False and args.output_dir == "from-file"
    if REQUIRED[command]:
        assert (args.model, args.data) == ("base", "data.json")  # required flags may come from the file


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_steps: [1, 2]\n", "takes one value"),
        ("max_steps: many\n", "not a valid int"),
        ("compile: 3\n", "is a switch"),
        ("mixed_precision: fp8\n", "must be one of"),
        ("max_steps: 3\n  bad: [\n", "not valid YAML"),
        ("- a list\n", "must hold a mapping"),
        ("learning_rate: 1\n", "Unknown option(s) learning_rate"),
    ],
)
def test_a_bad_config_file_is_one_sentence(tmp_path, capsys, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and "Traceback" not in error[0]
    assert not (tmp_path / "run").exists()


def test_required_flags_missing_everywhere_is_an_argparse_error(capsys):
    assert main(["finetune-classifier", "--data", "d", "--output-dir", "o"]) == 2
    assert "required: --model" in capsys.readouterr().err


def tiny_model():
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", vocab_size=64, hidden_size=32, max_position_embeddings=16))


def test_save_model_strips_torch_compile_and_writes_metrics_and_the_run_files(tmp_path):
    model = tiny_model()
    run = tmp_path / "run"
    run.mkdir()
    (run / "loss_curve.png").write_bytes(b"png")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    seen = []
    save_model(Accelerator(cpu=True), torch.compile(model), run / "model", metrics={"eval_loss": 1.5}, run_dir=run,
               on_save=lambda folder, metrics: seen.append((folder.name.startswith(".tmp-"), metrics)))  # fmt: skip
    folder = run / "model"
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict()) - {"lm_head.weight"}  # tied
    assert json.loads((folder / "metrics.json").read_text()) == {"eval_loss": 1.5}
    assert (folder / "loss_curve.png").is_file() and not (folder / "metrics.jsonl").exists()
    assert seen == [(True, {"eval_loss": 1.5})]  # on_save runs inside the temporary folder
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))

    save_model(Accelerator(cpu=True), model, run, run_dir=run)  # the run folder itself: its log comes along
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n' and (run / "config.json").is_file()


def test_gradient_checkpointing_flag_gives_the_same_training(tmp_path):
    from scratch_gpt.training.loop import train

    rows = [{"input_ids": [i % 64] * 16, "labels": [i % 64] * 16} for i in range(16)]
    options = dict(max_steps=3, batch_size=4, progress=False, report_to="none", log_every=1, shuffle=False)
    plain = train(tiny_model(), rows, None, TrainingConfig(output_dir=str(tmp_path / "a"), **options))
    model = tiny_model()
    checkpointed = train(model, rows, None, TrainingConfig(output_dir=str(tmp_path / "b"), gradient_checkpointing=True, **options))
    assert all(block.gradient_checkpointing for block in model.model.layers)
    assert checkpointed["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.processes
def test_fine_tuning_under_two_cpu_processes_saves_one_folder_through_the_loop(make_base_dir, tmp_path):
    base = make_base_dir(max_position_embeddings=128)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": w}) + "\n" for w in ["fox", "dog", "cat", "owl"] * 8))
    out = tmp_path / "out"
    stdout = launch_processes(
        ["-m", "scratch_gpt.cli", "finetune-instruct", "--model", base, "--data", data, "--output-dir", out, "--max-steps", "2",
         "--batch-size", "2", "--no-progress", "--max-new-tokens", "3", "--max-answers", "2"], cwd=tmp_path
    )  # fmt: skip
    assert stdout.count("saved to") == 1
    assert {"model.safetensors", "config.json", "tokenizer.json", "answers.jsonl", "metrics.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert len((out / "answers.jsonl").read_text().splitlines()) == 2
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))
    AutoModelForCausalLM.from_pretrained(out)
