"""Fine-tune a text classifier (stage 7.1): `scratch-gpt finetune-classifier`.

The pre-trained causal LM keeps its body; a new linear head (`score`) reads the hidden state of
the last real token (see `ScratchGPTForSequenceClassification`). The steps, top to bottom:

1. read text/label records from CSV, TSV, JSON(L) or a Hub dataset and check them;
2. turn labels into ids (`id2label` / `label2id` go into the model config), balance the classes by
   undersampling if asked, split into train / validation / test;
3. tokenize, truncating to the context length (one warning with the count);
4. choose what trains: everything, the last N blocks + final norm + head, or LoRA adapters + head;
5. train with the shared loop (`scratch_gpt.training.loop.train`), evaluate accuracy, precision,
   recall and F1 with an `evaluate` metric computed locally (no Hub download);
6. save the classifier (or its adapter), the tokenizer, `metrics.json` and a model card in one
   atomic step; the folder loads with `AutoModelForSequenceClassification` and `pipeline`.
"""

import json
import logging
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers import DataCollatorWithPadding, set_seed

from scratch_gpt import ScratchGPTForSequenceClassification
from scratch_gpt.args import ClassifyOptions
from scratch_gpt.convert import load_pretrained, transformers_verbosity
from scratch_gpt.errors import BadInput
from scratch_gpt.lora import describe_trainable, lora_config_for
from scratch_gpt.sources import read_records
from scratch_gpt.training.finetune import (
    card_writer,
    check_fraction,
    load_base_tokenizer,
    max_length_for,
    with_base_defaults,
)
from scratch_gpt.training.loop import check_output_dir, process_state, train

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# 1. Reading records (`read_records`, from scratch_gpt.sources: the reader behind every --data)
def check_columns(dataset: datasets.Dataset, required: list[str], source: str) -> None:
    missing = [column for column in required if column not in dataset.column_names]
    if missing:
        raise BadInput(
            f"{source!r} has no column {', '.join(map(repr, missing))}; the columns found are "
            f"{', '.join(map(repr, dataset.column_names)) or 'none'} (choose them with --text-column / --label-column)."
        )
    if len(dataset) == 0:
        raise BadInput(f"{source!r} holds no records; pass a dataset with at least one row per split.")


# ----------------------------------------------------------------------------------------------
# 2. Labels, balancing and splits
def label_ids(feature, values: list, label_column: str, num_labels: int | None, label_names: list[str] | None):
    """(ids, label names, num_labels) of the labels `values`: a ClassLabel's own names, names (strings,
    sorted unless given) or integer ids."""
    if isinstance(feature, datasets.ClassLabel):
        return values, label_names or feature.names, num_labels
    if all(isinstance(value, str) for value in values):
        label_names = label_names or sorted(set(values))
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise BadInput(
                f"Labels {unknown[:5]} in column {label_column!r} are not among the label names {label_names}; "
                "fix the data or pass every name with --label-names."
            )
        return [index[value] for value in values], label_names, num_labels
    if all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        ids = [int(value) for value in values]
        num_labels = num_labels or (len(label_names) if label_names else max(ids) + 1)
        return ids, label_names or [str(i) for i in range(num_labels)], num_labels
    found = sorted({type(value).__name__ for value in values})
    raise BadInput(
        f"Column {label_column!r} must hold only integer class ids or only class names (strings), "
        f"found values of type {', '.join(found)}; fix the data."
    )


def encode_labels(
    dataset: datasets.Dataset, label_column: str, *, num_labels: int | None = None, label_names: list[str] | None = None
) -> tuple[datasets.Dataset, list[str]]:
    """Return the dataset with integer `labels` (see `label_ids`; they must lie in [0, num_labels),
    default: num_labels = largest label + 1) and the label names (index = label id)."""
    values = list(dataset[label_column])
    blank = [row for row, value in enumerate(values) if value is None or (isinstance(value, str) and not value.strip())]
    if blank:
        rows = ", ".join(str(row + 1) for row in blank[:5])
        raise BadInput(
            f"{len(blank)} record(s) have no label in column {label_column!r} (record {rows}, counting from 1 "
            "after the header); fill in their labels or remove them."
        )
    ids, label_names, num_labels = label_ids(dataset.features[label_column], values, label_column, num_labels, label_names)
    num_labels = num_labels or len(label_names)
    if len(label_names) != num_labels:
        raise BadInput(f"--num-labels is {num_labels} but {len(label_names)} label names were given or found.")
    bad = [(row, label) for row, label in enumerate(ids) if not 0 <= label < num_labels]
    if bad:
        row, label = bad[0]
        raise BadInput(
            f"Label {label} in row {row} of column {label_column!r} is outside [0, {num_labels}) "
            f"({len(bad)} rows in all); fix the data or raise --num-labels."
        )
    if num_labels < 2:
        raise BadInput(f"A classifier needs at least 2 labels, found {label_names}; check --label-column.")
    if "labels" in dataset.column_names:  # the label column itself may be called "labels"
        dataset = dataset.remove_columns("labels")
    return dataset.add_column("labels", ids), label_names


