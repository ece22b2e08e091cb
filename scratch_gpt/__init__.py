"""scratch_gpt: every stage of building a GPT, each one a standard Hugging Face artifact.

Importing the package registers ScratchGPT with the `Auto*` classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without `trust_remote_code`; folders saved
by it also carry the model code, for machines where this package is not installed. It also fills
the modeling file's hooks: `ScratchGPTForCausalLM.from_pretrained(<GPT-2 folder or Hub id>)` converts
the checkpoint (scratch_gpt.convert), and `model.push_to_hub` publishes in one commit (scratch_gpt.hub).

The import itself is light, so that `scratch-gpt --help` answers at once: the registration needs
transformers (and with it torch), so it runs now if transformers is already imported, else the
moment it is (`_RegisterWhenReady`). The public names load on first use.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "ScratchGPTConfig",
    "ScratchGPTPreTrainedModel",
    "ScratchGPTModel",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
]
_HOMES = {"PRESETS": "configuration_scratch_gpt", "ScratchGPTConfig": "configuration_scratch_gpt"}


def __getattr__(name: str):
    """`scratch_gpt.ScratchGPTConfig` and the others, imported when first asked for."""
    if name not in __all__:
        raise AttributeError(f"module 'scratch_gpt' has no attribute {name!r}")
    module = importlib.import_module(f"scratch_gpt.{_HOMES.get(name, 'modeling_scratch_gpt')}")
    return getattr(module, name)


def register() -> None:
    """Tell transformers' `Auto*` classes and PEFT about ScratchGPT (safe to call again)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    from . import convert, hub  # noqa: F401  (fill the modeling file's hooks: GPT-2 checkpoints in, push_to_hub)
    from .configuration_scratch_gpt import ScratchGPTConfig
    from .lora import register_with_peft
    from .modeling_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification, ScratchGPTModel

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


class _RegisterWhenReady(importlib.abc.MetaPathFinder):
    """Registers ScratchGPT once transformers is imported and none of our modules is half-imported.

    It finds modules as Python's own path finder does, for `transformers` and `scratch_gpt.*` only,
    and counts our modules while they execute: `register()` imports some of them, so it must wait
    until the outermost one is complete (`from scratch_gpt import ScratchGPTConfig` imports
    transformers from inside configuration_scratch_gpt). Then it leaves `sys.meta_path`.
    """

    loading = 0  # how many of our modules are executing now

    def find_spec(self, name, path=None, target=None):
        if name != "transformers" and not name.startswith("scratch_gpt."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute, ours = spec.loader.exec_module, name != "transformers"

        def execute_then_register(module):
            self.loading += ours
            try:
                execute(module)
            finally:
                self.loading -= ours
            if self.loading == 0 and "transformers" in sys.modules and self in sys.meta_path:
                sys.meta_path.remove(self)
                register()

        spec.loader.exec_module = execute_then_register
        return spec


if "transformers" in sys.modules:
    register()
else:
    sys.meta_path.insert(0, _RegisterWhenReady())
