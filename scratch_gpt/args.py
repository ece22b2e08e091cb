"""Every option of every command, declared once.

An option is one typed dataclass field. Its metadata, written by `option(...)`, holds the help text,
the allowed range or choices, older spellings, and whether it may change when a run is resumed:

    learning_rate: float = option(3e-4, "peak learning rate (AdamW)", flag="--lr", more_than=0)

A path option also says what the command does with it: `reads=True` (an input, never to be written
over) or `writes="folder"|"run"|"file"` (an output, checked by `scratch_gpt.io_utils` before the
command runs). From these fields `scratch_gpt.cli` generates each command's flags and `--config` keys, and
`check_values` below validates them before any work. A command's options are one class made of
groups (`class PretrainOptions(SourceOptions, ..., TrainingOptions)`), so a library function takes a
typed object, never an argparse Namespace. This module imports nothing heavy: `scratch-gpt --help`
reads it without torch; a choice list from a heavy module is named "module:NAME", read when checked.
"""

import importlib
import json
import math
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, Callable, get_args, get_origin

from scratch_gpt.errors import BadInput

# A byte-level BPE (scratch_gpt.tokenizer) holds the 256 bytes, end-of-text, pad and the response marker.
MIN_VOCAB_SIZE = 256 + 3
# What `export` writes: a folder of a native transformers family (scratch_gpt.convert), or a GGUF file for
# llama.cpp, Ollama and LM Studio (scratch_gpt.gguf_export), its weights in one of GGUF_TYPES.
EXPORT_TARGETS = ("gpt2", "llama", "qwen2", "qwen3", "gguf")
GGUF_TYPES = ("f32", "f16", "q8_0")
VOCAB_RULE = (lambda n: n >= MIN_VOCAB_SIZE, f"at least {MIN_VOCAB_SIZE} (smaller is too small for the 256 bytes and the special tokens)")


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    aliases: tuple = (),
    at_least: float | None = None,
    more_than: float | None = None,
    at_most: float | None = None,
    less_than: float | None = None,
    choices: tuple | str | None = None,
    rule: tuple[Callable[[Any], bool], str] | None = None,
    required: bool = False,
    positional: bool = False,
    repeat: bool = False,
    parse: Callable[[Any], Any] | None = None,
    resumable: bool = False,
    cli: bool = True,
    metavar: str | None = None,
    reads: bool = False,
    writes: str | None = None,
) -> Any:
    """A declared option. `aliases` are older flags (hidden in --help); an alias given as
    `(flag, value)` sets the option to `value`. `rule` is `(accepts(value), "what it must be")`.
    `resumable`: the option may differ when `--resume` continues a run. `cli=False`: Python only.
    `reads`: a path the command reads. `writes`: a path it writes, a "folder" replaced whole, a
    training "run" folder added to over runs, or a "file"."""
    metadata = {name: value for name, value in locals().items() if name != "default"}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# Reading a declaration


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def value_type(f: Field) -> tuple[type, int | None]:
    """(type of one value, how many values: None for one, 0 for a list, n for a fixed count)."""
    kind, count = f.type, None
    if type(None) in get_args(kind):  # X | None
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    if get_origin(kind) in (list, tuple):
        items = get_args(kind)
        count = 0 if len(items) == 1 or items[-1] is Ellipsis else len(items)
        kind = items[0]
    return kind, count


def choices_of(f: Field) -> tuple | None:
    choices = f.metadata.get("choices")
    if isinstance(choices, str):  # "module:NAME": a list that lives in a heavy module
        module, name = choices.split(":")
        choices = getattr(importlib.import_module(module), name)
    return tuple(choices) if choices is not None else None


