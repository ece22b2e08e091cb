"""`scratch-gpt pretrain` / `quickstart` end to end, and `accelerate launch` on two CPU processes."""

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from conftest import launch_processes
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

from scratch_gpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a model token learns reads writes returns each every small large list value key name file".split()


@pytest.fixture
def corpus(tmp_path):
    """200 short documents of made-up sentences, as JSON Lines."""
    rng = random.Random(0)
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as file:
        for _ in range(200):
            text = ". ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) for _ in range(3)) + "."
            file.write(json.dumps({"text": text}) + "\n")
    return path


def tiny_flags(corpus, output_dir, *extra):
    return [
        "--data", str(corpus), "--vocab-size", "300", "--block-size", "16", "--hidden-size", "32",
        "--num-layers", "2", "--num-heads", "2", "--batch-size", "4", "--max-steps", "12", "--warmup-steps", "2",
        "--lr", "3e-3", "--eval-every", "6", "--eval-batches", "4", "--log-every", "1", "--save-every", "6",
        "--report-to", "none", "--no-progress", "--output-dir", str(output_dir), *extra,
    ]  # fmt: skip


def test_pretrain_cli_writes_a_model_folder_that_transformers_loads(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_flags(corpus, out, "--sample-prompt", "the model")]) == 0
    printed = capsys.readouterr().out
    assert "sample: 'the model" in printed and "Done: validation loss" in printed

    folder = out / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.hidden_size == 32 and model.config.max_position_embeddings == 16
    assert len(tokenizer) <= model.config.vocab_size
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.eos_token_id == tokenizer.eos_token_id and generation.pad_token_id == tokenizer.pad_token_id
    text = pipeline("text-generation", model=str(folder))("the model", max_new_tokens=5, do_sample=False)
    assert text[0]["generated_text"].startswith("the model")
    assert "pipeline_tag: text-generation" in (folder / "README.md").read_text()  # the model card
    assert (folder / "loss_curve.png").is_file() and (out / "loss_curve.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000006", "step-00000012"]

    # --resume at the end of the run: nothing left to train, the folder is rewritten the same.
    assert main(["pretrain", *tiny_flags(corpus, out, "--resume")]) == 0
    resumed = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


