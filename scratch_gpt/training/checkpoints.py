"""Checkpoints of a training run: `OUTPUT_DIR/checkpoints/step-XXXXXXXX/`.

Each is accelerate's `save_state` (model, optimizer, scheduler, RNG states, one set per process)
written into a temporary folder, plus `trainer_state.json` (the position in the data and the size
of every file), then renamed into place: a kill never leaves a half-written `step-*` folder, and a
folder whose files do not match their recorded sizes is skipped when resuming.
"""

import json
import os
import shutil
import warnings
from pathlib import Path

from accelerate import Accelerator

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
        raise ValueError(f"checkpoint {checkpoint} has no readable {STATE_FILE} ({error})") from error
    for name, size in sizes.items():
        path = checkpoint / name
        if not path.is_file() or path.stat().st_size != size:
            raise ValueError(f"checkpoint {checkpoint} is incomplete: {name} is missing or has the wrong size")
    return state


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int) -> None:
    """Write checkpoint `state["step"]` (every process takes part), then keep only the newest `keep`."""
    folder = output_dir / "checkpoints"
    final = folder / checkpoint_name(state["step"])
    tmp = folder / f".tmp-{final.name}"  # the same name on every process: all of them write into it
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / STATE_FILE).write_text(json.dumps({**state, "files": files}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_newest_checkpoint(accelerator: Accelerator, output_dir: Path) -> dict | None:
    """Restore the newest complete checkpoint; skip damaged ones with a warning."""
    for checkpoint in reversed(checkpoint_dirs(output_dir)):
        try:
            state = read_checkpoint_state(checkpoint)
            accelerator.load_state(str(checkpoint))
        except Exception as error:  # a damaged file makes torch/safetensors raise many kinds of errors
            warnings.warn(f"Skipping checkpoint {checkpoint.name}: {error}. Trying the previous one.", stacklevel=3)
            continue
        accelerator.print(f"Resumed from {checkpoint} (step {state['step']}).")
        return state
    return None
