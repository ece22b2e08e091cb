"""Checkpoints of a training run: `OUTPUT_DIR/checkpoints/step-XXXXXXXX/`.

Each is accelerate's `save_state` (model, optimizer, scheduler, RNG states, one set per process)
plus the strategy's slices (`parallel.py`: under FSDP each process' slices of the model and
optimizer in `sharded/`; nothing more otherwise), written into a temporary folder, plus
`trainer_state.json` (the position in the data, with a stream's place for each process, and the size of every file), then renamed into
place: a kill never leaves a half-written `step-*` folder, and a folder whose files do not match
their recorded sizes is skipped when resuming. A run resumes from a checkpoint of a sharded run
(FSDP) or not, written by any number of processes: `torch.distributed.checkpoint` reshards slices,
and whole files are cut into slices (`sharding.load_sharded`, `sharding.load_whole`).
"""

import contextlib
import errno
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

from accelerate import Accelerator

from scratch_gpt.errors import BadInput, MissingFile
from scratch_gpt.io_utils import disk_full
from scratch_gpt.training.parallel import NoSlices

# accelerate writes a checkpoint's weights with safetensors, which cannot hold two names for one tensor,
# so it drops the tied LM head and logs "Removed shared tensor {'lm_head.weight'}" at warning level; the
# head is tied again when the checkpoint loads (resume is bitwise, tests/test_checkpoints.py).
logging.getLogger("accelerate.utils.other").addFilter(lambda record: "Removed shared tensor" not in record.getMessage())

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """The complete-looking checkpoint folders of a run, oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def read_checkpoint_state(checkpoint: Path) -> dict:
    """The trainer state of a complete checkpoint; ValueError if the folder is incomplete or damaged."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        sizes = state["files"]
    except (OSError, ValueError, KeyError) as error:
        raise BadInput(f"checkpoint {checkpoint} has no readable {STATE_FILE} ({error})") from error
    for name, size in sizes.items():
        path = checkpoint / name
        if not path.is_file() or path.stat().st_size != size:
            raise BadInput(f"checkpoint {checkpoint} is incomplete: {name} is missing or has the wrong size")
    return state


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int, slices=NoSlices()) -> None:
    """Write checkpoint `state["step"]` (every process takes part), then keep only the newest `keep`.
    `slices`: what every process writes besides `save_state` (a strategy's `slices(model, optimizer)`);
    whether they are slices of a sharded run is recorded as `sharded` in the trainer state."""
    state = {**state, "sharded": slices.sharded}
    folder = output_dir / "checkpoints"
    final = folder / checkpoint_name(state["step"])
    tmp = folder / f".tmp-{final.name}"  # the same name on every process: all of them write into it
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        slices.save(tmp)
    except Exception as error:  # a full disk is named in one sentence; the checkpoints before stay whole
        if not disk_full(error):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(errno.ENOSPC, "No space left on device", str(final)) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / STATE_FILE).write_text(json.dumps({**state, "files": files}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def model_signature(model, tokenizer_digest: str | None = None) -> dict:
    """What a checkpoint must share with the model it is loaded into: its config (minus the keys that
    do not change the weights), the name and shape of every weight, and the tokenizer's content
    (`run_config.tokenizer_digest`)."""
    config = getattr(model, "config", None)
    values = config.to_dict() if hasattr(config, "to_dict") else {}
    ignored = {"transformers_version", "dtype", "torch_dtype", "use_cache", "name_or_path"}
    values = {k: v for k, v in values.items() if k not in ignored and not k.startswith("_")}
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    signature = {"config": values, "shapes": shapes}
    if tokenizer_digest is not None:
        signature["tokenizer"] = tokenizer_digest
    return json.loads(json.dumps(signature, default=str))


def differing(saved: dict, current: dict) -> list[str]:
    """The keys whose values differ between two dicts (a key one lacks counts), sorted."""
    return sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))


def check_compatible(checkpoint: Path, saved: dict | None, current: dict) -> None:
    """ValueError naming what differs when the checkpoint was saved from another model."""
    if saved is None:  # written before signatures were stored: nothing to compare
        return
    keys = differing(saved["config"], current["config"])
    if keys:
        diffs = ", ".join(f"{k} {saved['config'].get(k)!r} vs {current['config'].get(k)!r}" for k in keys[:6])
        raise BadInput(
            f"The checkpoint {str(checkpoint)!r} is of another model (checkpoint vs now: {diffs}); "
            "resume with the same model options, or start afresh in a new --output-dir."
        )
    names = differing(saved["shapes"], current["shapes"])
    if names:
        raise BadInput(
            f"The checkpoint {str(checkpoint)!r} holds other weights than the model ({', '.join(names[:4])}); "
            "resume with the same model options (and --lora settings), or start afresh in a new --output-dir."
        )
    tokenizers = saved.get("tokenizer"), current.get("tokenizer")
    if None not in tokenizers and tokenizers[0] != tokenizers[1]:
        raise BadInput(
            f"The checkpoint {str(checkpoint)!r} was trained with another tokenizer than this run has (its vocabulary "
            "or merges differ); resume with the tokenizer and data the run started with, or start afresh in a new --output-dir."
        )


@contextlib.contextmanager
def loading_model(accelerator: Accelerator, loads: bool):
    """Around `load_state`: without `loads`, accelerate reads the schedule and the RNG states but not
    the model and optimizer it holds (a sharded run's checkpoint has no files of them; the slices do).
    Accelerate has no option for it: its private lists of them are emptied meanwhile."""
    if loads:
        yield
        return
    models, optimizers = accelerator._models, accelerator._optimizers
    accelerator._models, accelerator._optimizers = [], []
    try:
        yield
    finally:
        accelerator._models, accelerator._optimizers = models, optimizers


def load_newest_checkpoint(accelerator: Accelerator, output_dir: Path, signature: dict | None = None, slices=NoSlices()) -> dict:
    """Restore the newest complete checkpoint of the run in `output_dir`; skip damaged ones with a warning.
    Each is checked before any state is touched: its files against their recorded sizes, then (with
    `signature`, see `model_signature`) its model against this one. Another model is an error, not a
    reason to skip; so is no loadable checkpoint at all. `slices`: as for `save_checkpoint`; they read
    a checkpoint of a sharded run into an unsharded one and the reverse, on any number of processes."""
    folder = Path(output_dir) / "checkpoints"
    checkpoints = checkpoint_dirs(output_dir)
    if not checkpoints:
        raise MissingFile(f"--resume found no checkpoint in {str(folder)!r}; check --output-dir, or run without --resume to start afresh.")
    for checkpoint in reversed(checkpoints):
        try:
            state = read_checkpoint_state(checkpoint)
        except ValueError as error:
            warnings.warn(f"Skipping checkpoint {checkpoint.name}: {error}. Trying the previous one.", stacklevel=3)
            continue
        if signature is not None:
            check_compatible(checkpoint, state.get("model"), signature)
        sharded = state.get("sharded", False)  # the slices of every process, or whole files
        try:
            with loading_model(accelerator, slices.accelerate_loads(sharded)):
                accelerator.load_state(str(checkpoint))
            slices.load(checkpoint, sharded)
        except Exception as error:  # damaged contents of the right size: torch/safetensors raise many kinds
            warnings.warn(f"Skipping checkpoint {checkpoint.name}: {error}. Trying the previous one.", stacklevel=3)
            continue
        accelerator.print(f"Resumed from {checkpoint} (step {state['step']}).")
        return state
    raise BadInput(
        f"--resume found no loadable checkpoint in {str(folder)!r} (all are damaged); "
        "run without --resume in a new --output-dir to start afresh."
    )
