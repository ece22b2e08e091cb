"""Checkpoints in and out (stage 6): GPT-2 today; the book's model.pth, Llama and Qwen3 fit the same hook.

In:  importing this module registers `convert_gpt2` with the modeling file, so
     `ScratchGPTForCausalLM.from_pretrained("openai-community/gpt2")` (or a GPT-2 folder) converts on
     the way in, as does `ScratchGPTForSequenceClassification.from_pretrained(..., num_labels=...)`.
     A converter is `convert(source, **download_kwargs) -> (ScratchGPTConfig, state_dict)`, the state
     dict under ScratchGPT's parameter names; `register_converter(model_type, convert)` adds one.
Out: `export_gpt2(model_dir, out_dir)` / `scratch-gpt export-gpt2 MODEL_DIR OUT_DIR` writes a plain
     `GPT2LMHeadModel` folder that every GPT-2 tool loads without `trust_remote_code`.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from .configuration_scratch_gpt import ScratchGPTConfig
from .io_utils import atomic_directory, check_output
from .modeling_scratch_gpt import ScratchGPTForCausalLM, register_converter

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


# ----------------------------------------------------------------------------------------------
# GPT-2: the same network under other names; GPT-2's Conv1D stores Linear weights transposed.
# ----------------------------------------------------------------------------------------------
GPT2_NAMES = {  # ScratchGPT name part -> GPT2LMHeadModel name part
    "model.embed_tokens": "transformer.wte",
    "model.embed_positions": "transformer.wpe",
    "model.layers": "transformer.h",
    "model.norm": "transformer.ln_f",
    "attn.qkv_proj": "attn.c_attn",
    "attn.out_proj": "attn.c_proj",
    "mlp.fc_in": "mlp.c_fc",
    "mlp.fc_out": "mlp.c_proj",
}
GPT2_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_CONFIG_NAMES = {  # ScratchGPTConfig field -> GPT2Config field
    "vocab_size": "vocab_size",
    "hidden_size": "n_embd",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "intermediate_size": "n_inner",  # None in GPT-2 means 4 * n_embd, as in ScratchGPTConfig
    "max_position_embeddings": "n_positions",
    "hidden_act": "activation_function",
    "embd_pdrop": "embd_pdrop",
    "attn_pdrop": "attn_pdrop",
    "resid_pdrop": "resid_pdrop",
    "layer_norm_eps": "layer_norm_epsilon",
    "initializer_range": "initializer_range",
    "tie_word_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}


def gpt2_name(name: str) -> str:
    """`model.layers.3.attn.qkv_proj.weight` -> `transformer.h.3.attn.c_attn.weight`."""
    for ours, theirs in GPT2_NAMES.items():
        name = name.replace(ours, theirs)
    return name


def name_from_gpt2(name: str) -> str:
    """`transformer.h.3.attn.c_attn.weight` -> `model.layers.3.attn.qkv_proj.weight`."""
    for ours, theirs in GPT2_NAMES.items():
        name = name.replace(theirs, ours)
    return name


def conv1d_layout(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The GPT-2 weight `name` as GPT-2's Conv1D stores it or as Linear does: the transpose is its own inverse."""
    return tensor.t().contiguous() if name.endswith(GPT2_CONV1D_WEIGHTS) else tensor


def config_from_gpt2(gpt2_config: GPT2Config) -> ScratchGPTConfig:
    values = {ours: getattr(gpt2_config, theirs) for ours, theirs in GPT2_CONFIG_NAMES.items()}
    return ScratchGPTConfig(qkv_bias=True, **values)


def convert_gpt2(source: "str | os.PathLike | GPT2LMHeadModel", **download_kwargs):
    """A GPT-2 checkpoint (Hub id, folder, or a loaded `GPT2LMHeadModel`) as a ScratchGPT config and
    state dict: the converter `from_pretrained` uses for config.json's `model_type` "gpt2"."""
    if not isinstance(source, GPT2LMHeadModel):
        source = GPT2LMHeadModel.from_pretrained(source, **download_kwargs)
    state = {name_from_gpt2(name): conv1d_layout(name, tensor) for name, tensor in source.state_dict().items()}
    return config_from_gpt2(source.config), state


register_converter("gpt2", convert_gpt2)


def to_gpt2(model: ScratchGPTForCausalLM) -> GPT2LMHeadModel:
    """The same network under GPT-2's names and layout."""
    config = model.config
    gpt2_config = GPT2Config(**{theirs: getattr(config, ours) for ours, theirs in GPT2_CONFIG_NAMES.items()})
    gpt2 = GPT2LMHeadModel(gpt2_config).to(model.dtype)
    state = {gpt2_name(name): conv1d_layout(gpt2_name(name), tensor) for name, tensor in model.state_dict().items()}
    if not config.qkv_bias:  # GPT-2 always has a query/key/value bias: a zero bias is the same function
        for i in range(config.num_hidden_layers):
            state[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(3 * config.hidden_size, dtype=model.dtype)
    gpt2.load_state_dict(state, strict=False)  # GPT-2's non-persistent attention buffers are not in `state`
    missing = set(gpt2.state_dict()) - set(state)
    if missing:
        raise RuntimeError(f"GPT-2 export left weights unset: {sorted(missing)}")
    gpt2.generation_config = model.generation_config
    return gpt2.eval()


def export_gpt2(model_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Write the ScratchGPT folder `model_dir` as a standard GPT-2 folder `out_dir` (tokenizer included).

    The model loads through the registered ScratchGPT class; code shipped in the folder runs only
    with `trust_remote_code=True`. `out_dir` is checked first (see `io_utils.check_output`).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_output(out_dir, inputs=[model_dir], overwrite=overwrite, what="output folder", flag="OUT_DIR")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in {str(model_dir)!r}; pass a folder written by save_pretrained.")
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"No *.safetensors weights in {str(model_dir)!r}; pass a folder written by save_pretrained.")
    architectures = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    if architectures and architectures != ["ScratchGPTForCausalLM"]:
        raise ValueError(f"{str(model_dir)!r} holds a {architectures[0]}, not a ScratchGPT causal LM; export a causal-LM folder.")
    if trust_remote_code:
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    else:
        model = ScratchGPTForCausalLM.from_pretrained(model_dir)  # our own class: no code from the folder runs
    if not isinstance(model, ScratchGPTForCausalLM) and type(model).__name__ != "ScratchGPTForCausalLM":
        raise ValueError(f"{str(model_dir)!r} holds a {type(model).__name__}, not a ScratchGPT causal LM.")
    gpt2 = to_gpt2(model)
    with atomic_directory(out_dir) as tmp:
        gpt2.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
    return out_dir


def export_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scratch-gpt export-gpt2",
        description="Write a ScratchGPT model folder as a GPT2LMHeadModel folder (loads without trust_remote_code).",
    )
    parser.add_argument("model_dir", help="folder written by save_pretrained (a ScratchGPT causal LM)")
    parser.add_argument("out_dir", help="where to write the GPT-2 folder (replaced atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR that scratch-gpt did not write")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model code shipped in MODEL_DIR")
    args = parser.parse_args(argv)
    try:
        out = export_gpt2(args.model_dir, args.out_dir, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    except (ValueError, OSError) as error:
        print(f"scratch-gpt export-gpt2: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote GPT2LMHeadModel to {out}")
    return 0
