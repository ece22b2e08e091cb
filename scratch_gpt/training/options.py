"""One description of the training options, shared by every command that trains.

`OPTIONS` below is the single list of training flags: each row names the flag, the
`TrainingConfig` field it sets, its type and its help. Every training command calls

    parser = argparse.ArgumentParser(prog="scratch-gpt pretrain", ...)
    ...its own flags (data, model, head)...
    add_training_options(parser, batch_size=16, learning_rate=1e-3)   # the command's own defaults
    return run_command(parser, argv, body)                           # parse (with --config), run, report

and `body(args)` builds its `TrainingConfig` with `from_args(args)`. So the same flag has the same
name, meaning and config-file key in every command, present and future. `--config FILE` (YAML or
JSON) sets any flag of the command, its keys being the flag names (`max-steps` or `max_steps`,
aliases too); flags given on the command line win over the file.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scratch_gpt.errors import BadInput, MissingFile, run_reporting
from scratch_gpt.training.loop import TrainingConfig


@dataclass(frozen=True)
class Option:
    flag: str
    field: str  # the TrainingConfig field it sets
    help: str
    value_type: type | Callable | None = None  # None: an on/off switch
    nargs: int | None = None  # a fixed number of values (--adam-betas 0.9 0.999)
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()  # older spellings, accepted but not shown in --help
    repeat: bool = False  # may be given more than once (a list)


def figures_mapping(value) -> dict:
    """`--book-figures`: a mapping of our metric names to numbers, from YAML or a JSON string."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
        raise BadInput("--book-figures takes a mapping of metric names to numbers, e.g. {\"eval_loss\": 6.12}")
    return {str(k): float(v) for k, v in value.items()}


OPTIONS = (
    Option("--output-dir", "output_dir", "folder for the run (logs, checkpoints) and its model", str, aliases=("--output",)),
    Option("--epochs", "num_epochs", "passes over the training data", int),
    Option("--max-steps", "max_steps", "optimizer steps; overrides --epochs", int),
    Option("--batch-size", "batch_size", "examples per process per micro-batch", int),
    Option("--global-batch-size", "global_batch_size", "examples per optimizer step over all processes; sets --batch-size to its share", int),
    Option("--gradient-accumulation-steps", "gradient_accumulation_steps", "micro-batches per optimizer step", int,
           aliases=("--grad-accum",)),
    Option("--lr", "learning_rate", "peak learning rate (AdamW)", float),
    Option("--weight-decay", "weight_decay", "AdamW weight decay", float),
    Option("--weight-decay-all", "weight_decay_all", "weight decay on every parameter, biases, norms and embeddings too (as the book)"),
    Option("--adam-betas", "adam_betas", "AdamW betas (the book: torch's 0.9 0.999)", float, nargs=2),
    Option("--warmup-steps", "warmup_steps", "steps of linear warmup", int),
    Option("--min-lr-ratio", "min_lr_ratio", "the cosine schedule ends at this share of --lr", float),
    Option("--max-grad-norm", "max_grad_norm", "clip gradients to this norm (0: no clipping)", float),
    Option("--mixed-precision", "mixed_precision", "mixed precision", str, choices=("no", "bf16", "fp16")),
    Option("--compile", "compile", "torch.compile the model"),
    Option("--gradient-checkpointing", "gradient_checkpointing", "recompute activations in the backward pass (less memory)"),
    Option("--loss-chunk-size", "loss_chunk_size", "causal-LM loss this many tokens at a time, without the full logits (0: off)", int),
    Option("--fsdp", "fsdp", "shard weights, gradients and optimizer state over the processes (FSDP2; also on by an FSDP accelerate config)"),
    Option("--seed", "seed", "seed for the data order, the splits and new weights", int),
    Option("--eval-every", "eval_every", "steps between evaluations (0: only at the end)", int),
    Option("--eval-batches", "eval_max_batches", "at most this many batches per evaluation", int),
    Option("--train-eval-batches", "train_eval_batches",
           "at each evaluation, also the loss on the first N training batches in eval mode (train_eval_loss, the book's training loss)", int),
    Option("--log-every", "log_every", "steps between training-loss logs", int),
    Option("--save-every", "save_every", "steps between checkpoints (0: none)", int),
    Option("--keep-checkpoints", "keep_checkpoints", "how many checkpoints to keep", int),
    Option("--resume", "resume", "continue from the newest checkpoint in --output-dir"),
    Option("--overwrite", "overwrite", "replace an existing --output-dir that scratch-gpt did not write"),
    Option("--sample-prompt", "sample_prompts", "prompt to sample from at each evaluation (repeatable)", str, repeat=True),
    Option("--sample-tokens", "sample_max_new_tokens", "tokens sampled per prompt", int),
    Option("--peak-flops", "peak_flops", "peak FLOP/s of one device, for MFU; known GPUs are looked up, elsewhere no MFU is shown without it", float),
    Option("--report-to", "report_to", "experiment tracker", str, choices=("auto", "tensorboard", "none")),
    Option("--no-progress", "progress", "no progress bars (ours, transformers' and datasets')"),
    # Config-file key (or JSON on the command line): published figures printed beside ours at the end.
    Option("--book-figures", "book_figures", "published figures to compare with at the end, {metric: value} (YAML mapping or JSON)",
           figures_mapping),
)


