"""`scratch-gpt evaluate`: a thin wrapper over lm-evaluation-harness (`pip install 'scratch_gpt[eval]'`).

    scratch-gpt evaluate MODEL_DIR --tasks scratch_perplexity --data held_out.txt
    scratch-gpt evaluate MODEL_DIR --tasks scratch_choice --data questions.jsonl
    scratch-gpt evaluate MODEL_DIR --tasks my_task --include-path my_tasks/
    scratch-gpt evaluate MODEL_DIR --tasks hellaswag,arc_easy

Two task files ship in `scratch_gpt/eval_tasks/`, ordinary lm-eval YAML that reads a local JSON
Lines file: `scratch_perplexity` (word and byte perplexity, bits per byte of a text) and
`scratch_choice` (multiple-choice accuracy). `--data` points them at your file; `--include-path`
adds folders of your own task YAML files, as lm-eval's `--include_path` does. These run on local
files, offline. Any other name is one of lm-eval's own tasks (`lm-eval ls tasks` lists them), which
download their data from the Hugging Face Hub the first time. The model is loaded here and handed
to `HFLM`, the class of `lm_eval --model hf`.

`loop_bits_per_byte` is the other side of the comparison in the README: bits per byte the way the
training loop measures it (mean loss over packed blocks, divided by ln 2 and bytes per token).
"""

import contextlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path

from scratch_gpt.args import EvaluateOptions
from scratch_gpt.errors import BadInput, MissingFile, RunFailed
from scratch_gpt.io_utils import RESULTS_MARK, write_atomically

TASKS_DIR = Path(__file__).parent / "eval_tasks"
INSTALL_HINT = "lm-evaluation-harness is not installed; run `pip install 'scratch_gpt[eval]'` (or `pip install lm-eval`)."


def shipped_tasks() -> dict[str, Path]:
    """The task files that come with scratch_gpt: {task name: YAML path}."""
    return {path.stem: path for path in sorted(TASKS_DIR.glob("*.yaml"))}


