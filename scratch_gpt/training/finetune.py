"""What both fine-tuning commands (`finetune-classifier`, `finetune-instruct`) share: the training
options and their `TrainingConfig`, and the one atomic save of the result (model or LoRA adapter,
tokenizer, logs, metrics, card). Their data is read by `scratch_gpt.sources.read_records`."""

import argparse
import json
import shutil
from pathlib import Path

from scratch_gpt.hub import write_model_card
from scratch_gpt.io_utils import atomic_directory
from scratch_gpt.training.loop import TrainingConfig, process_state


def save_finetuned(model, tokenizer, output: Path, *, merge: bool, metrics: dict, card: dict, extra=None) -> None:
    """Write the model (or only its LoRA adapter), tokenizer, logs, metrics and card in one atomic step.

    `merge`: fold LoRA adapters into the weights and save a plain model. The loop's
    `metrics.jsonl` and `loss_curve.png` (written into `output` while training) are carried over;
    its checkpoints are not. `extra(folder)` may add files of its own.
    """
    if not process_state().is_main_process:
        return
    with atomic_directory(output) as tmp:
        (model.merge_and_unload() if merge else model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in ("metrics.jsonl", "loss_curve.png"):
            if (output / name).is_file():
                shutil.copy2(output / name, tmp / name)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if extra is not None:
            extra(tmp)
        write_model_card(tmp, metrics=metrics, model_name=output.name, **card)


def add_training_arguments(parser: argparse.ArgumentParser, *, epochs: int, learning_rate: float, batch_size: int):
    group = parser.add_argument_group("training (the shared loop)")
    group.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training split (default: {epochs})")
    group.add_argument("--max-steps", type=int, default=None, help="optimizer steps; overrides --epochs")
    group.add_argument("--batch-size", type=int, default=batch_size, help=f"examples per step (default: {batch_size})")
    group.add_argument("--gradient-accumulation-steps", type=int, default=1)
    group.add_argument("--lr", type=float, default=learning_rate, help=f"peak learning rate (default: {learning_rate})")
    group.add_argument("--weight-decay", type=float, default=0.1)
    group.add_argument("--warmup-steps", type=int, default=0)
    group.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: 0, at the end only)")
    group.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    group.add_argument("--seed", type=int, default=0, help="seed for the split, the balancing and training")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def training_config(args: argparse.Namespace, output: Path) -> TrainingConfig:
    return TrainingConfig(
        output_dir=str(output),
        num_epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        eval_every=args.eval_every,
        eval_at_start=True,  # the metrics before fine-tuning, for comparison
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        progress=not args.no_progress,
        log_every=1,
        report_to="none",
    )
