"""What a run started with, kept in its run folder, so that `--resume` continues the same run.

- `config.yaml`: the options, as a `--config` file holds them. A command hands its resolved options
  to the loop (`TrainingConfig.run_options`, from `scratch_gpt.args.as_config`).
- `inputs.json`: a SHA-256 of the content of every local path an option reads (`reads=True`: the
  data, the tokenizer, the base model), so that data edited or replaced at the same path is noticed.

The loop writes both when it takes a run folder. `--resume` first compares the options and inputs
now with them and refuses, before any work, an option that may not change (one declared `resumable`,
such as --max-steps or --eval-every, may) and an input whose content changed. The tokenizer is also
compared by content with the one each checkpoint was trained with (`tokenizer_digest`, checkpoints.py).

Under `accelerate launch` on several machines the run folder must be one folder that every machine
sees (a shared filesystem); `check_shared_output_dir` tells it, when a run starts, from a folder of
the same path on each machine's own disk.
"""

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

from scratch_gpt.args import read_keys, resume_changes
from scratch_gpt.errors import BadInput
from scratch_gpt.io_utils import write_atomically

FILE = "config.yaml"
INPUTS_FILE = "inputs.json"


def read_run_options(run_dir) -> dict | None:
    import yaml

    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise BadInput(f"The run's {str(path)!r} is damaged; restore it, or start a new run without --resume.") from None
    return saved if isinstance(saved, dict) else None


def check_resume_options(run_options: dict | None, *folders) -> None:
    """On `--resume`: every option that may not change has the value in the run's config.yaml, and every
    input the content it had (inputs.json), read from the first of `folders` that holds them (a
    fine-tune's run works in a folder beside its model folder)."""
    run_dir = next((Path(folder) for folder in folders if (Path(folder) / FILE).is_file()), None)
    saved = read_run_options(run_dir) if run_options and run_dir else None
    if saved is None:  # not a command's run, or a run from before config.yaml
        return
    changed = resume_changes(saved, run_options)
    if changed:
        raise BadInput(
            f"--resume continues the run in {str(run_dir)!r} with other options than it started with "
            f"({', '.join(changed)}); give the values of its {FILE}, or start a new run in another --output-dir."
        )
    try:
        started_with = json.loads((run_dir / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a run from before inputs.json
        return
    now = input_digests(run_options)
    edited = [key for key, digest in started_with.items() if key in now and now[key] != digest]
    if edited:
        named = ", ".join(f"--{key} {run_options[key]!r}" for key in edited)
        raise BadInput(
            f"--resume continues the run in {str(run_dir)!r}, but the content of {named} changed since it started; "
            "restore what it started with, or start a new run in another --output-dir."
        )


def save_run_options(run_options: dict | None, run_dir, inputs: bool = True) -> None:
    """config.yaml and (with `inputs`) inputs.json of a run folder (see the module docstring)."""
    import yaml

    if run_options:
        write_atomically(Path(run_dir) / FILE, yaml.safe_dump(run_options, sort_keys=False, allow_unicode=True))
        if inputs:  # reads every input once: only when a run starts, not again on each resume
            write_atomically(Path(run_dir) / INPUTS_FILE, json.dumps(input_digests(run_options), indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# One run folder for every machine


SHARED_DIRS: set[Path] = set()  # the folders every process of this run has been seen to share


def check_shared_output_dir(state, output_dir, patience_s: float = 5.0) -> None:
    """With several processes: every process must see the same `output_dir`, or the run stops here
    with one sentence, on every process.

    Only the main process writes the run's files, yet every process reads them (a handed-over
    tokenizer, the checkpoint a resume loads) and writes its own part of a checkpoint (its random
    states, its FSDP slices). With `--num_machines 2` and an `--output-dir` on each machine's own
    disk, a run would seem to work and leave checkpoints that cannot resume. So the main process
    writes a file with a new name into the folder; once every process has that name (a broadcast
    from the main process, which has then written it), each looks for the file, for up to
    `patience_s` seconds (a network filesystem may show a new file a little late). The answers are
    gathered, so every process stops together: an error on one machine alone would leave the
    others waiting at their next collective. `state` is accelerate's `PartialState` or `Accelerator`.
    """
    folder = Path(output_dir)
    if state.num_processes == 1 or folder.resolve() in SHARED_DIRS:
        return  # (pretrain checks its folder before handing the tokenizer over in it, then the Trainer asks again)
    from accelerate.utils import broadcast_object_list, gather_object

    name = [f".shared-{uuid.uuid4().hex}" if state.is_main_process else None]
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / name[0], "written by the main process; every process of the run must see it\n")
    broadcast_object_list(name)  # also a barrier: the file exists before any process looks
    marker = folder / name[0]
    deadline = time.monotonic() + patience_s
    while not marker.is_file() and time.monotonic() < deadline:
        time.sleep(0.25)
    machine = os.environ.get("GROUP_RANK")  # torchrun's machine rank (accelerate launch --machine_rank)
    who = f"machine {machine}" if machine is not None else f"process {state.process_index}"
    answers = gather_object([(who, marker.is_file())])
    if state.is_main_process:
        marker.unlink()
    blind = sorted({who for who, seen in answers if not seen})
    if blind:
        raise BadInput(
            f"--output-dir {str(output_dir)!r} is not shared between the machines: {' and '.join(blind)} "
            f"{'does' if len(blind) == 1 else 'do'} not see the file the main machine wrote in it; put --output-dir "
            "on a filesystem every machine mounts at that path (NFS, a cluster filesystem), or run on one machine."
        )
    SHARED_DIRS.add(folder.resolve())


# ----------------------------------------------------------------------------------------------
# Content digests


def input_digests(run_options: dict) -> dict[str, str]:
    """{option key: SHA-256 of the content it names} for every option declared `reads` that names
    local files (a Hub id or the built-in corpus names itself, and is compared as an option; a folder
    of token shards is its index, which holds the shards' digests)."""
    digests = {}
    for key in sorted(read_keys() & run_options.keys()):
        values = run_options[key] if isinstance(run_options[key], list) else [run_options[key]]
        files = [file for value in values if value for file in files_read(key, value)]
        if files:
            digest = hashlib.sha256()
            for file in files:
                digest.update(f"{file}\0".encode())
                with open(file, "rb") as handle:
                    digest.update(hashlib.file_digest(handle, "sha256").digest())
            digests[key] = digest.hexdigest()
    return digests


def files_read(key: str, value: str) -> list[Path]:
    """The local files an input option names: for --data what `sources.resolve` reads (never a folder
    of ours inside it); for a model or tokenizer folder every file in it but hidden ones."""
    from scratch_gpt.data import INDEX, is_prepared
    from scratch_gpt.sources import resolve

    if key == "data" and is_prepared(value):  # token shards: their index holds each shard's SHA-256
        return [Path(value) / INDEX]
    if key == "data":
        return [file for file in resolve(value) if isinstance(file, Path)]
    path = Path(value)
    if path.is_dir():
        return sorted(f for f in path.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts))
    return [path] if path.is_file() else []


def tokenizer_digest(tokenizer) -> str:
    """SHA-256 of what a tokenizer maps text to (vocabulary, merges, normalizer, special tokens), not of
    the settings of one call (truncation, padding) that transformers leaves on its backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer: its vocabulary
        content = dict(sorted(tokenizer.get_vocab().items()))
    else:
        content = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


__all__ = ["check_resume_options", "check_shared_output_dir", "input_digests", "read_run_options", "save_run_options", "tokenizer_digest"]