def import_lm_eval():
    """The `lm_eval` module; without it, an OSError (one line from the command) naming the `pip install`."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (the model class we hand it)
    except ImportError:
        raise BadInput(INSTALL_HINT) from None
    return lm_eval


def task_manager(names: list[str], include_paths: list[str]):
    """`(manager, theirs)`: the lm-eval TaskManager that knows every name, and the names that are
    lm-eval's own tasks (`hellaswag`, `arc_easy`, ...). Ours (the shipped task folder and the
    `--include-path` folders) are indexed alone when each name is one of them (milliseconds): indexing
    lm-eval's 14,685 tasks reads thousands of YAML files, 10-12 s of CPU time (measured with lm-eval
    0.4.13; 23-38 s of wall time on two busy cores), which a run of our tasks never pays."""
    from lm_eval.tasks import TaskManager

    for folder in include_paths:
        if not Path(folder).is_dir():
            raise MissingFile(f"--include-path {folder!r} is not a folder; pass a folder of lm-eval task YAML files.")
    local_dirs = [str(TASKS_DIR), *include_paths]
    ours = TaskManager(include_path=local_dirs, include_defaults=False)
    theirs = [name for name in names if name not in ours.all_tasks]
    if not theirs:
        return ours, theirs
    print(f"Looking up {', '.join(map(repr, theirs))} among lm-eval's own tasks (indexing them takes a few seconds)", flush=True)
    manager = TaskManager(include_path=local_dirs)  # lm-eval's own tasks, then ours
    unknown = [name for name in theirs if name not in manager.all_tasks]
    if unknown:
        raise BadInput(
            f"Unknown task {', '.join(map(repr, unknown))}: it is none of ours ({', '.join(sorted(ours.all_tasks))}; "
            "add folders of task YAML files with --include-path DIR) nor one of lm-eval's (`lm-eval ls tasks` lists them)."
        )
    return manager, theirs


def task_specs(names: list[str], data: str | None, include_paths: list[str], val_fraction: float | None, seed: int, workdir: Path):
    """`(specs, manager, theirs)`: what `lm_eval.simple_evaluate(tasks=...)` gets, then what
    `task_manager` returns. A shipped task with `--data` becomes its YAML config, `data_files` replaced by
    the user's file (for perplexity, `--data` as JSON Lines); any other name is passed as it is.
    """
    import yaml

    manager, theirs = task_manager(names, include_paths)
    specs = []
    for name in names:
        if data is None or name not in shipped_tasks():
            specs.append(name)
            continue
        config = yaml.safe_load(shipped_tasks()[name].read_text(encoding="utf-8"))
        if config["output_type"] == "loglikelihood_rolling":
            data_file = write_documents(data, workdir / f"{name}.jsonl", val_fraction, seed)
        else:
            data_file = Path(data)
            if not data_file.is_file():
                raise MissingFile(f"--data {data!r} is not a file; pass a JSON Lines file of questions for {name}.")
        config["dataset_kwargs"] = {"data_files": {config["test_split"]: str(data_file.resolve())}}
        specs.append(config)
    return specs, manager, theirs


def write_documents(source: str, path: Path, val_fraction: float | None, seed: int) -> Path:
    """Write the documents of `source` (what `pretrain --data` reads: a .txt file is one document,
    a table one per row) to `path` as JSON Lines with a "text" field. With `val_fraction`, only
    the held-out part that `pretrain --val-fraction F --seed S` keeps for validation."""
    from scratch_gpt.data import train_val_split
    from scratch_gpt.sources import read_texts

    documents = read_texts(source)
    if val_fraction is not None:
        documents = train_val_split(documents, val_fraction, seed)[1]
    with path.open("w", encoding="utf-8") as file:
        for text in documents["text"]:
            file.write(json.dumps({"text": text}) + "\n")
    return path


def unreachable(theirs: list[str], error: Exception) -> str:
    """One sentence for lm-eval's own tasks (`theirs`) whose data cannot be downloaded: offline
    (HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1) and not in the datasets cache, or no network."""
    reason = " ".join(str(error).split()) or type(error).__name__
    offline = [name for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(name, "").lower() in ("1", "true", "yes", "on")]
    where = f"offline ({' and '.join(f'{name}=1' for name in offline)})" if offline else "unreachable"
    return (
        f"lm-eval's task {', '.join(map(repr, theirs))} downloads its data from the Hugging Face Hub, which is {where} "
        f"here, and the data is not in the local cache ({reason}); run it once with network (it is cached then), "
        "or evaluate local data with scratch_perplexity, scratch_choice or --include-path."
    )


# What lm-eval says about how we call it, on purpose: a model object instead of a name, in one process.
ON_PURPOSE = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")


@contextlib.contextmanager
def quiet_lm_eval():
    """Run lm-eval without its remarks on how we call it (ON_PURPOSE) and without `git describe`, which it
    runs in the working folder to record a commit (printing git's "fatal: not a git repository" outside one)."""
    from unittest import mock

    import lm_eval.evaluator

    def remark(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(ON_PURPOSE)

    logger = logging.getLogger("lm_eval.models.huggingface")
    logger.addFilter(remark)
    known = hasattr(lm_eval.evaluator, "get_git_commit_hash")  # lm-eval 0.4.x; a later one may do without
    try:
        with mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None) if known else contextlib.nullcontext():
            yield
    finally:
        logger.removeFilter(remark)


def evaluate(args: EvaluateOptions) -> dict:
    """Load the model folder, run the tasks with lm-eval, print its table; returns lm-eval's results.
    (`--output` was checked by the CLI before this runs, as every declared output is.)"""
    import torch

    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import make_table
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import scratch_gpt  # noqa: F401  (registers the Auto classes)
    from scratch_gpt.convert import load_pretrained
    from scratch_gpt.hub import http_client_errors
    from scratch_gpt.tokenizer import truncates_itself

    names = [name for group in args.tasks for name in group.split(",") if name]
    if args.val_fraction is not None and args.data is None:
        raise BadInput("--val-fraction selects the held-out part of --data; pass --data too.")
    with tempfile.TemporaryDirectory() as workdir:
        specs, manager, theirs = task_specs(names, args.data, args.include_path, args.val_fraction, args.seed, Path(workdir))
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        trust = args.trust_remote_code
        tokenizer = truncates_itself(load_pretrained(AutoTokenizer.from_pretrained, args.model, trust_remote_code=trust))
        model = load_pretrained(AutoModelForCausalLM.from_pretrained, args.model, trust_remote_code=trust)
        model = model.to(device).eval()
        settings = dict(limit=args.limit, bootstrap_iters=args.bootstrap_iters, log_samples=False)
        with quiet_lm_eval():
            lm = HFLM(model, tokenizer=tokenizer, backend="causal", batch_size=args.batch_size, max_length=args.max_length)
            try:
                results = lm_eval.simple_evaluate(model=lm, tasks=specs, task_manager=manager, **settings)
            except (ConnectionError, *http_client_errors()) as error:  # lm-eval's own tasks read the Hub
                raise RunFailed(unreachable(theirs, error)) from None
    print(make_table(results))
    if args.output:
        record = {RESULTS_MARK: "scratch-gpt evaluate", "model": str(args.model), "results": results["results"]}
        write_atomically(args.output, json.dumps(record, indent=2, default=str) + "\n")
        print(f"results written to {args.output}")
    return results["results"]


# ----------------------------------------------------------------------------------------------
# The training loop's bits per byte, on the windows lm-eval uses.


def loop_bits_per_byte(model, tokenizer, texts: list[str], block_size: int) -> dict[str, float]:
    """Bits per byte of `texts` the way the training loop measures it, on lm-eval's windows.

    The loop's formula: the mean loss per predicted token (`measure` in training/loop.py), divided
    by ln 2 and by `bytes_per_token` (UTF-8 bytes per token of the texts, without special tokens).
    Only the windows follow lm-eval's `loglikelihood_rolling` instead of packed blocks: each
    document on its own, the BOS (else EOS) token in front to predict the first token from, then
    disjoint windows of `block_size` targets, each window read as the `block_size` tokens that end
    one before its last target (so the last, shorter window of a document also sees up to
    `block_size` tokens). Windows differ in length, so the loss is summed over tokens and divided
    by their number (the loop's blocks all have one length, so its mean of means is the same).
    """
    import torch
    import torch.nn.functional as F

    from scratch_gpt.data import bytes_per_token
    from scratch_gpt.tokenizer import encode_batch

    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    total_loss, total_targets = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids in encode_batch(tokenizer, texts):
            stream = torch.tensor([prefix, *ids], device=model.device)
            for start in range(0, len(ids), block_size):
                end = min(start + block_size, len(ids))  # targets: stream[start + 1 : end + 1]
                inputs = stream[max(0, end - block_size) : end]  # the block_size tokens before each target
                logits = model(input_ids=inputs[None]).logits[0, -(end - start) :].float()
                targets = stream[start + 1 : end + 1]
                total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
                total_targets += len(targets)
    loss = total_loss / total_targets
    return {"eval_loss": loss, "bits_per_byte": loss / math.log(2) / bytes_per_token(texts, tokenizer)}
