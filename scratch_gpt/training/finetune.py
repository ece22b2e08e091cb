"""What the fine-tuning commands (`finetune-classifier`, `finetune-instruct`, `finetune-dpo`) share
beyond the loop: the base-model flags, the tokenizer of the base model, the token budget of a
record, the held-out split, and the model card written into the folder that the loop's
`save_model` produces. The training flags themselves are `options.py`'s."""

from pathlib import Path

from scratch_gpt.args import FinetuneOptions, hyperparameters
from scratch_gpt.errors import BadInput


def load_base_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer saved with the base model, completed (`scratch_gpt.tokenizer.complete_tokenizer`):
    GPT-2's gets end-of-text as its pad token and the Alpaca chat template."""
    from transformers import AutoTokenizer

    from scratch_gpt.convert import load_pretrained
    from scratch_gpt.tokenizer import complete_tokenizer

    return complete_tokenizer(load_pretrained(AutoTokenizer.from_pretrained, model, trust_remote_code=trust_remote_code))


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


def max_length_for(args: FinetuneOptions, tokenizer) -> int:
    """The token budget of one record: `--max-length`, at most the base model's context. The
    tokenizer is checked against the model's embeddings first; both come from config.json, so
    bad input fails before the weights load."""
    from scratch_gpt.convert import load_config
    from scratch_gpt.tokenizer import check_fits

    config = load_config(args.model)  # a ScratchGPT's, or a GPT-2 / Llama / Qwen checkpoint's converted
    check_fits(tokenizer, config, f"the model in {args.model!r}")
    context = config.max_position_embeddings
    return min(args.max_length or context, context)


def hold_out(rows, fraction: float, seed: int, what: str):
    """A seeded split of the Dataset `rows` into (training, held-out), `round(len * fraction)` held out."""
    n_val = round(len(rows) * fraction)
    if n_val < 1 or n_val == len(rows):
        raise BadInput(f"{len(rows)} {what} are too few to hold out {fraction:.0%}; add data or change --val-fraction.")
    rows = rows.shuffle(seed=seed)
    return rows.select(range(n_val, len(rows))), rows.select(range(n_val))