def add_training_options(parser: argparse.ArgumentParser, **defaults) -> None:
    """Add `--config` and every training flag; `defaults` are TrainingConfig fields (the command's own)."""
    unknown = set(defaults) - {option.field for option in OPTIONS}
    if unknown:
        raise TypeError(f"add_training_options got defaults for unknown fields {sorted(unknown)}")
    base = TrainingConfig(**{k: v for k, v in defaults.items() if k != "output_dir"})
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of options (keys: the flag names); flags win")
    group = parser.add_argument_group("training (the shared loop)")
    for option in OPTIONS:
        default = defaults.get(option.field, getattr(base, option.field))
        if option.field == "progress":  # the flag switches it off
            group.add_argument(option.flag, dest="progress", action="store_false", help=option.help)
            continue
        if option.value_type is None:
            kwargs = dict(action="store_true")
        elif option.repeat:
            kwargs = dict(action="append", type=option.value_type, default=list(default))
        else:
            kwargs = dict(type=option.value_type, choices=option.choices, default=default, nargs=option.nargs)
        required = option.field == "output_dir" and default is None
        help_ = f"{option.help} (required)" if required else f"{option.help} (default: %(default)s)"
        group.add_argument(option.flag, dest=option.field, help=help_, **kwargs)
        if required:
            group._actions[-1].required = True
        for alias in option.aliases:  # same destination; hidden from --help
            group.add_argument(alias, dest=option.field, help=argparse.SUPPRESS, **{**kwargs, "default": argparse.SUPPRESS})


def from_args(args: argparse.Namespace, **overrides) -> TrainingConfig:
    """The `TrainingConfig` that the parsed flags describe (plus `overrides`)."""
    values = {option.field: getattr(args, option.field) for option in OPTIONS}
    try:
        return TrainingConfig(**{**values, **overrides})
    except ValueError as error:  # name the flag the user gave, not the config field
        message = str(error)
        for option in OPTIONS:
            message = message.replace(f"TrainingConfig.{option.field} ", f"{option.flag} ")
        raise BadInput(message) from None


def public_options(args: argparse.Namespace) -> dict:
    """The options of a run as its model card lists them (not where it ran or how it printed)."""
    return {k: v for k, v in vars(args).items() if k not in ("config", "progress", "output_dir", "overwrite")}


