"""How the processes of a run share the model: the trainer's parallelism strategy.

`choose(config.fsdp)` picks one from the `--fsdp` flag and the launch:

- `Plain`: one process. The model is moved to its device and handed to accelerate's `prepare`
  (mixed precision, torch.compile).
- `DDP`: several processes (`accelerate launch`), each holding the whole model. `prepare` wraps
  it in DistributedDataParallel, whose gradient all-reduce accelerate's `accumulate` skips on all
  but the last micro-batch of a step.
- `FSDP2`: several processes, each holding a slice of every weight, gradient and optimizer state
  (PyTorch's `fully_shard`, applied by `sharding.py`); accelerate prepares only the schedule.

What a strategy decides, in the order a run meets it:

    check(config)                                     the options it cannot train with, one sentence each
    build(model)                                      a model factory called in its build context
    place(model, accelerator, config)                 onto the device, or sharded over the processes
    prepare(accelerator, model, optimizer, scheduler) accelerate's wrapping
    sync_gradients(model, sync)                       before each micro-batch: reduce the gradients or not
    generating(model)                                 around `generate` outside a training step
    full_model(accelerator, model, merge_adapters)    what `save_model` writes
    slices(model, optimizer)                          what a checkpoint holds besides `save_state`

A model factory is a zero-argument callable returning the model; one that makes new weights (none
read from a folder) is marked `NewModel(factory)`. What FSDP does with each: `sharding.py`.
"""

import contextlib
import os
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import extract_model_from_parallel

from scratch_gpt.errors import BadInput
from scratch_gpt.training import sharding


def world_size() -> int:
    """How many processes `accelerate launch` (or torchrun) started; 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cpu_processes() -> bool:
    """True in a process that `accelerate launch --multi_gpu` started on a machine without a GPU.
    The launcher resets ACCELERATE_USE_CPU, and accelerate then sets up no process group at all;
    telling it `cpu=True` gives the gloo backend, so the same command works on CPU (and in CI)."""
    return not torch.cuda.is_available() and world_size() > 1


class NewModel:
    """A model factory whose model is new (weights to initialise, none read from a folder)."""

    def __init__(self, build: Callable[[], torch.nn.Module]):
        self.build = build

    def __call__(self) -> torch.nn.Module:
        return self.build()


# ----------------------------------------------------------------------------------------------
# What a checkpoint holds besides accelerate's `save_state` (see checkpoints.py).


class NoSlices:
    """Every process holds the whole model: `save_state` has it all. A checkpoint of a sharded run
    (`sharded/`, any number of processes) is read whole into `model` and `optimizer`, which
    accelerate's `load_state` then leaves alone (`accelerate_loads`)."""

    sharded = False

    def __init__(self, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None):
        self.model, self.optimizer = model, optimizer

    def accelerate_loads(self, checkpoint_sharded: bool) -> bool:
        """Whether accelerate's `load_state` reads the model and optimizer of such a checkpoint."""
        return not checkpoint_sharded

    def save(self, folder: Path) -> None:
        pass

    def load(self, folder: Path, checkpoint_sharded: bool) -> None:
        if checkpoint_sharded:
            sharding.load_sharded(self.model, self.optimizer, folder / sharding.SHARDS_FOLDER)


class ShardedSlices(NoSlices):
    """Each process' slices of the model and optimizer state, in the checkpoint's `sharded/`; a
    checkpoint of an unsharded run is read from accelerate's files, each process keeping its slices."""

    sharded = True

    def accelerate_loads(self, checkpoint_sharded: bool) -> bool:
        return False  # accelerate does not hold the sharded model (FSDP2.prepare)

    def save(self, folder: Path) -> None:
        sharding.save_sharded(self.model, self.optimizer, folder / sharding.SHARDS_FOLDER)

    def load(self, folder: Path, checkpoint_sharded: bool) -> None:
        if checkpoint_sharded:
            sharding.load_sharded(self.model, self.optimizer, folder / sharding.SHARDS_FOLDER)
        else:
            sharding.load_whole(self.model, self.optimizer, folder / "model.safetensors", folder / "optimizer.bin")


# ----------------------------------------------------------------------------------------------
# The strategies.


