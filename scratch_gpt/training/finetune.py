"""What the fine-tuning commands (`finetune-classifier`, `finetune-instruct`, `finetune-dpo`) share
beyond the loop and their options (`scratch_gpt.args.FinetuneOptions`): the base model's tokenizer and
the token budget of a record, the defaults chosen from the base, the checks of chat messages and of a
held-out share, the held-out split, the padding of a causal-LM batch, and the model card written into
the saved folder."""

from dataclasses import replace
from pathlib import Path

import torch

from scratch_gpt.args import FinetuneOptions, hyperparameters
from scratch_gpt.errors import BadInput

IGNORE_INDEX = -100  # the label value the loss skips (prompt and padding tokens)
ROLES = ("system", "user", "assistant")  # the roles a chat message may have


def load_base_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer saved with the base model, completed (`scratch_gpt.tokenizer.complete_tokenizer`):
    GPT-2's gets end-of-text as its pad token and the Alpaca chat template. Every command cuts or packs
    its sequences to the context itself, so transformers' warning about long sequences is not shown."""
    from transformers import AutoTokenizer

    from scratch_gpt.convert import load_pretrained
    from scratch_gpt.tokenizer import complete_tokenizer, truncates_itself

    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model, trust_remote_code=trust_remote_code)
    return truncates_itself(complete_tokenizer(tokenizer))


def card_writer(args: FinetuneOptions, kind: str, extra=None, **card):
    """The `on_save` of a fine-tuning run: `extra(folder)` adds files, then the model card is written
    (`card`: more arguments of `write_model_card`, e.g. the labels of a classifier)."""
    from scratch_gpt.hub import write_model_card

    def write(folder: Path, metrics: dict) -> None:
        if extra is not None:
            extra(folder)
        write_model_card(
            folder,
            kind=kind,
            metrics=metrics,
            hyperparameters=hyperparameters(args),
            datasets=[args.data],
            base_model=args.model,
            model_name=Path(args.output_dir).name,
            **card,
        )

    return write


def max_length_for(model: str, max_length: int | None, tokenizer) -> int:
    """The token budget of one record: `max_length` (`--max-length`), at most the context of the base
    model `model`. The tokenizer is checked against the model's embeddings first; both come from
    config.json, so bad input fails before the weights load."""
    from scratch_gpt.convert import load_config
    from scratch_gpt.tokenizer import check_fits

    config = load_config(model)  # a ScratchGPT's, or a GPT-2 / Llama / Qwen checkpoint's converted
    check_fits(tokenizer, config, f"the model in {model!r}")
    context = config.max_position_embeddings
    return min(max_length or context, context)


# ----------------------------------------------------------------------------------------------
# Defaults that follow the base: what trains and at which learning rate, when no flag says.
# Measured on the book's data (README, "Defaults that learn"): a base of a few million parameters,
# pre-trained on other text, has no features of the new task to reuse in a frozen body, and learns it
# trained whole at about the learning rate it was pre-trained with; a large pre-trained base (GPT-2
# 124M and up) keeps its features best as the book trains it, the last block at lr 5e-5.
SMALL_BASE = 50_000_000  # parameters
SMALL_BASE_LR = {"classification": 5e-4, "instruct": 2e-3}
LARGE_BASE_LR = 5e-5  # the book's, for GPT-2 124M (chapter 6) and 355M (chapter 7)


def parameter_count(config) -> int:
    """The parameters of a causal LM of `config` (tied weights once), built on the meta device: no memory, no weights."""
    from scratch_gpt import ScratchGPTForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in ScratchGPTForCausalLM(config).parameters())


def base_defaults(config, task: str) -> tuple[str, float, str]:
    """`(what trains, learning rate, why)` for fine-tuning a base of this config when no flag says;
    `task` is "classification" or "instruct" (which trains every weight either way)."""
    count = parameter_count(config)
    size = f"the base has {count / 1e6:.1f} M parameters"
    if count < SMALL_BASE:
        return "all", SMALL_BASE_LR[task], f"{size}, under {SMALL_BASE // 10**6} M"
    what = "last-blocks" if task == "classification" else "all"
    return what, LARGE_BASE_LR, f"{size}, the book's choice for a pre-trained GPT-2"


def with_base_defaults(args, task: str):
    """`args` with `--lr` (and a classifier's `--trainable`) chosen by `base_defaults` where not given
    (explicit flags and `--config` keys win), and one line saying what was chosen and why."""
    from scratch_gpt.convert import load_config
    from scratch_gpt.training.loop import process_state

    if args.learning_rate is not None and (task != "classification" or args.lora or args.trainable):
        return args
    trainable, learning_rate, why = base_defaults(load_config(args.model, trust_remote_code=args.trust_remote_code), task)
    chosen = {} if args.learning_rate is not None else {"learning_rate": learning_rate}
    if task == "classification" and not args.lora and not args.trainable:
        chosen["trainable"] = trainable
    what = {"all": "training all weights", "last-blocks": "training the last block(s), final norm and head"}
    words = what[chosen["trainable"]] if "trainable" in chosen else "training"
    words += f" at lr {chosen['learning_rate']:g}" if "learning_rate" in chosen else ""
    flags = " or ".join(flag for flag, key in (("--trainable", "trainable"), ("--lr", "learning_rate")) if key in chosen)
    process_state().print(f"{words}: {why} (pass {flags} to choose).")
    return replace(args, **chosen)


def is_messages(value) -> bool:
    """Whether `value` is a list of chat messages, each `{"role": one of ROLES, "content": text}`."""
    return isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value
    )


def check_fraction(flag: str, value: float) -> None:
    """One sentence unless the share `value` given with `flag` (`--val-fraction`, ...) lies strictly between 0 and 1."""
    if not 0.0 < value < 1.0:
        raise BadInput(f"{flag} must be between 0 and 1 (exclusive), got {value}.")


def hold_out(rows, fraction: float, seed: int, what: str):
    """A seeded split of the Dataset `rows` into (training, held-out), `round(len * fraction)` held out."""
    n_val = round(len(rows) * fraction)
    if n_val < 1 or n_val == len(rows):
        raise BadInput(f"{len(rows)} {what} are too few to hold out {fraction:.0%}; add data or change --val-fraction.")
    rows = rows.shuffle(seed=seed)
    return rows.select(range(n_val, len(rows))), rows.select(range(n_val))


def pad_batch(sequences: list[tuple], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch for a causal LM from `(input_ids, label_mask)` pairs, padded on the right with
    `pad_token_id`; `attention_mask` is 1 on tokens and 0 on padding, and `labels` are the input ids
    (the model shifts them by one) with IGNORE_INDEX on padding and where `label_mask` is 0 (None:
    every token is a label). Padding is told by length, never by id, so each sequence keeps its own
    end-of-text target even when the pad token is end-of-text."""
    length = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, label_mask) in enumerate(sequences):
        ids = torch.as_tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        if label_mask is not None:
            ids = ids.masked_fill(torch.as_tensor(label_mask) == 0, IGNORE_INDEX)
        labels[i, : len(ids)] = ids
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
