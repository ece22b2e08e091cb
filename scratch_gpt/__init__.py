"""scratch_gpt: every stage of building a GPT, each one a standard Hugging Face artifact.

Importing the package registers ScratchGPT with the `Auto*` classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without `trust_remote_code`; folders saved
by it also carry the model code, for machines where this package is not installed. It also fills
the modeling file's hooks: `ScratchGPTForCausalLM.from_pretrained(<GPT-2 folder or Hub id>)` converts
the checkpoint (scratch_gpt.convert), and `model.push_to_hub` publishes in one commit (scratch_gpt.hub).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from . import convert, hub  # noqa: F401  (fill the modeling file's hooks: GPT-2 checkpoints in, push_to_hub)
from .lora import register_with_peft
from .configuration_scratch_gpt import PRESETS, ScratchGPTConfig
from .modeling_scratch_gpt import (
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
    ScratchGPTModel,
    ScratchGPTPreTrainedModel,
)

AutoConfig.register(ScratchGPTConfig.model_type, ScratchGPTConfig, exist_ok=True)
AutoModel.register(ScratchGPTConfig, ScratchGPTModel, exist_ok=True)
AutoModelForCausalLM.register(ScratchGPTConfig, ScratchGPTForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(ScratchGPTConfig, ScratchGPTForSequenceClassification, exist_ok=True)

register_with_peft()  # tells PEFT which modules LoRA adapts in a "scratch_gpt" model

# `save_pretrained` copies the configuration and modeling files and writes `auto_map`.
ScratchGPTConfig.register_for_auto_class()
ScratchGPTModel.register_for_auto_class("AutoModel")
ScratchGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
ScratchGPTForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "ScratchGPTConfig",
    "ScratchGPTPreTrainedModel",
    "ScratchGPTModel",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
]