def declared(cls) -> list[Field]:
    """The options of `cls` (the fields with an `option(...)` declaration)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def shown_name(f: Field) -> str:
    """How messages name an option: its flag, or the metavar of a positional argument (OUT_DIR)."""
    return (f.metadata["metavar"] or f.name.upper()) if f.metadata["positional"] else flag_of(f)


def paths_read(options) -> list[str]:
    """The values of the options declared `reads=True` (every path the command reads)."""
    values = [getattr(options, f.name) for f in declared(type(options)) if f.metadata["reads"]]
    return [item for value in values for item in (value if isinstance(value, (list, tuple)) else [value]) if item]


def paths_written(options) -> list[tuple[Field, str]]:
    """`(declaration, path)` of every option declared `writes=` that has a value."""
    return [(f, getattr(options, f.name)) for f in declared(type(options)) if f.metadata["writes"] and getattr(options, f.name)]


def default_of(f: Field):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def range_text(f: Field) -> str | None:
    """The declared range in words ("at least 1", "between 0 and 1"), None without one."""
    meta = f.metadata
    low = meta["at_least"] if meta["at_least"] is not None else meta["more_than"]
    high = meta["at_most"] if meta["at_most"] is not None else meta["less_than"]
    if meta["at_least"] is not None and meta["at_most"] is not None:
        return f"between {low:g} and {high:g}"
    if low is not None and high is not None:  # an interval open at one end at least
        return f"in {'[' if meta['at_least'] is not None else '('}{low:g}, {high:g}{']' if meta['at_most'] is not None else ')'}"
    if meta["more_than"] == 0:
        return "positive"
    if meta["at_least"] is not None:
        return "0 or more" if meta["at_least"] == 0 else f"at least {meta['at_least']:g}"
    if meta["more_than"] is not None:
        return f"more than {meta['more_than']:g}"
    return f"at most {high:g}" if high is not None else None


def in_range(f: Field, number: float) -> bool:
    meta = f.metadata
    return (
        (meta["at_least"] is None or number >= meta["at_least"])
        and (meta["more_than"] is None or number > meta["more_than"])
        and (meta["at_most"] is None or number <= meta["at_most"])
        and (meta["less_than"] is None or number < meta["less_than"])
    )


def problem(f: Field, value, name: str) -> str | None:
    """What is wrong with `value` for the option `f`, named `name` (None: nothing), as one sentence."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    each = " each" if len(items) > 1 else ""
    shown = tuple(value) if isinstance(value, list) else value
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            wanted = range_text(f)
            then = f"; {name} must{each} be {wanted}." if wanted else "."
            return f"{name} must be a finite number, got {shown!r}{then}"
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not in_range(f, item):
            return f"{name} must{each} be {range_text(f)}, got {shown!r}."
        choices = choices_of(f)
        if choices is not None and item not in choices:
            return f"{name} must be one of {', '.join(map(str, choices))}, got {item!r}."
        rule = f.metadata.get("rule")
        if rule is not None and not rule[0](item):
            return f"{name} must be {rule[1]}, got {item!r}."
    return None


def check_values(cls, values: dict, name: Callable[[Field], str]) -> None:
    """Raise `BadInput` for the first value outside its declaration; `name(field)` says how the
    message names the option (its flag on the command line, `Class.field` in Python)."""
    for f in declared(cls):
        if f.name in values:
            wrong = problem(f, values[f.name], name(f))
            if wrong:
                raise BadInput(wrong)


@dataclass
class Options:
    """The base of every option group: a value outside its declaration is refused on creation."""

    def __post_init__(self):
        check_values(type(self), vars(self), lambda f: f"{type(self).__name__}.{f.name}")
        self.check()

    def check(self) -> None:
        """Checks that involve several options (a group adds its own; each calls `super().check()`)."""

    def part(self, cls):
        """The `cls` group of these options, e.g. `options.part(TrainingConfig)`."""
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})


