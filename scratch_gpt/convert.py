"""GPT-2 checkpoints in and out (stage 6).

In:  `ScratchGPTForCausalLM.from_gpt2("openai-community/gpt2")` (lives in the modeling file).
Out: `export_gpt2(model_dir, out_dir)` / `scratch-gpt export-gpt2 MODEL_DIR OUT_DIR` writes a plain
`GPT2LMHeadModel` folder that every GPT-2 tool loads without `trust_remote_code`.
"""

import argparse
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from .io_utils import atomic_directory
from .modeling_scratch_gpt import GPT2_CONV1D_WEIGHTS, ScratchGPTForCausalLM, gpt2_name

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def to_gpt2(model: ScratchGPTForCausalLM) -> GPT2LMHeadModel:
    """The same network under GPT-2's names and layout."""
    config = model.config
    gpt2_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=config.intermediate_size,
        activation_function=config.hidden_act,
        resid_pdrop=config.resid_pdrop,
        embd_pdrop=config.embd_pdrop,
        attn_pdrop=config.attn_pdrop,
        layer_norm_epsilon=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    gpt2 = GPT2LMHeadModel(gpt2_config).to(model.dtype)
    ours = model.state_dict()
    state = {}
    for name, tensor in ours.items():
        theirs = gpt2_name(name)
        state[theirs] = tensor.t().contiguous() if theirs.endswith(GPT2_CONV1D_WEIGHTS) else tensor
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
