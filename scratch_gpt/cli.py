"""`scratch-gpt <command> ...`: one entry point for every stage.

Each command lives next to the code it drives and exposes `cli(argv) -> int`, which builds its
own argparse parser; this module only dispatches, so `import scratch_gpt.cli` stays cheap.
"""

import importlib
import sys

# command -> ("module:function", one-line help)
COMMANDS = {
    "train-tokenizer": ("scratch_gpt.tokenizer:cli", "train a byte-level BPE tokenizer (stage 1)"),
    "pretrain": ("scratch_gpt.training.pretrain:cli", "pre-train a GPT with Accelerate (stages 2-6)"),
    "quickstart": ("scratch_gpt.training.pretrain:quickstart_cli", "tokenizer + small GPT on the built-in corpus"),
    "finetune-classifier": ("scratch_gpt.training.classify:cli", "fine-tune a classification head (stage 7.1)"),
    "finetune-instruct": ("scratch_gpt.training.instruct:cli", "instruction fine-tuning (stage 7.2)"),
    "finetune-dpo": ("scratch_gpt.training.dpo:cli", "preference tuning with DPO (stage 7.3)"),
    "chat": ("scratch_gpt.inference.chat:chat_cli", "chat with an instruction-tuned model"),
    "import-book": ("scratch_gpt.convert:import_book_cli", "turn the book's GPTModel model.pth into a model folder"),
    "export": ("scratch_gpt.convert:export_cli", "write a model folder as a native GPT-2, Llama or Qwen3 folder"),
    "export-gpt2": ("scratch_gpt.convert:export_gpt2_cli", "write a model folder as a standard GPT2LMHeadModel"),
    "push": ("scratch_gpt.hub:push_cli", "upload an output folder to the Hugging Face Hub"),
    "evaluate": ("scratch_gpt.evaluation:cli", "run lm-evaluation-harness tasks (local perplexity, multiple choice)"),
}


def usage() -> str:
    lines = ["usage: scratch-gpt <command> [options]", "", "commands:"]
    lines += [f"  {name:<20} {help_}" for name, (_, help_) in COMMANDS.items()]
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
    module_name, function_name = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module_name), function_name)
    return command(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