def figures_mapping(value) -> dict[str, float]:
    """`--book-figures`: a mapping of our metric names to numbers, from YAML or a JSON string."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
        raise BadInput("--book-figures takes a mapping of metric names to numbers, e.g. {\"eval_loss\": 6.12}")
    return {str(k): float(v) for k, v in value.items()}


def comma_list(value: str | list | None) -> list[str] | None:
    """`a,b,c` as a list (a YAML list is taken as it is)."""
    if value is None or isinstance(value, list):
        return value
    return value.split(",")


# ----------------------------------------------------------------------------------------------
# The groups. Each class is one group of `--help`; `GROUP` is its title.


@dataclass
class OutputFolder(Options):
    GROUP = "output"
    output_dir: str | None = option(
        None, "folder to write (replaced whole, never half-written)", aliases=("--output",), resumable=True, writes="folder"
    )  # a run folder may be moved or copied, then resumed
    overwrite: bool = option(False, "replace an existing output that scratch-gpt did not write", resumable=True)


@dataclass
class TrainingOptions(OutputFolder):
    """The shared loop's options, the same in every training command (their values: `TrainingConfig`)."""

    GROUP = "training (the shared loop)"
    # Length of the run: `max_steps` optimizer steps if set, else `num_epochs` passes over the data.
    num_epochs: int = option(1, "passes over the training data", flag="--epochs", at_least=1)
    max_steps: int | None = option(None, "optimizer steps; overrides --epochs", at_least=1, resumable=True)
    batch_size: int = option(8, "examples per process per micro-batch", at_least=1)
    global_batch_size: int | None = option(None, "examples per step over all processes; sets --batch-size", at_least=1)
    eval_batch_size: int | None = option(None, "examples per eval batch (default: --batch-size)", at_least=1, cli=False)
    gradient_accumulation_steps: int = option(1, "micro-batches per step", aliases=("--grad-accum",), at_least=1)
    # AdamW, linear warmup then cosine decay down to min_lr_ratio * learning_rate.
    learning_rate: float = option(3e-4, "peak learning rate (AdamW)", flag="--lr", more_than=0)
    weight_decay: float = option(0.1, "AdamW weight decay", at_least=0)
    weight_decay_all: bool = option(False, "decay every parameter, biases, norms and embeddings too (as the book)")
    adam_betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas (the book: 0.9 0.999)", at_least=0, less_than=1)
    adam_eps: float = option(1e-8, "AdamW epsilon", more_than=0, cli=False)
    warmup_steps: int = option(0, "steps of linear warmup", at_least=0)
    min_lr_ratio: float = option(0.1, "the cosine schedule ends at this share of --lr", at_least=0, at_most=1)
    max_grad_norm: float | None = option(1.0, "clip gradients to this norm (0: no clipping)", at_least=0)
    mixed_precision: str = option("no", "mixed precision", choices=("no", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile the model")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    # The causal-LM loss this many tokens at a time, fused with the LM head, so the (tokens x vocab)
    # logits never exist (ScratchGPT's `loss_chunk_size`; other models ignore it). 0 or None: off.
    loss_chunk_size: int | None = option(256, "causal-LM loss N tokens at a time, no full logits (0: off)", at_least=0)
    fsdp: bool = option(False, "shard weights, grads and optimizer state (FSDP2; also on by an FSDP accelerate config)")
    seed: int = option(0, "seed for the data order, the splits and new weights", at_least=0)
    shuffle: bool = option(True, "shuffle the training data each epoch", cli=False)
    # Evaluation: every `eval_every` steps (0: only at the end), on at most `eval_max_batches` batches.
    eval_every: int = option(0, "steps between evaluations (0: only at the end)", at_least=0, resumable=True)
    eval_max_batches: int | None = option(None, "batch cap per eval", flag="--eval-batches", at_least=1, resumable=True)
    eval_at_start: bool = option(True, "measure the model before the first step", cli=False)
    train_eval_batches: int = option(0, "the book's training loss, N batches in eval mode", at_least=0, resumable=True)
    book_figures: dict | None = option(
        None, "published {metric: value} to compare with at the end (JSON)", parse=figures_mapping, resumable=True
    )
    bytes_per_token: float | None = option(None, "UTF-8 bytes per token (for bits per byte)", more_than=0, cli=False)
    sample_prompts: list[str] = option(
        [], "prompt to sample from at each evaluation (repeatable)", flag="--sample-prompt", repeat=True, resumable=True
    )
    sample_max_new_tokens: int = option(40, "tokens per sample", flag="--sample-tokens", at_least=1, resumable=True)
    # Logging and progress.
    log_every: int = option(10, "steps between training-loss logs", at_least=1, resumable=True)
    progress: bool = option(True, "no progress bars (ours and the libraries')", flag="--no-progress", resumable=True)
    report_to: str = option("auto", "experiment tracker", choices=("auto", "tensorboard", "none"), resumable=True)
    peak_flops: float | None = option(
        None, "peak FLOP/s of one device, for MFU (default: looked up for known GPUs)", more_than=0, resumable=True
    )
    # Checkpoints.
    save_every: int = option(0, "steps between checkpoints (0: none)", at_least=0, resumable=True)
    keep_checkpoints: int = option(2, "how many checkpoints to keep", at_least=1, resumable=True)
    resume: bool = option(False, "continue from the newest checkpoint in --output-dir", resumable=True)
    run_options: dict | None = option(None, "a command's options, saved as config.yaml in the run folder", cli=False)

    def training(self) -> "TrainingConfig":
        """The loop's part of a command's options, which carries all of them for the run folder's config.yaml."""
        return replace(self.part(TrainingConfig), run_options=as_config(self))


@dataclass
class TrainingConfig(TrainingOptions):
    """What `scratch_gpt.training.loop.train` takes: the training options, sequences as tuples."""

    def check(self) -> None:
        super().check()
        self.adam_betas = tuple(self.adam_betas)
        self.sample_prompts = tuple(self.sample_prompts)


@dataclass
class TrustRemoteCode(Options):
    GROUP = "model"
    trust_remote_code: bool = option(False, "run Python code the model folder ships (auto_map); else it is refused")


@dataclass
class SourceOptions(Options):
    """`--data` (read by `scratch_gpt.sources`, the same in every command) and how to decode its files."""

    GROUP = "data"
    data: str | None = option(None, "file (text or table), folder, glob or Hub dataset (hub:NAME)", required=True, reads=True)
    encoding: str = option("utf-8", "text encoding of the data files, e.g. cp1252")
    encoding_errors: str = option(
        "strict", "'replace' turns undecodable bytes into U+FFFD instead of stopping",
        choices=("strict", "replace"), aliases=(("--replace-invalid-utf8", "replace"),),
    )  # fmt: skip


@dataclass
class TextColumn(Options):
    GROUP = "data"
    text_column: str = option("text", "column holding the text in tables and datasets")


@dataclass
class PretrainOptions(TrustRemoteCode, TextColumn, SourceOptions, TrainingOptions):
    """`scratch-gpt pretrain` and `quickstart`."""

    GROUP = "pre-training"
    block_size: int = option(128, "context length of the training blocks", at_least=2)
    stride: int | None = option(None, "tokens between block starts (default: block size, disjoint)", at_least=1)
    val_fraction: float = option(0.05, "share of documents held out for validation", more_than=0, less_than=1)
    num_proc: int | None = option(None, "processes for tokenization", at_least=1, resumable=True)
    streaming: bool = option(False, "read and pack the corpus lazily (larger than memory); needs --max-steps")
    tokenizer: str | None = option(None, "a saved tokenizer folder; default: train one on --data", reads=True)
    vocab_size: int = option(4096, "vocabulary of the tokenizer trained when --tokenizer is not given", rule=VOCAB_RULE)
    preset: str = option("tiny", "model size to start from", choices="scratch_gpt.configuration_scratch_gpt:PRESETS")
    hidden_size: int | None = option(None, "width of the model (default: the preset's)", at_least=1)
    num_layers: int | None = option(None, "transformer blocks (default: the preset's)", at_least=1)
    num_heads: int | None = option(None, "attention heads (default: the preset's)", at_least=1)
    num_kv_heads: int | None = option(None, "key/value heads (GQA); default: the preset's share of heads", at_least=1)
    intermediate_size: int | None = option(None, "width of the MLP (default: the preset's)", at_least=1)
    dropout: float = option(0.0, "dropout rate", at_least=0, less_than=1)
    model_vocab_size: int | None = option(None, "embedding rows (default: tokenizer size rounded up to 64)", at_least=1)
    # The book's GPTModel differs from GPT-2's defaults in three ways; scripts/book/ch05.yaml sets them.
    untied_head: bool = option(False, "an output head of its own (default: tied to the token embedding)")
    no_qkv_bias: bool = option(False, "no bias in the query/key/value projection")
    init_style: str = option(
        "gpt2", "gpt2: N(0, 0.02); pytorch: torch's layer defaults, as the book's model",
        choices="scratch_gpt.configuration_scratch_gpt:INIT_STYLES",
    )  # fmt: skip
    init_from: str | None = option(None, "continue pre-training a saved causal-LM folder instead of a new model", reads=True)
    output_dir: str | None = option(
        None, "the run's folder: model/, checkpoints, logs (added to by --resume)", aliases=("--output",), resumable=True,
        writes="run",
    )  # fmt: skip

    def check(self) -> None:
        super().check()
        if self.streaming and not self.max_steps:
            raise BadInput("--streaming needs --max-steps: a stream has no length to count epochs by.")


@dataclass
class PrepareDataOptions(TrustRemoteCode, TextColumn, SourceOptions, OutputFolder):
    """`scratch-gpt prepare-data`: --data tokenised once into token shards, for `pretrain --data FOLDER`."""

    GROUP = "prepare-data"
    tokenizer: str | None = option(None, "tokenizer folder or Hub id to tokenize with (pretrain then uses it)", required=True, reads=True)
    val_fraction: float = option(0.05, "share of documents held out for validation", more_than=0, less_than=1)
    seed: int = option(0, "seed of the validation split (as pretrain's --seed)", at_least=0)
    num_proc: int | None = option(None, "processes for tokenization", at_least=1)
    shard_tokens: int = option(2**27, "token ids per shard file", at_least=1)


@dataclass
class LoraOptions(Options):
    GROUP = "LoRA (PEFT)"
    lora: bool = option(False, "train LoRA adapters instead of the full weights")
    lora_r: int = option(8, "adapter rank", at_least=1)
    lora_alpha: int = option(16, "scale numerator, update = alpha/r * B@A", at_least=1)
    lora_dropout: float = option(0.0, "dropout on the adapter input", at_least=0, less_than=1)
    lora_targets: str = option(
        "qkv_proj,out_proj,fc_in,fc_out,gate_proj,up_proj,down_proj", "projections to adapt (those the model has)"
    )
    save_merged: bool = option(False, "with --lora: save a plain model, adapters merged in (default: the adapter)")

    def check(self) -> None:
        super().check()
        if self.save_merged and not self.lora:
            raise BadInput("--save-merged only applies with --lora (without it the whole model is saved anyway).")


@dataclass
class FinetuneOptions(TrustRemoteCode, SourceOptions, LoraOptions, TrainingOptions):
    """What every fine-tuning command takes: the base model, the data, the held-out share, LoRA."""

    GROUP = "fine-tuning"
    model: str | None = option(None, "pre-trained causal LM folder (with its tokenizer) or Hub id", required=True, reads=True)
    split: str = option("train", "split of a Hub dataset to read")
    val_fraction: float = option(0.1, "held-out share of records", more_than=0, less_than=1)
    max_length: int | None = option(None, "truncate to this many tokens (default: the model's context)", at_least=1)


@dataclass
class ClassifyOptions(TextColumn, FinetuneOptions):
    GROUP = "classification"
    label_column: str = option("label", "column with the class")
    label_names: list[str] | None = option(
        None, "comma-separated class names, in label-id order", parse=comma_list,
        rule=(lambda name: name != "", "a name (no empty names between commas)"),
    )  # fmt: skip
    num_labels: int | None = option(None, "number of classes (default: from the data)", at_least=2)
    balance: bool = option(False, "undersample every class to the size of the smallest")
    test_fraction: float = option(0.2, "share of records for testing", more_than=0, less_than=1)
    trainable: str | None = option(
        None, "without --lora: every weight, or the last --last-blocks blocks + final norm + head (default: by base size)",
        choices=("all", "last-blocks"),
    )  # fmt: skip
    last_blocks: int = option(1, "blocks trained with --trainable last-blocks", at_least=1)

    def check(self) -> None:
        super().check()
        names = self.label_names or []
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            twice = ", ".join(map(repr, repeated))
            raise BadInput(f"--label-names {','.join(names)!r} names {twice} twice; give each class once.")
        if self.lora and self.trainable:
            raise BadInput("--trainable and --lora exclude each other: with --lora the adapters and the head train.")


@dataclass
class InstructOptions(FinetuneOptions):
    GROUP = "instructions"
    mask_prompt: bool = option(False, "learn only the answers (prompt labels = -100)")
    max_new_tokens: int = option(256, "answer length in the saved generation config", at_least=1)
    max_answers: int = option(100, "held-out instructions to answer in answers.jsonl", at_least=0)


@dataclass
class DPOOptions(FinetuneOptions):
    GROUP = "DPO"
    beta: float = option(0.1, "how far the policy may move from the reference", more_than=0)
    skip_identical: bool = option(False, "skip, with a warning, records whose chosen and rejected answers are equal")


@dataclass
class ChatOptions(TrustRemoteCode):
    GROUP = "chat"
    model_dir: str | None = option(None, "finetune-instruct's output folder", positional=True, metavar="MODEL_DIR", reads=True)
    prompt: str | None = option(None, "answer this one instruction and exit")
    system: str | None = option(None, "system prompt (default: the template's)")
    max_new_tokens: int | None = option(None, "longest answer (default: the generation config's)", at_least=1)
    temperature: float = option(0.0, "0 = greedy; above 0 samples", at_least=0)
    top_k: int = option(50, "sample from the k likeliest tokens (with --temperature)", at_least=1)
    web: bool = option(False, "serve the chat as a web page (Gradio) instead of the terminal")
    host: str = option("127.0.0.1", "address the page listens on (127.0.0.1: this machine only)")
    port: int = option(7860, "port of the page", at_least=0, at_most=65535)

    def check(self) -> None:
        super().check()
        if self.web and self.prompt is not None:
            raise BadInput("--web and --prompt do not go together; drop --prompt and type the message in the page.")


@dataclass
class InspectOptions(TrustRemoteCode, OutputFolder):
    GROUP = "inspect"
    model: str | None = option(
        None, "causal LM, LoRA adapter or classifier folder (with its tokenizer), or Hub id", positional=True,
        metavar="MODEL", reads=True,
    )  # fmt: skip
    prompt: str | None = option(None, "the text to look inside the model with", required=True)
    layers: list[int] | None = option(None, "layers whose attention heads are drawn, from 0 (default: all)", at_least=0)
    heads: list[int] | None = option(
        None, "heads drawn in each of those layers, from 0 (default: all); the first, in the last layer, drawn large",
        at_least=0,
    )  # fmt: skip
    top_k: int = option(5, "likeliest next tokens shown at each position (and nearest tokens by embedding)", at_least=1)

    def check(self) -> None:
        super().check()
        if self.prompt is not None and not self.prompt.strip():
            raise BadInput("--prompt is empty; give the text to inspect, e.g. --prompt \"I HAD always thought\".")


@dataclass
class TokenizerOptions(TextColumn, SourceOptions, OutputFolder):
    GROUP = "tokenizer"
    data: list[str] = option(  # many sources, where the other commands read one
        [], "files, folders or globs (text, or tables with a text column), or hub:NAME for a Hub dataset", required=True,
        reads=True,
    )  # fmt: skip
    vocab_size: int | None = option(None, f"vocab size (at least {MIN_VOCAB_SIZE})", required=True, rule=VOCAB_RULE)
    min_frequency: int = option(2, "least count of a pair to be merged", at_least=0)
    model_max_length: int | None = option(None, "context length of the model", at_least=1)
    held_out_every: int = option(
        20, "keep every N-th text out of training to measure compression on (20: 5%%; 0: none)",
        rule=(lambda n: n == 0 or n >= 2, "0 (hold nothing out) or at least 2"),
    )  # fmt: skip


@dataclass
class EvaluateOptions(TrustRemoteCode):
    GROUP = "evaluation"
    model: str | None = option(None, "model folder (or Hub id) with its tokenizer", positional=True, reads=True)
    tasks: list[str] = option(
        [], "task names, comma-separated (repeatable): ours (scratch_perplexity, scratch_choice) or lm-eval's (hellaswag, ...)",
        repeat=True, required=True,
    )  # fmt: skip
    data: str | None = option(
        None, "text for scratch_perplexity, JSONL {question, choices, answer} for scratch_choice", reads=True
    )
    val_fraction: float | None = option(None, "score pretrain's held-out share of --data", more_than=0, less_than=1)
    seed: int = option(0, "seed of that split, as pretrain's --seed", at_least=0)
    include_path: list[str] = option(
        [], "folder of lm-eval task YAML files (repeatable)", repeat=True, metavar="DIR", reads=True
    )
    batch_size: int = option(8, "sequences per forward pass", at_least=1)
    max_length: int | None = option(None, "context window in tokens (default: the model's context length)", at_least=1)
    limit: float | None = option(None, "at most this many documents per task (below 1: a share of them)", more_than=0)
    device: str | None = option(None, "cpu, cuda, ... (default: cuda when available)")
    bootstrap_iters: int = option(1000, "bootstrap samples for standard errors, 0: none", at_least=0)
    output: str | None = option(None, "also write the metrics as JSON to FILE", metavar="FILE", writes="file")
    overwrite: bool = option(False, "replace an existing --output FILE that scratch-gpt did not write")


@dataclass
class PushOptions(Options):
    GROUP = "push"
    output_dir: str | None = option(
        None, "folder written by a training command", positional=True, metavar="OUTPUT_DIR", reads=True
    )
    repo_id: str | None = option(None, "the Hub repository to push to", required=True, metavar="OWNER/NAME")
    private: bool = option(False, "create the repository as private")
    revision: str | None = option(None, "branch to commit to (created if missing; default main)", metavar="R")
    commit_message: str | None = option(None, "commit message", metavar="M")


@dataclass
class ExportOptions(TrustRemoteCode):
    GROUP = "export"
    model_dir: str | None = option(
        None, "ScratchGPT, GPT-2, Llama or Qwen causal-LM folder or Hub id", positional=True, reads=True
    )
    out_dir: str | None = option(None, "where to write the folder (replaced atomically)", positional=True, writes="folder")
    to: str | None = option(
        None, "the transformers family to write, or gguf (llama.cpp, Ollama, LM Studio)", required=True, choices=EXPORT_TARGETS
    )
    outtype: str | None = option(
        None, "with --to gguf: the weights' number format (default f16; q8_0 needs widths divisible by 32)", choices=GGUF_TYPES
    )
    overwrite: bool = option(False, "replace an existing OUT_DIR that scratch-gpt did not write")

    def check(self) -> None:
        super().check()
        if self.outtype is not None and self.to != "gguf":
            raise BadInput(f"--outtype applies to --to gguf only; leave it out with --to {self.to}.")


@dataclass
class ImportBookOptions(TrustRemoteCode):
    GROUP = "import"
    checkpoint: str | None = option(
        None, "book's model.pth or chapter 5's model_and_optimizer.pth", positional=True, reads=True
    )
    out_dir: str | None = option(
        None, "where to write the model folder (replaced atomically)", positional=True, writes="folder"
    )
    num_heads: int | None = option(None, "attention heads (12 for GPT-2 124M); or use --config-json", at_least=1)
    config_json: str | None = option(None, "the book's config dict as a JSON file (its n_heads is used)", reads=True)
    tokenizer: str | None = option(
        None, "tokenizer folder or Hub id saved with the model (the book uses GPT-2's)", reads=True
    )
    overwrite: bool = option(False, "replace an existing OUT_DIR that scratch-gpt did not write")


def own_first(cls) -> list[Field]:
    """The command-line options of `cls`: the command's own first, then the shared training options."""
    shared = {f.name for f in fields(TrainingOptions)}
    return sorted((f for f in declared(cls) if f.metadata["cli"]), key=lambda f: f.name in shared)


def as_config(options: Options) -> dict:
    """The options as a --config file holds them: flag names as keys (positional arguments left out).
    `--print-config` prints this, and a training run saves it as `config.yaml` in its run folder."""
    values = {}
    for f in own_first(type(options)):
        if f.metadata["positional"]:
            continue
        value = getattr(options, f.name)
        if f.type is bool and f.default is True:  # the flag says the opposite (--no-progress)
            value = not value
        values[flag_of(f).lstrip("-")] = list(value) if isinstance(value, tuple) else value
    return values


def keys_where(test: Callable[[Field], bool]) -> set[str]:
    """The config keys of the options of every group that pass `test` (one flag means one thing in every command)."""
    keys, classes = set(), [Options]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        keys |= {flag_of(f).lstrip("-") for f in declared(cls) if test(f)}
    return keys


def resumable_keys() -> set[str]:
    """The config keys of every option declared `resumable`."""
    return keys_where(lambda f: f.metadata["resumable"])


def read_keys() -> set[str]:
    """The config keys of every option declared `reads` (paths whose content a resumed run compares;
    a positional argument has no config key)."""
    return keys_where(lambda f: f.metadata["reads"] and not f.metadata["positional"])


def resume_changes(saved: dict, now: dict) -> list[str]:
    """The options that may not change on `--resume` but differ between a run's `config.yaml` and now."""
    free = resumable_keys()
    changed = [key for key in now if key not in free and saved.get(key) != now.get(key)]
    return [f"--{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in changed]


def hyperparameters(options: Options) -> dict:
    """The options of a run as its model card lists them (not where it ran or how it printed): the
    command's own first, then the shared training options."""
    hidden = ("progress", "output_dir", "overwrite")
    return {f.name: getattr(options, f.name) for f in own_first(type(options)) if f.name not in hidden}