class Plain:
    """One process holding the whole model."""

    def check(self, config) -> None:
        """Nothing to refuse: every option trains."""

    def build_context(self, *, load: bool):
        return contextlib.nullcontext()

    def build(self, model):
        """`model` itself, or the model a zero-argument factory builds inside `build_context`."""
        if isinstance(model, torch.nn.Module):
            return model
        with self.build_context(load=not isinstance(model, NewModel)):
            return model()

    def place(self, model: torch.nn.Module, accelerator, config) -> torch.nn.Module:
        return model.to(accelerator.device)

    def prepare(self, accelerator, model, optimizer, scheduler) -> tuple:
        return accelerator.prepare(model, optimizer, scheduler)

    def sync_gradients(self, model, sync: bool) -> None:
        """Nothing to do: accelerate's `accumulate` decides for a DDP model."""

    @contextlib.contextmanager
    def generating(self, model):
        """Around `generate` outside a training step; yields `synced_gpus` for it."""
        yield False

    def full_model(self, accelerator, model, merge_adapters: bool) -> tuple:
        """(the unwrapped model, its state dict, None with `merge_adapters`), on every process;
        collective under DeepSpeed."""
        state_dict = None if merge_adapters else accelerator.get_state_dict(model)
        return accelerator.unwrap_model(model, keep_torch_compile=False), state_dict

    def slices(self, model, optimizer) -> NoSlices:
        """The model and optimizer unwrapped (DDP, torch.compile, accelerate's optimizer wrapper)."""
        return NoSlices(extract_model_from_parallel(model), getattr(optimizer, "optimizer", optimizer))


class DDP(Plain):
    """Several processes, each holding the whole model: accelerate's `prepare` wraps it in
    DistributedDataParallel; everything else is `Plain`'s."""


class FSDP2(Plain):
    """Several processes, each holding a slice of every weight, gradient and optimizer state."""

    def check(self, config) -> None:
        if config.mixed_precision == "fp16":
            raise BadInput("FSDP trains in bf16 or fp32 here (fp16 would need a sharded gradient scaler); use --mixed-precision bf16.")
        if config.compile:
            raise BadInput("--compile is not supported with FSDP yet; drop --compile or train without FSDP.")

    def build_context(self, *, load: bool):
        return sharding.build_context(load=load)

    def place(self, model: torch.nn.Module, accelerator, config) -> torch.nn.Module:
        """Each process keeps its slices only; new weights are initialised after sharding."""
        sharding.shard_model(model, accelerator.device, seed=config.seed, mixed_precision=config.mixed_precision)
        held, total = sharding.local_numel(model), sum(p.numel() for p in model.parameters())
        print(f"FSDP: process {accelerator.process_index} holds {held:,} of {total:,} parameters", flush=True)
        return model

    def prepare(self, accelerator, model, optimizer, scheduler) -> tuple:
        """Accelerate would wrap the sharded model in DDP: model and optimizer stay as they are."""
        return model, optimizer, accelerator.prepare(scheduler)

    def sync_gradients(self, model, sync: bool) -> None:
        """Reduce the gradients only on the last micro-batch of a step."""
        model.set_requires_gradient_sync(sync)

    @contextlib.contextmanager
    def generating(self, model):
        """Every process generates, in step, until all are done; the root's weights gathered."""
        with sharding.gathered_root(model):
            yield True

    def full_model(self, accelerator, model, merge_adapters: bool) -> tuple:
        """The full weights on the main process' CPU, in an ordinary model (None elsewhere). Collective."""
        full = sharding.full_state_dict(model)
        unwrapped = sharding.unsharded_copy(model, full) if accelerator.is_main_process else None
        state_dict = unwrapped.state_dict() if unwrapped is not None and not merge_adapters else None  # head tied again
        return unwrapped, state_dict

    def slices(self, model, optimizer) -> ShardedSlices:
        return ShardedSlices(model, optimizer)


def choose(fsdp: bool = False) -> Plain:
    """Plain for one process; with more, FSDP2 when asked for (`--fsdp` or an accelerate FSDP config), else DDP."""
    if world_size() == 1:
        return Plain()
    fsdp = fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return FSDP2() if fsdp else DDP()


def of_model(model: torch.nn.Module) -> Plain:
    """The strategy that holds `model` as it is: FSDP2 for a sharded model, else Plain."""
    return FSDP2() if sharding.is_sharded(model) else Plain()