def balance_by_undersampling(dataset: datasets.Dataset, seed: int) -> datasets.Dataset:
    """Keep a random `min(class count)` rows of every class."""
    labels = np.asarray(list(dataset["labels"]))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    keep = [rng.choice(np.flatnonzero(labels == c), counts.min(), replace=False) for c in classes]
    return dataset.select(np.sort(np.concatenate(keep)))


def split_dataset(
    dataset: datasets.Dataset, *, val_fraction: float, test_fraction: float, seed: int
) -> datasets.DatasetDict:
    """Shuffle once, then cut train / validation / test; every part gets at least one row."""
    check_fraction("--val-fraction", val_fraction)
    check_fraction("--test-fraction", test_fraction)
    total = len(dataset)
    n_test, n_val = round(total * test_fraction), round(total * val_fraction)
    if n_test < 1 or n_val < 1 or total - n_test - n_val < 1:
        raise BadInput(
            f"{total} records are too few for a train/validation/test split with fractions "
            f"{1 - val_fraction - test_fraction:.2f}/{val_fraction}/{test_fraction}; add data or change the fractions."
        )
    shuffled = dataset.shuffle(seed=seed)
    return datasets.DatasetDict(
        train=shuffled.select(range(total - n_val - n_test)),
        validation=shuffled.select(range(total - n_val - n_test, total - n_test)),
        test=shuffled.select(range(total - n_test, total)),
    )


# ----------------------------------------------------------------------------------------------
# 3. Tokenization
def tokenize_texts(dataset: datasets.Dataset, tokenizer, text_column: str, max_length: int) -> datasets.Dataset:
    """`input_ids` cut to `max_length` tokens; ONE warning says how many texts were cut."""
    texts = list(dataset[text_column])
    bad = next((row for row, text in enumerate(texts) if not isinstance(text, str) or not text), None)
    if bad is not None:
        raise BadInput(f"Row {bad} of column {text_column!r} has no text ({texts[bad]!r}); remove or fill it.")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    truncated = sum(len(row) > max_length for row in ids)
    if truncated:
        logger.warning(
            f"{truncated} of {len(ids)} texts are longer than {max_length} tokens "
            f"and were truncated to their first {max_length} tokens."
        )
    return dataset.add_column("input_ids", [row[:max_length] for row in ids])


# ----------------------------------------------------------------------------------------------
# 4. What trains
def set_trainable(model, trainable: str, last_blocks: int = 1) -> None:
    """Choose what trains: `all` weights, or `last-blocks` (the last N blocks, the final norm and the head)."""
    if trainable == "all":
        model.requires_grad_(True)
        return
    blocks = model.model.layers
    if not 1 <= last_blocks <= len(blocks):
        raise BadInput(f"--last-blocks must be between 1 and {len(blocks)} (the model's blocks), got {last_blocks}.")
    model.requires_grad_(False)
    for module in (*blocks[-last_blocks:], model.model.norm, model.score):
        module.requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# 5. Metrics
