"""`scratch-gpt <command> ...`: one entry point for every stage.

The table below names each command's options (a dataclass of `scratch_gpt.args`), its defaults and
the function that runs it ("module:function", imported only then). Flags, `--config` keys and checks
come from the declarations (`parsing.py`); nothing here is heavy: `--help` and a bad flag answer at once.

Every command's error policy (scratch_gpt.errors): `BadInput` is one sentence and exit status 2,
before any work; `RunFailed` and a full disk are one sentence and status 1; a bug keeps its traceback.
"""

import contextlib
import errno
import importlib
import sys
from dataclasses import dataclass, field

from scratch_gpt import args
from scratch_gpt.errors import BadInput, RunFailed


@dataclass(frozen=True)
class Command:
    summary: str
    options: type
    run: str  # "module:function", called with the parsed options
    description: str = ""
    defaults: dict = field(default_factory=dict)  # this command's defaults, over the declared ones


PRETRAIN = dict(
    output_dir="runs/pretrain", batch_size=16, learning_rate=1e-3, warmup_steps=100, eval_every=200, eval_max_batches=50,
    save_every=500,
)  # fmt: skip
# quickstart: the README's first command, `pretrain` with small sizes on the built-in corpus.
QUICKSTART = PRETRAIN | dict(
    output_dir="runs/quickstart", data="builtin", vocab_size=2048, hidden_size=128, num_layers=4, num_heads=4,
    learning_rate=2e-3, warmup_steps=30, max_steps=400, eval_every=100, eval_max_batches=20, save_every=0,
    sample_prompts=["Return the"], sample_max_new_tokens=30, report_to="none",
)  # fmt: skip
FINETUNE = dict(log_every=1, report_to="none", eval_every=0, warmup_steps=0)

COMMANDS = {
    "train-tokenizer": Command(
        "train a byte-level BPE tokenizer (stage 1)", args.TokenizerOptions, "scratch_gpt.tokenizer:train_tokenizer_command",
        "Train a byte-level BPE tokenizer and save it as a transformers tokenizer folder.",
    ),
    "pretrain": Command(
        "pre-train a GPT with Accelerate (stages 2-6)", args.PretrainOptions, "scratch_gpt.training.pretrain:pretrain_command",
        "Pre-train a GPT on a text corpus with Accelerate.", PRETRAIN | dict(data="builtin"),
    ),
    "quickstart": Command(
        "tokenizer + small GPT on the built-in corpus", args.PretrainOptions, "scratch_gpt.training.pretrain:quickstart",
        "Train a tokenizer and a small GPT on the built-in corpus (a few minutes on a CPU).", QUICKSTART,
    ),
    "prepare-data": Command(
        "tokenize a corpus once into token shards for pretrain", args.PrepareDataOptions, "scratch_gpt.training.prepared:prepare_data",
        "Tokenize --data once into memory-mapped token shards (uint16 or uint32) with an index; "
        "`pretrain --data FOLDER` then trains on them without tokenizing.",
    ),
    "finetune-classifier": Command(
        "fine-tune a classification head (stage 7.1)", args.ClassifyOptions, "scratch_gpt.training.classify:finetune_classifier",
        "Fine-tune a pre-trained ScratchGPT folder into a text classifier. Without --trainable and --lr, both "
        "are chosen from the base model's size (one line says which).",
        FINETUNE | dict(num_epochs=3, learning_rate=None, batch_size=8),  # --lr and --trainable: from the base
    ),
    "finetune-instruct": Command(
        "instruction fine-tuning (stage 7.2)", args.InstructOptions, "scratch_gpt.training.instruct:finetune_instruct",
        "Instruction-tune a pre-trained ScratchGPT folder on Alpaca-style {instruction, input?, output} or {messages} "
        "records. Without --lr, it is chosen from the base model's size (one line says which).",
        FINETUNE | dict(num_epochs=2, learning_rate=None, batch_size=8),  # --lr: from the base
    ),
    "finetune-dpo": Command(
        "preference tuning with DPO (stage 7.3)", args.DPOOptions, "scratch_gpt.training.dpo:finetune_dpo",
        "Preference-tune an instruction-tuned causal LM with DPO on records {instruction, input?, chosen, rejected} "
        "(the book's) or {prompt, chosen, rejected} (TRL's: lists of messages, or text).",
        FINETUNE | dict(num_epochs=1, learning_rate=5e-6, weight_decay=0.01, batch_size=8),
    ),
    "chat": Command(
        "chat with an instruction-tuned model", args.ChatOptions, "scratch_gpt.inference.chat:chat",
        "Chat with an instruction-tuned model; answers stream token by token. Interactive unless --prompt is given; "
        "an empty line or Ctrl-D ends, /reset forgets the conversation. --web serves the chat as a page in the "
        "browser instead (needs pip install 'scratch_gpt[web]').",
    ),
    "inspect": Command(
        "look inside a model: tokens, next-token odds, attention, logit lens", args.InspectOptions,
        "scratch_gpt.inference.inspect:inspect_command",
        "Run one prompt through a model and write report.html (one self-contained file) and PNGs: the tokens, the "
        "likeliest next tokens and the loss at each position, every attention head of the chosen layers, the logit "
        "lens, and the nearest tokens by embedding; a classifier shows its class probabilities.",
        dict(output_dir="runs/inspect"),
    ),
    "import-book": Command(
        "turn the book's GPTModel model.pth into a model folder", args.ImportBookOptions, "scratch_gpt.convert:import_book_command",
        "Turn the book's GPTModel checkpoint (torch.save of its state dict) into a ScratchGPT model folder.",
    ),
    "export": Command(
        "write a model folder as a native GPT-2, Llama, Qwen2 or Qwen3 folder", args.ExportOptions, "scratch_gpt.convert:export_command",
        "Write a model folder as a native GPT-2, Llama, Qwen2 or Qwen3 folder (loads without trust_remote_code).",
    ),
    "export-gpt2": Command(
        "write a model folder as a standard GPT2LMHeadModel", args.ExportOptions, "scratch_gpt.convert:export_command",
        "Write a model folder as a GPT2LMHeadModel folder (export --to gpt2).", dict(to="gpt2"),
    ),
    "push": Command(
        "upload an output folder to the Hugging Face Hub", args.PushOptions, "scratch_gpt.hub:push_command",
        "Upload a model folder (weights, config, remote code, tokenizer, card, plots) to the Hugging Face Hub in one "
        "commit. Log in first with `hf auth login` or set HF_TOKEN.",
    ),
    "evaluate": Command(
        "run lm-evaluation-harness tasks (local perplexity, multiple choice, hellaswag...)", args.EvaluateOptions,
        "scratch_gpt.evaluation:evaluate",
        "Evaluate a model folder with lm-evaluation-harness: on local task files (shipped: scratch_perplexity, "
        "scratch_choice; yours with --include-path), or lm-eval's own tasks (hellaswag, arc_easy, ...; `lm-eval ls tasks` "
        "lists them), which download their data from the Hub the first time.",
    ),
}