def test_config_file_sets_options_and_flags_override_it(corpus, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max-steps: 3\nlog_every: 1\nsave_every: 0\nlr: 0.5\n")  # --lr below overrides lr
    out = tmp_path / "run"
    flags = tiny_flags(corpus, out)
    flags[flags.index("--max-steps") : flags.index("--max-steps") + 2] = []
    flags[flags.index("--lr") : flags.index("--lr") + 2] = []
    assert main(["pretrain", *flags, "--config", str(config), "--lr", "1e-3"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 3  # from the file
    lrs = [r["lr"] for r in records if "lr" in r]
    assert max(lrs) == pytest.approx(1e-3)  # from the flag: warmup reaches it, the file's 0.5 never shows


def test_the_tokenizer_is_trained_on_the_training_documents_only(corpus, tmp_path, monkeypatch):
    from scratch_gpt import tokenizer as tokenizer_module
    from scratch_gpt.data import load_text_corpus, train_val_split

    seen = []
    real = tokenizer_module.train_tokenizer

    def recording(data, **kwargs):
        seen.extend(data["text"])
        return real(data, **kwargs)

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", recording)
    assert main(["pretrain", *tiny_flags(corpus, tmp_path / "run"), "--max-steps", "1", "--val-fraction", "0.2"]) == 0
    train_docs, val_docs = train_val_split(load_text_corpus(str(corpus)), 0.2, 0)
    assert sorted(seen) == sorted(train_docs["text"])
    assert not set(val_docs["text"]) - set(train_docs["text"]) & set(seen)


def test_init_from_continues_with_the_models_own_tokenizer(corpus, tmp_path):
    assert main(["pretrain", *tiny_flags(corpus, tmp_path / "a"), "--max-steps", "1", "--save-every", "0"]) == 0
    other = tmp_path / "other.txt"
    other.write_text("zebra quartz jukebox " * 200)  # a corpus that would train a different tokenizer
    flags = [*tiny_flags(other, tmp_path / "b"), "--max-steps", "1", "--save-every", "0", "--init-from", str(tmp_path / "a" / "model")]
    assert main(["pretrain", *flags]) == 0
    saved = lambda run: (tmp_path / run / "model" / "tokenizer.json").read_text()  # noqa: E731
    assert saved("b") == saved("a")


@pytest.mark.parametrize(
    "change, message",
    [
        (["--blocks"], "unrecognized arguments: --blocks"),
        (["--block-size", "100000"], "fewer than one block"),
        (["--model-vocab-size", "280"], "has only 280 embedding rows"),
        (["--tokenizer", "no/such/folder"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_error_before_training(corpus, tmp_path, capsys, change, message):
    assert main(["pretrain", *tiny_flags(corpus, tmp_path / "run"), *change]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_unknown_config_key_and_unwritable_output_are_errors(corpus, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"learning_rate": 1e-3}))
    assert main(["pretrain", *tiny_flags(corpus, tmp_path / "run"), "--config", str(config)]) == 2
    assert "Unknown option(s) learning_rate" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["pretrain", *tiny_flags(corpus, a_file)]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_as_the_readme_runs_it_ends_clearly_below_the_unigram_entropy(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README runs it with the default output folder
    assert main(["quickstart", "--no-progress"]) == 0
    printed = capsys.readouterr().out

    def number_after(label):
        line = next(line for line in printed.splitlines() if line.startswith(label))
        return float(line.split(":")[1].split()[0])

    before = number_after("validation loss before training")
    after = number_after("validation loss after training")
    entropy = number_after("unigram entropy of the corpus")
    assert after < entropy - 1.0 < before
    assert "sample: 'Return the" in printed
    folder = tmp_path / "runs" / "quickstart" / "model"
    generated = pipeline("text-generation", model=str(folder))("Return the", max_new_tokens=5, do_sample=False)
    assert generated[0]["generated_text"].startswith("Return the")


def launch(corpus, output_dir, processes, batch_size):
    flags = tiny_flags(corpus, output_dir)
    flags[flags.index("--batch-size") + 1] = str(batch_size)
    return launch_processes([ROOT / "scripts" / "pretrain.py", *flags], cwd=output_dir.parent, processes=processes)


@pytest.mark.slow
@pytest.mark.processes
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(corpus, tmp_path):
    one_out = launch(corpus, tmp_path / "one", 1, batch_size=4)
    two_out = launch(corpus, tmp_path / "two", 2, batch_size=2)

    def train_losses(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [r["train_loss"] for r in records if "train_loss" in r]

    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(one) == len(two) == 12
    assert two == pytest.approx(one, rel=1e-5)
    # Only the main process writes and prints: the same files, one "Done" line.
    files = lambda folder: sorted(  # noqa: E731
        str(p.relative_to(folder)) for p in folder.rglob("*") if "random_states" not in p.name
    )
    assert files(tmp_path / "two") == files(tmp_path / "one")
    assert two_out.count("Done: validation loss") == one_out.count("Done: validation loss") == 1
    assert (tmp_path / "two" / "checkpoints" / "step-00000012" / "random_states_1.pkl").is_file()


def test_streaming_pretrain_reads_the_corpus_lazily_and_needs_max_steps(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_flags(corpus, out), "--streaming"]) == 0
    assert "training and" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 12 and model.config.max_position_embeddings == 16

    flags = tiny_flags(corpus, tmp_path / "other", "--streaming")
    flags[flags.index("--max-steps") : flags.index("--max-steps") + 2] = []
    assert main(["pretrain", *flags]) == 2
    assert "--streaming needs --max-steps" in capsys.readouterr().err


def test_resume_refuses_an_option_that_may_not_change_and_accepts_one_that_may(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_flags(corpus, out, "--max-steps", "6")]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 3e-3 and saved["max-steps"] == 6 and saved["block-size"] == 16  # the resolved options
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    capsys.readouterr()
    assert main(["pretrain", *tiny_flags(corpus, out, "--max-steps", "8", "--resume", "--lr", "1e-3")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--lr 0.003 -> 0.001" in error[0] and "config.yaml" in error[0], error
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before  # refused before any work
    assert main(["pretrain", *tiny_flags(corpus, out, "--max-steps", "8", "--resume", "--eval-every", "4")]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["max-steps"] == 8


def test_resume_refuses_data_or_a_tokenizer_whose_content_changed(corpus, tmp_path, capsys):
    from scratch_gpt.tokenizer import train_tokenizer

    tokenizer = tmp_path / "tok"
    train_tokenizer([corpus.read_text()], vocab_size=300).save_pretrained(tokenizer)
    out = tmp_path / "run"
    flags = ["--tokenizer", str(tokenizer), "--max-steps", "6"]
    assert main(["pretrain", *tiny_flags(corpus, out, *flags)]) == 0
    assert set(json.loads((out / "inputs.json").read_text())) == {"data", "tokenizer"}  # content digests
    original = corpus.read_text()

    def resume_refused(part: str) -> None:
        before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
        capsys.readouterr()
        assert main(["pretrain", *tiny_flags(corpus, out, *flags, "--resume", "--max-steps", "8")]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and part in error[0], error
        assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before  # nothing touched

    corpus.write_text(original + json.dumps({"text": "one more document"}) + "\n")  # other data, the same path
    resume_refused(f"the content of --data {str(corpus)!r} changed since it started")
    corpus.write_text(original)
    train_tokenizer([corpus.read_text()], vocab_size=280).save_pretrained(tokenizer)  # another tokenizer, same folder
    resume_refused("--tokenizer")
    (out / "inputs.json").unlink()  # a run without input digests: each checkpoint still knows its tokenizer
    resume_refused("was trained with another tokenizer")
    train_tokenizer([corpus.read_text()], vocab_size=300).save_pretrained(tokenizer)  # the one it started with
    assert main(["pretrain", *tiny_flags(corpus, out, *flags, "--resume", "--max-steps", "8")]) == 0
