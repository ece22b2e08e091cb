"""LoRA for ScratchGPT (stage 7.0): PEFT defaults for this architecture.

Every transformer block has four `nn.Linear` projections, `attn.qkv_proj`, `attn.out_proj`,
`mlp.fc_in` and `mlp.fc_out`; LoRA adds a trainable low-rank update `B @ A` (rank `r`, scaled by
`alpha / r`) next to each of them and freezes everything else. For a classifier the new head
`score` is trained in full (`modules_to_save`), because it starts from random weights.

    >>> model = get_peft_model(model, lora_config(task="causal"))
    >>> print(describe_trainable(model))  # trainable params: ... || all params: ... || trainable%: ...

After training, `model.merge_and_unload()` folds the updates into the base weights and returns a
plain `ScratchGPTFor...` model; `model.save_pretrained(folder)` saves only the adapter.
"""

import importlib.abc
import importlib.util
import sys
import warnings

from torch import nn

from scratch_gpt.args import LoraOptions
from scratch_gpt.errors import BadInput

DEFAULT_TARGETS = ("qkv_proj", "out_proj", "fc_in", "fc_out")  # GPT-2's MLP (mlp_type "gelu")
SWIGLU_TARGETS = ("qkv_proj", "out_proj", "gate_proj", "up_proj", "down_proj")  # Llama / Qwen's MLP ("swiglu")
# What the commands and PEFT's table use: every projection name of both MLPs. PEFT adapts the names
# a model has and skips the others, as long as at least one is found (qkv_proj always is).
ALL_TARGETS = tuple(dict.fromkeys(DEFAULT_TARGETS + SWIGLU_TARGETS))
TASK_TYPES = {"causal": "CAUSAL_LM", "classification": "SEQ_CLS"}  # peft's TaskType values
PEFT_TARGETS_MODULE = "peft.utils.constants"  # where PEFT keeps its default targets per model type

# peft 0.21 reads transformers' deprecated `model.is_gradient_checkpointing` whenever it wraps or loads an
# adapter, and transformers 5 warns about it: a warning about peft's code that a user of ours cannot act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def register_with_peft() -> None:
    """Add our default targets to PEFT's own table, so a plain `LoraConfig(task_type=...)` works.

    `import scratch_gpt` calls this. Importing PEFT takes about two seconds, so when PEFT is not
    loaded yet the entry is added right after PEFT loads that table, not by importing it now.
    """
    table = sys.modules.get(PEFT_TARGETS_MODULE)
    if table is not None:
        table.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault("scratch_gpt", list(ALL_TARGETS))
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(PEFT_TARGETS_MODULE, register_with_peft))


class _AfterImport(importlib.abc.MetaPathFinder):
    """An import hook that runs `callback` once, right after the module `name` has been executed."""

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the lookup below must not find this hook again
        spec = importlib.util.find_spec(fullname)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            self.callback()

        spec.loader.exec_module = exec_module
        return spec


def default_targets(config) -> tuple[str, ...]:
    """The projections LoRA adapts in a model of this config: attention's two, and its MLP's."""
    return SWIGLU_TARGETS if getattr(config, "mlp_type", "gelu") == "swiglu" else DEFAULT_TARGETS


def lora_config(task="causal", r=8, alpha=16, dropout=0.0, targets=DEFAULT_TARGETS):
    """A `peft.LoraConfig` for ScratchGPT; `task` is "causal" or "classification", `targets` a tuple or list."""
    from peft import LoraConfig

    if task not in TASK_TYPES:
        raise BadInput(f"Unknown LoRA task {task!r}; use one of {', '.join(TASK_TYPES)}.")
    if r <= 0:
        raise BadInput(f"The LoRA rank must be a positive integer, got {r}.")
    if not 0.0 <= dropout < 1.0:
        raise BadInput(f"The LoRA dropout must be in [0, 1), got {dropout}.")
    unknown = sorted(set(targets) - set(ALL_TARGETS))
    if unknown or not targets:  # no targets: the message shows []
        raise BadInput(f"Unknown LoRA target modules {unknown}; choose among {', '.join(ALL_TARGETS)}.")
    return LoraConfig(
        task_type=TASK_TYPES[task],
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        modules_to_save=["score"] if task == "classification" else None,
    )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameters; tied weights are counted once."""
    params = list(model.parameters())  # `parameters()` already yields shared tensors once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe_trainable(model: nn.Module) -> str:
    """One line in the format of peft's `print_trainable_parameters`."""
    trainable, total = count_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def lora_config_for(options: LoraOptions, task: str):
    """The PEFT `LoraConfig` that the `--lora-*` options describe (scratch_gpt.args.LoraOptions)."""
    targets = tuple(name.strip() for name in options.lora_targets.split(",") if name.strip())
    return lora_config(
        task=task, r=options.lora_r, alpha=options.lora_alpha, dropout=options.lora_dropout, targets=targets
    )


__all__ = ["DEFAULT_TARGETS", "SWIGLU_TARGETS", "ALL_TARGETS"]
__all__ += ["default_targets", "lora_config", "lora_config_for", "count_parameters", "describe_trainable"]
