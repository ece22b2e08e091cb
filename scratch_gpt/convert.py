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
import contextlib
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from .configuration_scratch_gpt import ScratchGPTConfig
from .io_utils import atomic_directory
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
    check_gpt2_shape(config)
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


def export_gpt2(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the ScratchGPT folder `model_dir` as a standard GPT-2 folder `out_dir` (tokenizer included)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in {str(model_dir)!r}; pass a folder written by save_pretrained.")
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
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
    args = parser.parse_args(argv)
    try:
        out = export_gpt2(args.model_dir, args.out_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"scratch-gpt export-gpt2: {error}", file=sys.stderr)
        return 2
    print(f"Wrote GPT2LMHeadModel to {out}")
    return 0


# ----------------------------------------------------------------------------------------------
# Llama (SmolLM2, Llama 3.x), Qwen2 and Qwen3: the Llama-switched ScratchGPT under other names. The
# names agree except the norms and attention's; ScratchGPT fuses q_proj, k_proj, v_proj into qkv_proj.
# ----------------------------------------------------------------------------------------------
LLAMA_NAMES = {  # ScratchGPT name part -> LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM name part
    ".ln_1.": ".input_layernorm.",
    ".ln_2.": ".post_attention_layernorm.",
    ".attn.out_proj.": ".self_attn.o_proj.",
    ".attn.q_norm.": ".self_attn.q_norm.",
    ".attn.k_norm.": ".self_attn.k_norm.",
}
LLAMA_CONFIG_NAMES = (  # the same name in ScratchGPTConfig and in the Llama / Qwen configs
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "hidden_act",
    "rms_norm_eps",
    "initializer_range",
    "tie_word_embeddings",
    "rope_parameters",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
# model_type -> (class name, what of ScratchGPT's switches the family fixes)
LLAMA_FAMILY = {
    "llama": ("LlamaForCausalLM", dict(qk_norm=False)),
    "qwen2": ("Qwen2ForCausalLM", dict(qk_norm=False, qkv_bias=True, attention_bias=False, mlp_bias=False)),
    "qwen3": ("Qwen3ForCausalLM", dict(qk_norm=True, mlp_bias=False)),
}


def unsupported_feature(hf_config) -> str | None:
    """The first feature of a Llama/Qwen config that ScratchGPT's switches do not cover, in words."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    layer_types = set(getattr(hf_config, "layer_types", None) or ["full_attention"])
    checks = [
        (getattr(hf_config, "use_sliding_window", False) or layer_types != {"full_attention"}, "sliding-window attention"),
        (getattr(hf_config, "num_experts", 0) or getattr(hf_config, "num_local_experts", 0), "mixture-of-experts layers"),
        (rope.get("rope_type", "default") not in ("default", "llama3"), f"the RoPE type {rope.get('rope_type')!r}"),
        (rope.get("partial_rotary_factor", 1.0) != 1.0, "partial rotary embeddings"),
        (getattr(hf_config, "attn_logit_softcapping", None), "attention logit softcapping"),
        (getattr(hf_config, "final_logit_softcapping", None), "final logit softcapping"),
        ((getattr(hf_config, "pretraining_tp", 1) or 1) > 1, "pretraining_tp > 1"),
        (hf_config.hidden_act not in ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu"), f"the activation {hf_config.hidden_act!r}"),
    ]
    return next((feature for present, feature in checks if present), None)


def config_from_llama(hf_config) -> ScratchGPTConfig:
    """A Llama, Qwen2 or Qwen3 config as ScratchGPT switches; refuses what they do not cover."""
    model_type = hf_config.model_type
    feature = unsupported_feature(hf_config)
    if feature is not None:
        raise ValueError(f"ScratchGPT cannot load this {model_type} checkpoint: it uses {feature}, which ScratchGPT does not implement.")
    values = {name: getattr(hf_config, name, None) for name in LLAMA_CONFIG_NAMES}  # Qwen2 has no head_dim: None
    bias = bool(getattr(hf_config, "attention_bias", False))  # Llama / Qwen3: on q, k, v and o together
    switches = dict(qkv_bias=bias, attention_bias=bias, mlp_bias=bool(getattr(hf_config, "mlp_bias", False)))
    switches.update(LLAMA_FAMILY[model_type][1])
    return ScratchGPTConfig(
        position_embedding_type="rope",
        norm_type="rmsnorm",
        mlp_type="swiglu",
        attn_pdrop=float(getattr(hf_config, "attention_dropout", 0.0) or 0.0),
        **switches,
        **values,
    )


def name_from_llama(name: str) -> str:
    for ours, theirs in LLAMA_NAMES.items():
        name = name.replace(theirs, ours)
    return name


def llama_name(name: str) -> str:
    for ours, theirs in LLAMA_NAMES.items():
        name = name.replace(ours, theirs)
    return name


def convert_llama(source, **download_kwargs):
    """A Llama, Qwen2 or Qwen3 causal-LM checkpoint (Hub id, folder, or a loaded model) as a ScratchGPT
    config and state dict: the converter `from_pretrained` uses for those `model_type`s."""
    from transformers import AutoConfig

    if isinstance(source, PreTrainedModel):
        hf_config, model = source.config, source
    else:
        hf_config = AutoConfig.from_pretrained(source, **download_kwargs)
    config = config_from_llama(hf_config)  # refuses before any weight is read
    if not isinstance(source, PreTrainedModel):
        model = AutoModelForCausalLM.from_pretrained(source, config=hf_config, **download_kwargs)
    state = {}
    for name, tensor in model.state_dict().items():
        if ".self_attn.q_proj." in name:  # q, k, v -> one fused qkv_proj (weights and biases alike)
            k, v = (model.state_dict()[name.replace("q_proj", other)] for other in ("k_proj", "v_proj"))
            state[name_from_llama(name).replace(".self_attn.q_proj.", ".attn.qkv_proj.")] = torch.cat([tensor, k, v])
        elif ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
            state[name_from_llama(name)] = tensor
    return config, state


for _model_type in LLAMA_FAMILY:
    register_converter(_model_type, convert_llama)


def to_llama(model: ScratchGPTForCausalLM, model_type: str = "llama") -> PreTrainedModel:
    """The same network as a native `LlamaForCausalLM` ("llama") or `Qwen3ForCausalLM` ("qwen3")."""
    import transformers

    config = model.config
    class_name, fixed = LLAMA_FAMILY[model_type]
    needed = dict(position_embedding_type="rope", norm_type="rmsnorm", mlp_type="swiglu", **fixed)
    needed.setdefault("qkv_bias", config.attention_bias)  # one bias switch for q, k, v and o in these classes
    wrong = {name: getattr(config, name) for name, value in needed.items() if getattr(config, name) != value}
    if wrong:
        raise ValueError(f"This ScratchGPT cannot be written as {class_name}: it needs {needed}, but has {wrong}.")
    config_class = getattr(transformers, class_name.replace("ForCausalLM", "Config"))
    values = {name: getattr(config, name) for name in LLAMA_CONFIG_NAMES}
    values.update(attention_bias=config.attention_bias, attention_dropout=config.attn_pdrop)
    if model_type == "llama":
        values["mlp_bias"] = config.mlp_bias
    native = getattr(transformers, class_name)(config_class(**values)).to(model.dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        if ".attn.qkv_proj." in name:
            sizes = model.model.layers[0].attn.sizes
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split(sizes)):
                state[name.replace(".attn.qkv_proj.", f".self_attn.{part}.")] = piece.contiguous()
        else:
            state[llama_name(name)] = tensor
    native.load_state_dict(state, strict=True)
    native.generation_config = model.generation_config
    return native.eval()


def check_gpt2_shape(config: ScratchGPTConfig) -> None:
    """Refuse, in one sentence, a ScratchGPT whose switches GPT2LMHeadModel cannot express."""
    gpt2 = dict(position_embedding_type="learned", norm_type="layernorm", mlp_type="gelu", qk_norm=False, attention_bias=True, mlp_bias=True)
    gpt2["num_key_value_heads"] = config.num_attention_heads
    gpt2["head_dim"] = config.hidden_size // config.num_attention_heads
    wrong = {name: getattr(config, name) for name, value in gpt2.items() if getattr(config, name) != value}
    if wrong:
        raise ValueError(f"This ScratchGPT cannot be written as GPT2LMHeadModel: it needs {gpt2}, but has {wrong}; export it --to llama or qwen3.")


# ----------------------------------------------------------------------------------------------
# `scratch-gpt export MODEL_DIR OUT_DIR --to gpt2|llama|qwen3`: a folder of the native class, which
# anything serving GPT-2, Llama or Qwen3 runs without remote code. `export-gpt2` is `--to gpt2`.
# ----------------------------------------------------------------------------------------------
EXPORT_TARGETS = ("gpt2", "llama", "qwen3")


def export_model(model_dir: str | Path, out_dir: str | Path, to: str) -> Path:
    """Write the ScratchGPT causal LM `model_dir` as a native `to` folder `out_dir`, tokenizer included."""
    if to not in EXPORT_TARGETS:
        raise ValueError(f"Cannot export to {to!r}; choose one of {', '.join(EXPORT_TARGETS)}.")
    if to == "gpt2":
        return export_gpt2(model_dir, out_dir)
    if Path(model_dir).is_dir() and not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in {str(model_dir)!r}; pass a folder written by save_pretrained.")
    native = to_llama(ScratchGPTForCausalLM.from_pretrained(model_dir), to)
    tokenizer = None
    with contextlib.suppress(OSError, ValueError):  # a model folder without a tokenizer exports without one
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with atomic_directory(out_dir) as tmp:
        native.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def export_any_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scratch-gpt export",
        description="Write a ScratchGPT model folder as a native GPT-2, Llama or Qwen3 folder (loads without trust_remote_code).",
    )
    parser.add_argument("model_dir", help="a ScratchGPT causal LM folder (save_pretrained) or a checkpoint it converts")
    parser.add_argument("out_dir", help="where to write the folder (replaced atomically)")
    parser.add_argument("--to", required=True, choices=EXPORT_TARGETS, help="the transformers class to write")
    args = parser.parse_args(argv)
    try:
        out = export_model(args.model_dir, args.out_dir, args.to)
    except (OSError, ValueError) as error:
        print(f"scratch-gpt export: {error}", file=sys.stderr)
        return 2
    print(f"Wrote a {args.to} folder to {out}")
    return 0