class ClassificationMetrics(evaluate.Metric):
    """Accuracy and macro-averaged precision, recall and F1 (over the classes seen in either input).
    An `evaluate.Metric` defined here rather than `evaluate.load("accuracy")`, which fetches its
    script from the Hub; `add_batch` / `compute` work as for any other metric, offline."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy and macro precision / recall / F1 of class predictions.",
            citation="",
            inputs_description="predictions and references: lists of integer class ids.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references) -> dict:
        predictions, references = np.asarray(predictions), np.asarray(references)
        precisions, recalls, f1s = [], [], []
        for label in np.union1d(predictions, references):
            true_positive = np.sum((predictions == label) & (references == label))
            precision = true_positive / max(np.sum(predictions == label), 1)
            recall = true_positive / max(np.sum(references == label), 1)
            precisions.append(precision)
            recalls.append(recall)
            f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        return {
            "accuracy": float(np.mean(predictions == references)),
            "precision": float(np.mean(precisions)),
            "recall": float(np.mean(recalls)),
            "f1": float(np.mean(f1s)),
        }


@torch.no_grad()
def classification_metrics(model, dataloader, accelerator=None) -> dict:
    """Loss and metrics of `model` over `dataloader`, in one pass; the loop's `evaluate_fn`
    (per-example losses and predictions gathered over processes)."""
    metric = ClassificationMetrics(keep_in_memory=True)  # no cache file shared between processes
    device = next(model.parameters()).device
    losses = []
    for batch in dataloader:
        inputs = {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}
        logits = model(**inputs).logits
        references = batch["labels"].to(device)
        loss = F.cross_entropy(logits.float(), references, reduction="none")  # single-label: the training loss
        predictions = logits.argmax(-1)
        if accelerator is not None:
            loss, predictions, references = accelerator.gather_for_metrics((loss, predictions, references))
        losses.append(loss.cpu())
        metric.add_batch(predictions=predictions.cpu(), references=references.cpu())
    return {"loss": torch.cat(losses).mean().item(), **metric.compute()}


# ----------------------------------------------------------------------------------------------
# The command
def make_trainable(model, args: ClassifyOptions):
    """Step 4 of the command: LoRA adapters + head, or the chosen weights of the model itself.
    (`scripts/bench_finetune.py` patches this function to swap in transformers' GPT-2 with the same weights.)"""
    if args.lora:
        return get_peft_model(model, lora_config_for(args, task="classification"))
    set_trainable(model, args.trainable or "last-blocks", args.last_blocks)
    return model


def check_head_size(model: str, num_labels: int) -> None:
    """A classifier folder as the base must have as many classes as the data (its head is kept)."""
    config_file = Path(model) / "config.json"
    if not config_file.is_file():
        return
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    if any(name.endswith("ForSequenceClassification") for name in saved.get("architectures") or []):
        saved_labels = len(saved.get("id2label") or {}) or saved.get("num_labels", 2)
        if saved_labels != num_labels:
            raise BadInput(
                f"--model {model!r} is a classifier with {saved_labels} classes but the data has {num_labels}; "
                "start from the pre-trained causal-LM folder instead, or use data with the same classes."
            )


def read_labelled_records(args: ClassifyOptions) -> tuple[datasets.Dataset, list[str]]:
    """Steps 1-2: the records of `--data` with checked integer `labels` (balanced with `--balance`), and the label names."""
    records = read_records(args.data, split=args.split, encoding=args.encoding, errors=args.encoding_errors)
    check_columns(records, [args.text_column, args.label_column], args.data)
    records, label_names = encode_labels(records, args.label_column, num_labels=args.num_labels, label_names=args.label_names)
    if args.balance:
        records = balance_by_undersampling(records, args.seed)
    return records, label_names


def classifier_factory(args: ClassifyOptions, tokenizer, label_names: list[str], state):
    """What the trainer calls, in its build context, to build the model: the base model with a new
    classification head for `label_names` (or a classifier's own head), then what trains (step 4)."""
    check_head_size(args.model, len(label_names))

    def build():
        with transformers_verbosity(logging.ERROR):  # no LOAD REPORT for the head added on purpose; ours below
            loaded = load_pretrained(  # a ScratchGPT, or GPT-2 / Llama / Qwen converted on the way in
                ScratchGPTForSequenceClassification.from_pretrained,
                args.model,
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
                pad_token_id=tokenizer.pad_token_id,
                trust_remote_code=args.trust_remote_code,
                output_loading_info=True,
            )
        model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
        new = sorted(info.get("missing_keys", ()))
        if new and all(key.startswith("score.") for key in new):
            state.print(f"A new classification head ({len(label_names)} classes) starts from random weights.")
        elif new or info.get("unexpected_keys"):
            state.print(f"Loading {args.model!r}: new weights {new}, weights left unused {sorted(info['unexpected_keys'])}.")
        model = make_trainable(model, args)
        state.print(describe_trainable(model))
        return model

    return build


def finetune_classifier(args: ClassifyOptions) -> dict:
    """The whole command; returns its metrics."""
    args = with_base_defaults(args, "classification")  # --lr and --trainable, when not given
    config = args.training()
    check_output_dir(config, inputs=[args.model, args.data])  # before any work: never over an input
    state = process_state()  # this process among those `accelerate launch` started (one by default)
    tokenizer = load_base_tokenizer(args.model, args.trust_remote_code)

    # 1-3. records -> checked labels -> balanced -> tokens -> train / validation / test
    records, label_names = read_labelled_records(args)
    build_model = classifier_factory(args, tokenizer, label_names, state)
    set_seed(args.seed)  # the new head (and LoRA) start the same way every run
    max_length = max_length_for(args.model, args.max_length, tokenizer)  # also checks the tokenizer against the model
    records = tokenize_texts(records, tokenizer, args.text_column, max_length).select_columns(["input_ids", "labels"])
    splits = split_dataset(records, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)
    sizes = ", ".join(f"{name} {len(part)}" for name, part in splits.items())
    state.print(f"{len(records)} records, labels {label_names}: {sizes}")

    # 4-6. the shared loop builds the model, validates during training, tests at the end, then saves once
    metrics = train(
        build_model,
        splits["train"],
        splits["validation"],
        config,
        test_dataset=splits["test"],
        collate_fn=DataCollatorWithPadding(tokenizer, return_tensors="pt"),
        evaluate_fn=classification_metrics,
        tokenizer=tokenizer,
        final_dir=config.output_dir,
        on_save=card_writer(args, "classifier", labels=dict(enumerate(label_names))),
        merge_adapters=args.save_merged,
        seq_len=max_length,
    )
    state.print("test: " + ", ".join(f"{name[5:]} {metrics[name]:.4f}" for name in metrics if name.startswith("test_")))
    state.print(f"saved to {config.output_dir}")
    return metrics
