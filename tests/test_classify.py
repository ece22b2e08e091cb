"""Classification fine-tuning (stage 7.1): data checks, metrics, what trains, and the command end to end."""

import json
import logging
import random

import datasets
import pytest
import torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from scratch_gpt import (
    ScratchGPTConfig,
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
)
from scratch_gpt.cli import main
from scratch_gpt.training import classify
from scratch_gpt.training.classify import (
    ClassificationMetrics,
    balance_by_undersampling,
    check_columns,
    encode_labels,
    read_records,
    set_trainable,
    split_dataset,
    tokenize_texts,
)

WORDS = "the quick brown fox jumps over the lazy dog hello world tokens attention blocks".split()


@pytest.fixture
def base_dir(make_base_dir):
    """A tiny pre-trained-looking causal LM folder with its tokenizer."""
    return make_base_dir(max_position_embeddings=64)


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """Spam ends with a shouted offer, ham with a greeting: separable from the last tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["ham", "spam"])
        body = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
        rows.append({"text": body + (" WIN CASH NOW!!!" if label == "spam" else " see you soon."), "label": label})
    return rows


def write_csv(path, rows, sep=","):
    lines = [f"text{sep}label"] + [f"{row['text']}{sep}{row['label']}" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------- reading
def test_csv_tsv_json_and_jsonl_read_the_same_records(tmp_path):
    rows = [{"text": "a, b", "label": 1}, {"text": "c", "label": 0}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "d.tsv").write_text("text\tlabel\na, b\t1\nc\t0\n")
    (tmp_path / "d.csv").write_text('text,label\n"a, b",1\nc,0\n')
    for name in ("d.json", "d.jsonl", "d.tsv", "d.csv"):
        assert read_records(str(tmp_path / name)).to_list() == rows, name


def test_unreadable_sources_give_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_records(str(tmp_path / "missing.csv"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"\.csv, \.tsv, \.json or \.jsonl"):
        read_records(str(tmp_path / "notes.txt"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="Cannot parse"):
        read_records(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="could not be loaded as a Hub dataset"):
        read_records("nobody/no-such-dataset-offline")


def test_a_hub_dataset_name_is_loaded_with_datasets(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"text": "hi", "label": 0}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_records("hub:someone/sms-spam", split="test").to_list() == [{"text": "hi", "label": 0}]
    assert read_records("someone/sms-spam").num_rows == 1
    assert calls == [("someone/sms-spam", "test"), ("someone/sms-spam", "train")]


def test_missing_columns_error_lists_the_columns_found(tmp_path):
    records = read_records(str(write_csv(tmp_path / "d.csv", toy_rows(4))))
    with pytest.raises(ValueError, match=r"no column 'sentence'.*columns found are 'text', 'label'"):
        check_columns(records, ["sentence", "label"], "d.csv")


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    records = read_records(str(tmp_path / "empty.csv"))
    with pytest.raises(ValueError, match="holds no records"):
        check_columns(records, ["text", "label"], "empty.csv")


# ----------------------------------------------------------------------------------------- labels
def test_string_labels_become_ids_in_sorted_or_given_order(tmp_path):
    records = read_records(str(write_csv(tmp_path / "d.csv", toy_rows(20))))
    encoded, names = encode_labels(records, "label")
    assert names == ["ham", "spam"]
    assert list(encoded["labels"]) == [names.index(label) for label in records["label"]]
    _, names = encode_labels(records, "label", label_names=["spam", "ham"])
    assert names == ["spam", "ham"]
    with pytest.raises(ValueError, match=r"\['spam'\].*not among the label names"):
        encode_labels(records, "label", label_names=["ham", "other"])


def test_integer_labels_outside_num_labels_are_an_error(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": "x", "label": v}) + "\n" for v in (0, 1, 3)))
    records = read_records(str(tmp_path / "d.jsonl"))
    assert encode_labels(records, "label")[1] == ["0", "1", "2", "3"]  # default: largest label + 1
    with pytest.raises(ValueError, match=r"Label 3 in row 2 .* outside \[0, 2\)"):
        encode_labels(records, "label", num_labels=2)


def test_balancing_undersamples_every_class_to_the_smallest(tmp_path):
    rows = [{"text": f"a{i}", "label": "ham"} for i in range(30)] + [
        {"text": f"b{i}", "label": "spam"} for i in range(7)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    encoded, _ = encode_labels(read_records(str(tmp_path / "d.jsonl")), "label")
    balanced = balance_by_undersampling(encoded, seed=0)
    assert sorted(balanced["labels"]) == [0] * 7 + [1] * 7
    assert all(text.startswith("b") for text, label in zip(balanced["text"], balanced["labels"]) if label == 1)


def test_split_is_disjoint_complete_and_checked(tmp_path):
    encoded, _ = encode_labels(read_records(str(write_csv(tmp_path / "d.csv", toy_rows(50)))), "label")
    encoded = encoded.add_column("row", list(range(50)))
    splits = split_dataset(encoded, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert {name: len(part) for name, part in splits.items()} == {"train": 35, "validation": 5, "test": 10}
    rows = [row for part in splits.values() for row in part["row"]]
    assert sorted(rows) == list(range(50))
    with pytest.raises(ValueError, match="too few"):
        split_dataset(encoded.select(range(3)), val_fraction=0.1, test_fraction=0.2, seed=0)


def test_long_texts_are_truncated_with_one_warning(tmp_path, tiny_tokenizer, caplog):
    rows = [{"text": "hello " * 40, "label": "spam"}] * 3 + [{"text": "short", "label": "ham"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    records = read_records(str(tmp_path / "d.jsonl"))
    with caplog.at_level(logging.WARNING):
        tokens = tokenize_texts(records, tiny_tokenizer, "text", max_length=16)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["3 of 4 texts are longer than 16 tokens and were truncated to their first 16 tokens."]
    assert [len(ids) for ids in tokens["input_ids"]][:3] == [16, 16, 16]


# ----------------------------------------------------------------------------------------- metrics and modes
def test_metrics_match_hand_computed_values():
    metric = ClassificationMetrics(keep_in_memory=True)
    metric.add_batch(predictions=[0, 1, 1, 1], references=[0, 1, 0, 1])
    result = metric.compute()
    # class 0: precision 1, recall 1/2, f1 2/3; class 1: precision 2/3, recall 1, f1 4/5
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["recall"] == pytest.approx((0.5 + 1) / 2)
    assert result["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_metrics_pass_measures_the_models_own_loss(base_dir, tiny_tokenizer):
    model = ScratchGPTForSequenceClassification.from_pretrained(base_dir, num_labels=2).eval()
    rows = toy_rows(10)
    batch = tiny_tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([int(r["label"] == "spam") for r in rows])
    loader = [{k: v[:6] for k, v in batch.items()}, {k: v[6:] for k, v in batch.items()}]  # batches of 6 and 4
    metrics = classify.classification_metrics(model, loader)
    with torch.no_grad():
        output = model(**batch)
    assert metrics["loss"] == pytest.approx(output.loss.item(), rel=1e-5)
    accuracy = (output.logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert metrics["accuracy"] == pytest.approx(accuracy)  # the same predictions, counted over both batches
    assert {"precision", "recall", "f1"} <= set(metrics)


def test_last_blocks_mode_trains_only_the_last_blocks_norm_and_head(base_dir):
    model = ScratchGPTForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    set_trainable(model, "last-blocks", last_blocks=1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    last = len(model.model.layers) - 1
    assert trainable and all(name.startswith((f"model.layers.{last}.", "model.norm.", "score.")) for name in trainable)
    assert "score.weight" in trainable and "model.norm.weight" in trainable
    set_trainable(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="--last-blocks must be between 1 and 2"):
        set_trainable(model, "last-blocks", last_blocks=3)


# ----------------------------------------------------------------------------------------- the command
def run_cli(args, capsys):
    code = main(["finetune-classifier", *(str(arg) for arg in args)])
    return code, capsys.readouterr()


def test_cli_bad_input_fails_before_training(base_dir, tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", toy_rows(20))
    code, out = run_cli(
        ["--model", base_dir, "--data", data, "--output", tmp_path / "o", "--text-column", "body"], capsys
    )
    assert code == 2 and "no column 'body'" in out.err and "Traceback" not in out.err
    code, out = run_cli(
        ["--model", base_dir, "--data", data, "--output", tmp_path / "o", "--lora", "--trainable", "all"], capsys
    )
    assert code == 2 and "exclude each other" in out.err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_tokenizer_larger_than_the_models_vocabulary(base_dir, tiny_tokenizer, tmp_path, capsys):
    config = ScratchGPTConfig.from_pretrained(base_dir)
    config.vocab_size = len(tiny_tokenizer) - 1
    ScratchGPTForCausalLM(config).save_pretrained(base_dir)
    data = write_csv(tmp_path / "d.csv", toy_rows(20))
    code, out = run_cli(["--model", base_dir, "--data", data, "--output", tmp_path / "o"], capsys)
    assert code == 2 and "Traceback" not in out.err
    assert f"The tokenizer has {len(tiny_tokenizer)} tokens but the model in" in out.err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_classifier_learns_a_separable_task_and_loads_with_pipeline(base_dir, tmp_path, capsys):
    data = write_csv(tmp_path / "toy.tsv", toy_rows(200), sep="\t")
    out = tmp_path / "classifier"
    args = [
        "--model",
        base_dir,
        "--data",
        data,
        "--output",
        out,
        "--trainable",
        "all",
        "--lr",
        "3e-3",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--no-progress",
    ]
    code, printed = run_cli(args, capsys)
    assert code == 0, printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.9 and metrics["accuracy"] >= 0.9
    assert {"test_precision", "test_recall", "test_f1", "initial_accuracy"} <= set(metrics)
    assert (out / "README.md").is_file() and (out / "loss_curve.png").is_file()
    assert not (out / "checkpoints").exists()

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    classifier = pipeline("text-classification", model=out)
    predictions = classifier(["hello world WIN CASH NOW!!!", "the lazy dog see you soon."])
    assert [p["label"] for p in predictions] == ["spam", "ham"]


@pytest.mark.slow
def test_lora_classifier_saves_merged_model_or_adapter(base_dir, tmp_path, capsys):
    data = write_csv(tmp_path / "toy.csv", toy_rows(60))
    common = [
        "--model",
        base_dir,
        "--data",
        data,
        "--lora",
        "--lora-r",
        "4",
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    code, printed = run_cli([*common, "--output", tmp_path / "merged", "--save-merged"], capsys)
    assert code == 0, printed.err
    assert "trainable params: " in printed.out
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())

    code, printed = run_cli([*common, "--output", tmp_path / "adapter"], capsys)
    assert code == 0, printed.err
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    adapted = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter", num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    inputs = tokenizer(["hello WIN CASH NOW!!!"], return_tensors="pt")
    with torch.no_grad():
        logits = adapted.eval()(**inputs).logits
        assert logits.shape == (1, 2)
        # the same seed trained the same adapter: merged into the weights it gives the same logits
        torch.testing.assert_close(merged.eval()(**inputs).logits, logits, rtol=1e-4, atol=1e-5)


def card_snippet(folder) -> str:
    """The Python block of the folder's model card, pointed at the folder itself."""
    card = (folder / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    return code.replace('"OWNER/NAME"', repr(str(folder)))


@pytest.mark.slow
@pytest.mark.parametrize("classes", [2, 5])
def test_the_cards_own_snippet_loads_every_classifier_folder_with_its_labels(base_dir, tmp_path, capsys, classes):
    names = ["ham", "spam", "promo", "alert", "news"][:classes]
    rng = random.Random(0)
    rows = [{"text": f"{' '.join(rng.choices(WORDS, k=4))} {names[i % classes]}", "label": names[i % classes]} for i in range(40)]
    data = write_csv(tmp_path / "d.csv", rows)
    common = ["--model", base_dir, "--data", data, "--max-steps", "1", "--batch-size", "4", "--no-progress"]
    variants = {"full": ["--trainable", "all"], "adapter": ["--lora"], "merged": ["--lora", "--save-merged"]}
    for name, flags in variants.items():
        code, printed = run_cli([*common, *flags, "--output-dir", tmp_path / name], capsys)
        assert code == 0, printed.err
        namespace = {}
        exec(card_snippet(tmp_path / name), namespace)  # the snippet as a user copies it
        assert namespace["model"].config.id2label == dict(enumerate(sorted(names))), name  # ids in sorted order
        assert printed_label(capsys) in names, name


def printed_label(capsys) -> str:
    """The label the snippet printed last (`pipeline`'s answer is a list with one dict)."""
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return eval(last)[0]["label"]  # noqa: S307  (our own printed repr)


def test_defaults_follow_the_size_of_the_base():
    from scratch_gpt import ScratchGPTConfig
    from scratch_gpt.training.finetune import LARGE_BASE_LR, SMALL_BASE_LR, base_defaults

    tiny = ScratchGPTConfig.from_preset("tiny", hidden_size=32)
    assert base_defaults(tiny, "classification")[:2] == ("all", SMALL_BASE_LR["classification"])
    assert base_defaults(tiny, "instruct")[:2] == ("all", SMALL_BASE_LR["instruct"])
    gpt2 = ScratchGPTConfig.from_preset("gpt2-small", vocab_size=50257)  # counted on the meta device: no memory
    what, lr, why = base_defaults(gpt2, "classification")
    assert (what, lr) == ("last-blocks", LARGE_BASE_LR) and "124.4 M parameters" in why
    assert base_defaults(gpt2, "instruct")[:2] == ("all", LARGE_BASE_LR)


@pytest.mark.parametrize(
    "flags, trainable, lr, said",
    [
        ([], "all", 5e-4, "training all weights at lr 0.0005: the base has"),
        (["--lr", "1e-3"], "all", 1e-3, "training all weights: the base has"),  # a flag wins
        (["--trainable", "last-blocks"], "last-blocks", 5e-4, "training at lr 0.0005"),
        (["--trainable", "last-blocks", "--lr", "5e-5"], "last-blocks", 5e-5, None),  # nothing left to choose
        (["--lora"], None, 5e-4, "training at lr 0.0005"),  # the adapters and the head train
    ],
)
def test_explicit_flags_win_over_the_defaults_from_the_base(base_dir, tmp_path, capsys, flags, trainable, lr, said):
    from scratch_gpt.cli import parse_command
    from scratch_gpt.training.finetune import with_base_defaults

    argv = ["--model", str(base_dir), "--data", "x.csv", "--output-dir", str(tmp_path / "out"), *flags]
    options = with_base_defaults(parse_command("finetune-classifier", argv)[0], "classification")
    assert (options.trainable, options.learning_rate) == (trainable, lr)
    out = capsys.readouterr().out
    assert (said in out) if said else out == "", out


def test_the_book_recipe_keeps_its_own_settings(base_dir, tmp_path):
    from pathlib import Path

    from scratch_gpt.cli import parse_command
    from scratch_gpt.training.finetune import with_base_defaults

    recipe = Path(__file__).resolve().parents[1] / "scripts" / "book" / "ch06.yaml"
    argv = ["--config", str(recipe), "--model", str(base_dir), "--output-dir", str(tmp_path / "out")]
    options = with_base_defaults(parse_command("finetune-classifier", argv)[0], "classification")
    assert (options.trainable, options.last_blocks, options.learning_rate) == ("last-blocks", 1, 5e-5)