# ----------------------------------------------------------------------------------------------
# Parsing: the command line over the --config file over the command's defaults.


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; a `--config` file sets defaults the command line overrides. Required flags
    may come from either."""
    required = [action for action in parser._actions if action.required]
    for action in required:  # checked below, once the file has had its say
        action.required = False
    try:
        args = parser.parse_args(argv)
        if getattr(args, "config", None):
            parser.set_defaults(**read_config_file(args.config, parser))
            args = parser.parse_args(argv)
    finally:
        for action in required:
            action.required = True
    missing = [action.option_strings[0] for action in required if getattr(args, action.dest, None) is None]
    if missing:
        where = " (on the command line or in --config)" if "--config" in parser._option_string_actions else ""
        parser.error(f"the following arguments are required: {', '.join(missing)}{where}; see --help.")
    return args


def read_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    """The options in a YAML/JSON file as `{dest: value}`; one clear error for anything wrong in it."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise MissingFile(f"The config file {path!r} does not exist; check the --config path.")
    try:
        text = file.read_text(encoding="utf-8")
        values = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None) or getattr(error, "lineno", None)
        line = f" (line {where.line + 1})" if hasattr(where, "line") else f" (line {where})" if where else ""
        raise BadInput(f"The config file {path!r} is not valid YAML/JSON{line}; fix its syntax.") from None
    if not isinstance(values, dict):
        raise BadInput(f"The config file {path!r} must hold a mapping of option names to values.")
    actions = {
        flag.lstrip("-").replace("-", "_"): action
        for action in parser._actions
        for flag in action.option_strings
        if action.dest not in ("help", "config")
    }
    unknown = sorted(key for key in values if str(key).replace("-", "_") not in actions)
    if unknown:
        known = sorted({action.option_strings[0].lstrip("-") for action in actions.values() if action.help != argparse.SUPPRESS})
        raise BadInput(
            f"Unknown option(s) {', '.join(map(str, unknown))} in {path!r}; valid keys are the flag names: {', '.join(known)}."
        )
    return dict(_config_value(actions[str(key).replace("-", "_")], key, value, path) for key, value in values.items())


def _config_value(action: argparse.Action, key, value, path: str):
    """(dest, value) for one key of a config file, typed as the flag would be."""
    if isinstance(action, argparse._StoreConstAction):  # on/off switches (store_true, --no-progress, ...)
        if not isinstance(value, bool):
            raise BadInput(f"Option {key!r} in {path!r} is a switch; give it true or false.")
        return action.dest, action.const if value else action.default
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = value if isinstance(value, list) else [value]  # one string for a list option is one item
    if not many and isinstance(value, list):
        raise BadInput(f"Option {key!r} in {path!r} takes one value, got a list.")
    try:
        items = [action.type(item) if action.type and item is not None else item for item in items]
    except (TypeError, ValueError):
        kind = "mapping" if action.type is figures_mapping else action.type.__name__
        raise BadInput(f"Option {key!r} in {path!r} has the value {value!r}, which is not a valid {kind}.") from None
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise BadInput(f"Option {key!r} in {path!r} takes {action.nargs} values, got {value!r}.")
    if action.choices is not None and any(item not in action.choices for item in items):
        raise BadInput(f"Option {key!r} in {path!r} must be one of {', '.join(map(str, action.choices))}, got {value!r}.")
    return action.dest, items if many else items[0]


# ----------------------------------------------------------------------------------------------
# Running a command: bad input is one sentence and exit status 2 (scratch_gpt.errors).


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, body) -> int:
    """Parse `argv` (with `--config`) and run `body(args)` under the error policy of
    `scratch_gpt.errors`: bad input is one sentence and exit status 2, a diverged run exit status 1,
    anything else a bug with its traceback."""

    def parse_and_run():
        args = parse_args(parser, argv)
        if getattr(args, "progress", True) is False:
            quiet_progress_bars()
        body(args)

    return run_reporting(parser.prog, parse_and_run)


def quiet_progress_bars() -> None:
    """`--no-progress`: also silence the bars of datasets (tokenizing) and transformers (loading, saving)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


__all__ = ["OPTIONS", "add_training_options", "from_args", "parse_args", "run_command"]