def usage() -> str:
    lines = ["usage: scratch-gpt <command> [options]", "", "commands:"]
    lines += [f"  {name:<20} {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "Run `scratch-gpt <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"scratch-gpt: unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    return run_reporting(f"scratch-gpt {name}", run_command, COMMANDS[name], name, rest)


def parse_command(name: str, argv: list[str]):
    """`(options, print_config)`: the checked options `scratch-gpt NAME ARGV` runs with (nothing heavy imported)."""
    from scratch_gpt.cli.parsing import parse

    command = COMMANDS[name]
    required = () if "output_dir" in command.defaults else ("output_dir",)  # an output folder, unless it has a default
    return parse(f"scratch-gpt {name}", command.options, argv, command.defaults, required, command.description)


def run_command(command: Command, name: str, argv: list[str]) -> None:
    """Parse and check `argv`, then run the command."""
    from scratch_gpt.cli.parsing import print_config

    options, show = parse_command(name, argv)
    if show:
        print_config(options)
        return
    check_outputs(options)
    module, function = command.run.split(":")
    with quiet_libraries(progress=getattr(options, "progress", True)):
        getattr(importlib.import_module(module), function)(options)


def check_outputs(options) -> None:
    """Every path the command will write, as its options declare them (`writes=`), through the one
    output check before it runs: never over a path it reads, a user's file, or a folder of ours
    that is not what it replaces (`scratch_gpt.io_utils`); the command writes each atomically."""
    from scratch_gpt.io_utils import check_output, check_output_file

    inputs, overwrite = args.paths_read(options), getattr(options, "overwrite", False)
    for f, path in args.paths_written(options):
        name = args.shown_name(f)
        if f.metadata["writes"] == "file":
            check_output_file(path, inputs=inputs, overwrite=overwrite, flag=name)
        else:  # a folder replaced whole, or a training run's folder, added to over runs
            check_output(path, inputs=inputs, overwrite=overwrite, flag=name, replaces=f.metadata["writes"] == "folder")


@contextlib.contextmanager
def quiet_libraries(progress: bool):
    """While a command runs: it shows its own progress (tokenizing, training, evaluating, answering), so
    transformers' bars for loading and writing a model folder (seconds; twice where an adapter is merged
    first) are off; with `--no-progress` every bar is, datasets' and the Hub's downloads too."""
    import datasets
    import transformers

    hf_logging = transformers.utils.logging
    previous = hf_logging.set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    if not progress:
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def run_reporting(prog: str, body, *arguments) -> int:
    """Run `body(*arguments)` under the error policy above and return the exit status; its output locks end with it."""
    try:
        body(*arguments)
    except SystemExit as exit_:  # argparse: --help (0), or a bad flag (2, already explained on stderr)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except BadInput as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(
            f"{prog}: the disk is full: writing {error.filename or 'the output'} failed ({error.strerror}); free some "
            "space and run again (what was saved before is kept: every folder is swapped in whole).",
            file=sys.stderr,
        )
        return 1
    finally:
        if "scratch_gpt.io_utils" in sys.modules:
            sys.modules["scratch_gpt.io_utils"].release_output_locks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
