"""Each option is declared once (scratch_gpt.args): the checks, the flags, --config and --print-config
all come from the declarations, and the command line answers without importing anything heavy."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scratch_gpt.args import as_config, choices_of, declared, flag_of, value_type
from scratch_gpt.cli import COMMANDS, main, parse_command

PACKAGE = Path(__file__).resolve().parents[1] / "scratch_gpt"
HEAVY = ("torch", "transformers", "peft", "datasets", "accelerate")


def out_of_range(f) -> list[str]:
    """Values outside the declaration of `f`, as the command line would give them."""
    meta, (kind, _) = f.metadata, value_type(f)
    values = ["not-a-choice"] if meta["choices"] else []
    if kind in (int, float):
        step = 1 if kind is int else 0.5
        values += [str(meta["at_least"] - step)] if meta["at_least"] is not None else []
        values += [str(meta["more_than"])] if meta["more_than"] is not None else []
        values += [str(meta["at_most"] + step)] if meta["at_most"] is not None else []
        values += [str(meta["less_than"])] if meta["less_than"] is not None else []
        values += ["nan", "inf"] if kind is float else []
        if meta["rule"] is not None:
            values += [str(n) for n in (-1, 0, 1, 2, 258) if not meta["rule"][0](n)][:1]
    return values


def required_arguments(cls) -> list[str]:
    """Placeholders for the arguments a command cannot parse without (none is read: checks come first);
    a required choice (export --to) takes its first choice, so that the option under test is the one refused."""
    argv = []
    for f in declared(cls):
        if f.metadata["positional"]:
            argv.append("placeholder")
        elif f.metadata["required"] or f.name == "output_dir":
            placeholder = choices_of(f)[0] if choices_of(f) else "1000" if value_type(f)[0] is int else "placeholder"
            argv += [flag_of(f), placeholder]
    return argv


CASES = [
    (name, f.name, value)
    for name, command in COMMANDS.items()
    for f in declared(command.options)
    if f.metadata["cli"] and not f.metadata["positional"]
    for value in out_of_range(f)
]


def test_every_number_and_choice_of_every_command_is_checked():
    checked = {(name, field) for name, field, _ in CASES}
    assert ("pretrain", "learning_rate") in checked and ("evaluate", "limit") in checked and ("chat", "port") in checked
    assert len(checked) > 100  # every command's numbers and choices (read from the declarations above)


@pytest.mark.parametrize("name, field, value", CASES, ids=[f"{n}-{f}-{v}" for n, f, v in CASES])
def test_a_value_outside_its_declaration_is_one_sentence_naming_the_flag_and_writes_nothing(
    name, field, value, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    command = COMMANDS[name]
    f = next(f for f in declared(command.options) if f.name == field)
    _, count = value_type(f)
    argv = [name, *required_arguments(command.options), flag_of(f), *[value] * (count or 1)]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"scratch-gpt {name}: error: ") and flag_of(f) in last, last
    assert "Traceback" not in last and last.count(". ") == 0, last
    assert list(tmp_path.iterdir()) == []


def test_print_config_shows_the_resolved_options_and_is_a_config_file(tmp_path, capsys):
    argv = ["--data", "corpus.txt", "--lr", "0.01", "--sample-prompt", "Once", "--no-progress", "--adam-betas", "0.9", "0.99"]
    assert main(["pretrain", *argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "lr: 0.01\n" in printed and "no-progress: true\n" in printed and "batch-size: 16\n" in printed
    assert not Path("runs").exists()  # nothing ran
    (tmp_path / "run.yaml").write_text(printed)
    again, _ = parse_command("pretrain", ["--config", str(tmp_path / "run.yaml")])
    assert again == parse_command("pretrain", argv)[0] and as_config(again) == as_config(parse_command("pretrain", argv)[0])


def test_no_argparse_private_api_and_no_namespace_in_the_package():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(parser|argparse|action|group)\._[a-z]", text), path
        assert not re.search(r"argparse\.Namespace|vars\(args\)", text), path


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["finetune-dpo", "--help"], ["pretrain", "--lr", "x"]])
def test_the_command_line_answers_without_importing_anything_heavy(argv):
    probe = (
        "import sys\nfrom scratch_gpt.cli import main\ncode = main(sys.argv[1:])\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})  # fmt: skip
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_importing_the_package_still_registers_the_auto_classes():
    probe = (
        "import sys, scratch_gpt\nassert 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig\nprint(type(AutoConfig.for_model('scratch_gpt')).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})  # fmt: skip
    assert result.stdout.strip() == "ScratchGPTConfig", result.stderr
