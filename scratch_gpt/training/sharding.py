"""Fully sharded data parallel (FSDP2) for the loop, the same on GPUs (nccl) and CPUs (gloo).

Under FSDP every process keeps only its slice of each weight, gradient and optimizer state; a
block's full weights exist only while it runs (gathered just before, freed just after). This is
PyTorch's `fully_shard`, applied the way torchtitan does it:

1. build: the trainer calls a command's model factory inside `build_context(load=...)` (the
   `FSDP2` strategy of `parallel.py`). A new model is built on the meta device (shapes, no memory)
   by every process; a model read from a folder is read by the main process only, into CPU
   memory, while the others build the same shapes on meta.
2. shard (`shard_model`, when the trainer places the model): one `fully_shard` per transformer block (the
   classes the model names in `_no_split_modules`, e.g. `ScratchGPTBlock`), one at the root (the
   embeddings, final norm and the LM head tied to the embeddings, which stay tied).
3. fill: every process allocates its own slices (`to_empty`); a read model is then sent from the
   main process into the slices (`set_model_state_dict(..., broadcast_from_rank0=True)`), a new one
   is initialised in place (`init_weights` on the slices).
4. save: `full_state_dict` gathers the weights on the main process' CPU, `unsharded_copy` makes an
   ordinary model of them for `save_pretrained`; checkpoints are `torch.distributed.checkpoint`
   shards (`save_sharded` / `load_sharded`), each process writing and reading its own slices.

Accelerate is not told about FSDP: it would shard on GPUs only (on CPUs it silently trains plain
data parallel) and would not build on meta. The loop gets its process group, data loaders,
reductions and gradient accumulation from accelerate, the sharding from here. Turn it on with
`--fsdp` or an accelerate FSDP config (`distributed_type: FSDP`, `ACCELERATE_USE_FSDP=true`).
"""

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from accelerate import init_empty_weights
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from scratch_gpt.errors import BadInput

SHARDS_FOLDER = "sharded"  # a checkpoint's model and optimizer slices, one file per process


def build_context(*, load: bool):
    """Where a process builds (`load=False`) or reads (`load=True`) its part of a model to shard:
    the meta device, except the main process when it reads the weights."""
    if load and int(os.environ.get("RANK", "0")) == 0:  # the main process
        return contextlib.nullcontext()
    return init_empty_weights()  # parameters on meta, buffers (computed, small) real


def block_classes(model: torch.nn.Module) -> tuple[type, ...]:
    """The classes of the model's transformer blocks: those it names in `_no_split_modules`."""
    names = {name for module in model.modules() for name in getattr(module, "_no_split_modules", None) or ()}
    classes = tuple({type(module) for module in model.modules() if type(module).__name__ in names})
    if not classes:
        raise BadInput(
            f"FSDP shards a model block by block, but {type(model).__name__} names no block class to shard "
            "(`_no_split_modules`, e.g. ScratchGPTBlock); train it without --fsdp or an FSDP accelerate config."
        )
    return classes


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def shard_model(model: torch.nn.Module, device: torch.device, *, seed: int, mixed_precision: str = "no"):
    """Shard `model` (built by `build_context`) over every process and fill its slices (steps 2-3
    above); returns it. Collective. The main process read the weights, or all initialise new ones."""
    blocks = block_classes(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under LoRA adapters
    if hasattr(base, "tie_weights"):
        base.tie_weights()  # a model read onto meta comes with its head untied
    loaded = [any(not p.is_meta for p in model.parameters())]
    dist.broadcast_object_list(loaded, src=0)
    full_weights = model.state_dict() if loaded[0] and dist.get_rank() == 0 else {}
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers() if not buffer.is_meta}

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    bf16 = {"param_dtype": torch.bfloat16, "reduce_dtype": torch.float32} if mixed_precision == "bf16" else {}
    policy = MixedPrecisionPolicy(**bf16)
    for module in model.modules():
        if isinstance(module, blocks):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # the rest: embeddings, final norm, (tied) head

    model.to_empty(device=device)  # this process' slices, uninitialised; buffers restored below
    for name, buffer in buffers.items():
        model.get_buffer(name).copy_(buffer)
    if loaded[0]:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, full_weights, options=options)
    else:
        # On GPUs each slice draws its own part of one random stream (DTensor's RNG tracker); on
        # CPUs every process would draw the same numbers, so each gets a seed of its own.
        for module in model.modules():  # built on meta, transformers counts them as initialised
            module._is_hf_initialized = False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + dist.get_rank())
            model.init_weights()
    return model


def local_numel(model: torch.nn.Module) -> int:
    """Parameters this process holds: the size of its slices."""
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Saving: one full folder; checkpoints: the slices.


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights on the main process' CPU (empty elsewhere). Collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An ordinary model of the same class, config (and LoRA adapters) as the sharded `model`, holding
    `state_dict` (on the CPU, without copying): what `save_pretrained` and `merge_and_unload` expect."""
    from peft import PeftModel, get_peft_model

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    plain_class = next(cls for cls in type(base).__mro__ if not issubclass(cls, FSDPModule))  # before fully_shard
    with init_empty_weights():
        copy = plain_class(base.config)
        if isinstance(model, PeftModel):
            copy = get_peft_model(copy, model.peft_config[model.active_adapter])
    copy.load_state_dict(state_dict, assign=True)
    copy.tie_weights()  # assign=True replaced the tied head by its own tensor
    if getattr(base, "generation_config", None) is not None:
        (copy.get_base_model() if isinstance(copy, PeftModel) else copy).generation_config = base.generation_config
    return copy


@contextlib.contextmanager
def gathered_root(model: torch.nn.Module):
    """Gather the root's weights (embeddings, head) for calls that do not enter through the root's
    forward, such as `generate` of a LoRA model; the blocks gather their own as they run."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def save_sharded(model, optimizer, folder: Path) -> None:
    """Every process writes its slices of the weights and the optimizer state into `folder`."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_sharded(model, optimizer, folder: Path) -> None:
    """Every process reads its slices back (the inverse of `save_sharded`). The same call reads
    them into an unsharded model and optimizer (one process, or DDP: each reads the whole):
    torch.distributed.checkpoint cuts what it reads to the tensors it is asked to fill."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_whole(model, optimizer, model_file: Path, optimizer_file: Path) -> None:
    """A checkpoint of an unsharded run (accelerate's `model.safetensors` and `optimizer.bin`) read
    into this sharded model and optimizer: every process reads the whole files and keeps its slices.
    The optimizer file names its parameters by position (torch's `state_dict`), the sharded
    optimizer by name: both list the same parameters in the same order (`build_optimizer`)."""
    from safetensors.torch import load_file

    weights = load_file(model_file)
    for name in model.state_dict().keys() - weights.keys():  # the tied head, which safetensors dropped
        tied = model.get_parameter(name)
        weights[name] = weights[next(n for n, p in model.named_parameters() if p is tied)]
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = torch.load(optimizer_file, map_location="cpu", weights_only=True)
    by_name = {
        "state": {order[index]: state for index, state in saved["state"].items()},
        "param_groups": [{**group, "params": [order[index] for index in group["params"]]} for group in saved["param_groups"]],
    }
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, by_name, options=options)
