"""Checkpoints in and out (stage 6): GPT-2 and the book's model.pth; Llama and Qwen3 fit the same hook.

In:  importing this module registers `convert_gpt2` (and `convert_llama`) with the modeling file, so
     `ScratchGPTForCausalLM.from_pretrained("openai-community/gpt2")` (or a GPT-2 folder) converts on
     the way in, as does `ScratchGPTForSequenceClassification.from_pretrained(...)`, and every command
     that takes a model. A converter is `convert(source, **download_kwargs) -> (ScratchGPTConfig,
     state_dict)`, the state dict under our names; `register_converter(model_type, convert)` adds one.
     `import_book_checkpoint(path, out_dir, num_heads=12)` / `scratch-gpt import-book model.pth OUT_DIR
     --num-heads 12` turns the book's `GPTModel` state dict into a ScratchGPT folder.
Out: `export_gpt2(model_dir, out_dir)` / `scratch-gpt export-gpt2 MODEL_DIR OUT_DIR` writes a plain
     `GPT2LMHeadModel` folder that every GPT-2 tool loads without `trust_remote_code`; `export_model`
     / `scratch-gpt export --to gpt2|llama|qwen2|qwen3|gguf` any native family, or (gguf) one file for
     llama.cpp, Ollama and LM Studio, written by `scratch_gpt.gguf_export`.
"""

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from .args import ExportOptions, ImportBookOptions
from .configuration_scratch_gpt import ScratchGPTConfig
from .errors import BadInput, MissingFile
from .io_utils import atomic_directory, check_free_space, check_model_folder, check_output
from .modeling_scratch_gpt import ScratchGPTForCausalLM, register_converter

# --- GPT-2: the same network under other names; GPT-2's Conv1D stores Linear weights transposed. ---
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


def renamed(name: str, names: dict[str, str], *, to_ours: bool = False) -> str:
    """`name` with each of our name parts in `names` replaced by theirs (or, `to_ours`, back)."""
    for ours, theirs in names.items():
        name = name.replace(theirs, ours) if to_ours else name.replace(ours, theirs)
    return name


def gpt2_name(name: str) -> str:
    """`model.layers.3.attn.qkv_proj.weight` -> `transformer.h.3.attn.c_attn.weight`."""
    return renamed(name, GPT2_NAMES)


def name_from_gpt2(name: str) -> str:
    """`transformer.h.3.attn.c_attn.weight` -> `model.layers.3.attn.qkv_proj.weight`."""
    return renamed(name, GPT2_NAMES, to_ours=True)


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
        gpt2_config = GPT2Config.from_pretrained(source, **download_kwargs)
        architectures = gpt2_config.architectures or ["GPT2LMHeadModel"]
        if "GPT2LMHeadModel" not in architectures:
            raise BadInput(
                f"{str(source)!r} holds a {architectures[0]}; the GPT-2 checkpoints read are GPT2LMHeadModel "
                "ones (such as openai-community/gpt2, -medium, -large, -xl) and ScratchGPT folders."
            )
        source = GPT2LMHeadModel.from_pretrained(source, config=gpt2_config, **download_kwargs)
    state = {name_from_gpt2(name): conv1d_layout(name, tensor) for name, tensor in source.state_dict().items()}
    return config_from_gpt2(source.config), state


register_converter("gpt2", convert_gpt2)


class NeedsTrustRemoteCode(BadInput):
    """A folder that ships code of its own, loaded without `--trust-remote-code`."""


@contextlib.contextmanager
def transformers_verbosity(level: int):
    """transformers' logging at `level` inside the block (e.g. `logging.ERROR` around a load whose report we replace)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity(level)
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def load_pretrained(load, source, *args, trust_remote_code: bool = False, **kwargs):
    """`load(source, ...)` (a `from_pretrained`), with one sentence of ours instead of a library's
    error when `source` cannot be read: a damaged file in a local folder (checked first, see
    `io_utils.check_model_folder`), code of its own that it would run (only with `trust_remote_code`,
    always passed explicitly so that transformers never asks on stdin), weights that do not fit the
    config, or neither a local folder nor a Hub id that can be downloaded or found in the cache."""
    named = source
    if Path(source).is_dir():
        check_model_folder(source)
        if getattr(load, "__self__", None) is not AutoTokenizer:  # an adapter folder holds its tokenizer itself
            source = full_model_folder(source, trust_remote_code=trust_remote_code)
    try:
        loaded = load(source, *args, trust_remote_code=trust_remote_code, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) with output_loading_info
        # Read from a merged copy: named as the user named it.
        if source is not named and hasattr(model, "name_or_path"):
            model.name_or_path = str(named)
            if hasattr(model, "config"):
                model.config.name_or_path = str(named)
        return loaded
    except ValueError as error:
        if trust_remote_code or "trust_remote_code=True" not in str(error):
            raise
        raise NeedsTrustRemoteCode(
            f"{str(source)!r} ships Python code of its own (an auto_map in its config.json or tokenizer_config.json), "
            "which scratch-gpt runs only if you pass --trust-remote-code; pass it if you trust that folder."
        ) from None
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):  # transformers: a tensor's shape differs from the config's
            raise
        raise BadInput(
            f"The weights in {str(source)!r} do not fit its config.json: a tensor's shape differs from the one the "
            "config describes (vocab_size, hidden_size, ...); use the config.json saved with these weights."
        ) from None
    except OSError as error:  # transformers: a file it needs is not there (a MissingFile, so callers can say more)
        if Path(source).exists():
            raise MissingFile(f"Cannot load {str(source)!r}: {' '.join(str(error).split())}") from None
        raise MissingFile(
            f"{str(source)!r} is neither a local folder nor a Hub id that could be downloaded or found in the "
            "cache; check the path (or the name, and the network)."
        ) from None


_MERGED: dict[Path, Path] = {}  # adapter folder -> its merged model, made once per process
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def full_model_folder(folder: str | os.PathLike, trust_remote_code: bool = False) -> str | os.PathLike:
    """A LoRA adapter folder (what `--lora` writes without `--save-merged`) as a full model folder:
    its base model with the adapters merged in, and the adapter folder's tokenizer, in a temporary
    folder made once per process. Any other folder is returned as it is. So every command that
    takes a model reads what the others write: full, merged and adapter folders."""
    adapter = Path(folder) / "adapter_config.json"
    if not adapter.is_file():
        return folder
    if Path(folder).resolve() not in _MERGED:
        from peft import PeftConfig, PeftModel

        settings = PeftConfig.from_pretrained(folder)
        if settings.task_type != "CAUSAL_LM":
            raise BadInput(
                f"{str(folder)!r} holds {settings.task_type} adapters, not a language model's; pass a causal LM folder "
                "(or the folder of a run with --save-merged)."
            )
        base_dir = settings.base_model_name_or_path
        try:
            base = load_pretrained(ScratchGPTForCausalLM.from_pretrained, base_dir, trust_remote_code=trust_remote_code)
        except MissingFile:
            if Path(base_dir).exists():  # there, but not readable: that sentence says why
                raise
            raise MissingFile(
                f"{str(folder)!r} holds LoRA adapters without their base model {base_dir!r} (adapter_config.json's "
                "base_model_name_or_path), which is neither a local folder nor a Hub id found in the cache; put the "
                "base model back there, or use the folder of a run with --save-merged."
            ) from None
        merged = PeftModel.from_pretrained(base, folder).merge_and_unload()
        target = Path(tempfile.mkdtemp(prefix="scratch_gpt-merged-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
        merged.save_pretrained(target)
        for name in (*TOKENIZER_FILES, "generation_config.json"):
            if (Path(folder) / name).is_file():
                shutil.copy(Path(folder) / name, target / name)
        _MERGED[Path(folder).resolve()] = target
    return _MERGED[Path(folder).resolve()]


def load_config(source: str | os.PathLike, **download_kwargs) -> ScratchGPTConfig:
    """The ScratchGPT config of a checkpoint (a ScratchGPT, GPT-2, Llama or Qwen folder or Hub id),
    without its weights: what a command checks its tokenizer and data against before loading the model."""
    from transformers import CONFIG_MAPPING

    config_dict, _ = load_pretrained(ScratchGPTConfig.get_config_dict, source, **download_kwargs)  # runs no code
    model_type = config_dict.get("model_type")
    if model_type == ScratchGPTConfig.model_type:
        return ScratchGPTConfig.from_dict(config_dict)
    readers = {"gpt2": config_from_gpt2, **dict.fromkeys(LLAMA_FAMILY, config_from_llama)}
    if model_type not in readers:
        raise BadInput(
            f"{str(source)!r} holds a checkpoint of model type {model_type!r}; it reads scratch_gpt, "
            f"{', '.join(readers)} (e.g. openai-community/gpt2, HuggingFaceTB/SmolLM2-135M, Qwen/Qwen3-0.6B)."
        )
    return readers[model_type](CONFIG_MAPPING[model_type].from_dict(config_dict))


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


# --- The book's GPTModel, saved with `torch.save(model.state_dict(), "model.pth")` (or chapter 5's
# `{"model_state_dict": ..., "optimizer_state_dict": ...}`): the same network under other names,
# with three query/key/value projections where ScratchGPT has one. Its LayerNorm (scale, shift,
# eps 1e-5) is nn.LayerNorm, its GELU the tanh approximation ("gelu_new").
BOOK_NAMES = {  # ScratchGPT name -> the book's name
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.embed_positions.weight": "pos_emb.weight",
    "model.norm.weight": "final_norm.scale",
    "model.norm.bias": "final_norm.shift",
    "lm_head.weight": "out_head.weight",
}
BOOK_BLOCK_NAMES = {  # within block i: model.layers.{i}.<ours> <- trf_blocks.{i}.<theirs>
    "ln_1.weight": "norm1.scale",
    "ln_1.bias": "norm1.shift",
    "attn.out_proj.weight": "att.out_proj.weight",
    "attn.out_proj.bias": "att.out_proj.bias",
    "ln_2.weight": "norm2.scale",
    "ln_2.bias": "norm2.shift",
    "mlp.fc_in.weight": "ff.layers.0.weight",
    "mlp.fc_in.bias": "ff.layers.0.bias",
    "mlp.fc_out.weight": "ff.layers.2.weight",
    "mlp.fc_out.bias": "ff.layers.2.bias",
}
BOOK_QKV = ("att.W_query", "att.W_key", "att.W_value")  # stacked, in this order, into attn.qkv_proj


def read_book_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a book checkpoint, read with `weights_only=True` (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"The checkpoint {str(path)!r} does not exist; pass the .pth file torch.save wrote.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch.save file, or a pickled object that weights_only refuses to rebuild
        raise BadInput(
            f"{str(path)!r} is not a state dict that torch.load reads with weights_only=True; save the book's "
            "model with torch.save(model.state_dict(), path) (a whole pickled model is not loaded, for safety)."
        ) from None
    if isinstance(state, dict) and "model_state_dict" in state:  # chapter 5: model and optimizer together
        state = state["model_state_dict"]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise BadInput(
            f"{str(path)!r} holds a {type(state).__name__} that is not a state dict of tensors; save the book's "
            "model with torch.save(model.state_dict(), path)."
        )
    return state


def book_names(num_layers: int, qkv_bias: bool) -> list[str]:
    """Every key a book state dict of this shape holds (its attention masks aside)."""
    blocks = [f"{qkv}.{kind}" for qkv in BOOK_QKV for kind in (("weight", "bias") if qkv_bias else ("weight",))]
    blocks += list(BOOK_BLOCK_NAMES.values())
    return list(BOOK_NAMES.values()) + [f"trf_blocks.{i}.{name}" for i in range(num_layers) for name in blocks]


def convert_book(state: dict[str, torch.Tensor], num_heads: int) -> tuple[ScratchGPTConfig, dict[str, torch.Tensor]]:
    """A book `GPTModel` state dict as a ScratchGPT config and state dict; all sizes but the heads' are read."""
    state = {name: tensor for name, tensor in state.items() if not name.endswith(".att.mask")}  # a causal-mask buffer
    blocks = [name.split(".")[1] for name in state if name.startswith("trf_blocks.")]
    num_layers = max((int(block) for block in blocks if block.isdigit()), default=-1) + 1
    qkv_bias = "trf_blocks.0.att.W_query.bias" in state
    expected = book_names(num_layers, qkv_bias)
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in set(expected)]
    if missing or unexpected or not num_layers:
        found = [f"missing keys {missing[:3]}"] if missing else []
        found += [f"unexpected keys {unexpected[:3]}"] if unexpected else []
        raise BadInput(
            f"This is not a state dict of the book's GPTModel ({', '.join(found) or 'no trf_blocks'}, "
            f"{len(missing)} missing and {len(unexpected)} unexpected in all); pass model.state_dict() of a GPTModel."
        )
    vocab_size, hidden_size = state["tok_emb.weight"].shape
    end_of_text = 50256 if vocab_size > 50256 else None  # GPT-2's, whose tokenizer the book uses (else unknown)
    config = ScratchGPTConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        max_position_embeddings=state["pos_emb.weight"].shape[0],
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=state["trf_blocks.0.ff.layers.0.weight"].shape[0],
        qkv_bias=qkv_bias,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
        tie_word_embeddings=torch.equal(state["out_head.weight"], state["tok_emb.weight"]),
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
    )
    ours = {name: state[theirs] for name, theirs in BOOK_NAMES.items()}
    for i in range(num_layers):
        for name, theirs in BOOK_BLOCK_NAMES.items():
            ours[f"model.layers.{i}.{name}"] = state[f"trf_blocks.{i}.{theirs}"]
        for kind in ("weight", "bias") if qkv_bias else ("weight",):
            stacked = [state[f"trf_blocks.{i}.{qkv}.{kind}"] for qkv in BOOK_QKV]
            ours[f"model.layers.{i}.attn.qkv_proj.{kind}"] = torch.cat(stacked)
    return config, ours


def book_heads(num_heads: int | None, config: dict | None) -> int:
    """The number of attention heads, which a state dict does not store: `--num-heads` or the config's n_heads."""
    given = (config or {}).get("n_heads")
    heads = num_heads or given
    if num_heads and given not in (None, num_heads):
        raise BadInput(f"--num-heads {num_heads} disagrees with n_heads {given} of the book's config; pass one.")
    if not isinstance(heads, int) or heads < 1:
        raise BadInput(
            "A state dict does not store the number of attention heads; pass --num-heads (12 for GPT-2 124M, "
            "16 medium, 20 large, 25 XL) or the book's config with n_heads."
        )
    return heads


def import_book_checkpoint(
    path: str | Path,
    out_dir: str | Path,
    *,
    num_heads: int | None = None,
    config: dict | None = None,
    tokenizer=None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Write the book's `GPTModel` checkpoint `path` (model.pth, or chapter 5's model_and_optimizer.pth)
    as a ScratchGPT folder `out_dir` that `from_pretrained` loads and `push_to_hub` publishes.

    The number of heads is `num_heads` or the `n_heads` of the book's `config` dict (e.g. GPT_CONFIG_124M);
    everything else is read from the weights. `tokenizer` (a folder, Hub id or tokenizer; the book uses
    GPT-2's) is completed (pad token, chat template) and saved with the model.
    """
    from .tokenizer import check_fits, complete_tokenizer, save_tokenizer

    named = [tokenizer] if isinstance(tokenizer, (str, os.PathLike)) else []
    check_output(out_dir, inputs=[path, *named], overwrite=overwrite, flag="OUT_DIR")
    heads = book_heads(num_heads, config)
    if isinstance(tokenizer, (str, os.PathLike)):  # read first: a tokenizer it cannot use stops it before any work
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, tokenizer, trust_remote_code=trust_remote_code)
    model_config, state = convert_book(read_book_state_dict(path), heads)
    if tokenizer is not None:
        complete_tokenizer(tokenizer)
        check_fits(tokenizer, model_config, f"the checkpoint {str(path)!r}")
        tokenizer.model_max_length = model_config.max_position_embeddings
        model_config.bos_token_id, model_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        model_config.pad_token_id = tokenizer.pad_token_id
    model = ScratchGPTForCausalLM(model_config)
    try:
        model.load_state_dict(state)  # strict: every weight is set (a tied head is set twice, to equal values)
    except RuntimeError as error:  # a tensor whose shape disagrees with the sizes read from the others
        reason = str(error).splitlines()[-1].strip()
        raise BadInput(f"The tensors of {str(path)!r} do not fit one GPTModel ({reason}); check the checkpoint.") from None
    ids = {name: getattr(model_config, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    model.generation_config.update(**ids)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)  # config, weights, generation config and the remote code
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
    return Path(out_dir)


# --- Llama (SmolLM2, Llama 3.x), Qwen2 and Qwen3: the Llama-switched ScratchGPT under other names. The
# names agree except the norms and attention's; ScratchGPT fuses q_proj, k_proj, v_proj into qkv_proj.
LLAMA_NAMES = {  # ScratchGPT name part -> LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM name part
    ".ln_1.": ".input_layernorm.",
    ".ln_2.": ".post_attention_layernorm.",
    ".attn.out_proj.": ".self_attn.o_proj.",
    ".attn.q_norm.": ".self_attn.q_norm.",
    ".attn.k_norm.": ".self_attn.k_norm.",
}
# The same names in ScratchGPTConfig and in the Llama / Qwen configs.
LLAMA_CONFIG_NAMES = (
    "vocab_size hidden_size num_hidden_layers num_attention_heads num_key_value_heads head_dim intermediate_size "
    "max_position_embeddings hidden_act rms_norm_eps initializer_range tie_word_embeddings rope_parameters "
    "bos_token_id eos_token_id pad_token_id"
).split()
# The switches of every Llama / Qwen family.
LLAMA_SHAPE = dict(position_embedding_type="rope", norm_type="rmsnorm", mlp_type="swiglu")
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
    sliding = getattr(hf_config, "use_sliding_window", False) or layer_types != {"full_attention"}
    experts = getattr(hf_config, "num_experts", 0) or getattr(hf_config, "num_local_experts", 0)
    activations = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
    checks = [
        (sliding, "sliding-window attention"),
        (experts, "mixture-of-experts layers"),
        (rope.get("rope_type", "default") not in ("default", "llama3"), f"the RoPE type {rope.get('rope_type')!r}"),
        (rope.get("partial_rotary_factor", 1.0) != 1.0, "partial rotary embeddings"),
        (getattr(hf_config, "attn_logit_softcapping", None), "attention logit softcapping"),
        (getattr(hf_config, "final_logit_softcapping", None), "final logit softcapping"),
        ((getattr(hf_config, "pretraining_tp", 1) or 1) > 1, "pretraining_tp > 1"),
        (hf_config.hidden_act not in activations, f"the activation {hf_config.hidden_act!r}"),
    ]
    return next((feature for present, feature in checks if present), None)


def config_from_llama(hf_config) -> ScratchGPTConfig:
    """A Llama, Qwen2 or Qwen3 config as ScratchGPT switches; refuses what they do not cover."""
    model_type = hf_config.model_type
    feature = unsupported_feature(hf_config)
    if feature is not None:
        raise BadInput(f"ScratchGPT cannot load this {model_type} checkpoint: it uses {feature}, which ScratchGPT does not implement.")
    values = {name: getattr(hf_config, name, None) for name in LLAMA_CONFIG_NAMES}  # Qwen2 has no head_dim: None
    bias = bool(getattr(hf_config, "attention_bias", False))  # Llama / Qwen3: on q, k, v and o together
    switches = dict(qkv_bias=bias, attention_bias=bias, mlp_bias=bool(getattr(hf_config, "mlp_bias", False)))
    switches.update(LLAMA_FAMILY[model_type][1])
    dropout = float(getattr(hf_config, "attention_dropout", 0.0) or 0.0)
    return ScratchGPTConfig(**LLAMA_SHAPE, attn_pdrop=dropout, **switches, **values)


def convert_llama(source, **download_kwargs):
    """A Llama, Qwen2 or Qwen3 causal-LM checkpoint (Hub id, folder, or a loaded model) as a ScratchGPT
    config and state dict: the converter `from_pretrained` uses for those `model_type`s."""
    from transformers import AutoConfig

    options = dict(trust_remote_code=False, **download_kwargs)  # no code of the folder's runs
    if isinstance(source, PreTrainedModel):
        hf_config, model = source.config, source
    else:
        hf_config = AutoConfig.from_pretrained(source, **options)
    config = config_from_llama(hf_config)  # refuses before any weight is read
    if not isinstance(source, PreTrainedModel):
        model = AutoModelForCausalLM.from_pretrained(source, config=hf_config, **options)
    state = {}
    for name, tensor in model.state_dict().items():
        ours = renamed(name, LLAMA_NAMES, to_ours=True)
        if ".self_attn.q_proj." in name:  # q, k, v -> one fused qkv_proj (weights and biases alike)
            k, v = (model.state_dict()[name.replace("q_proj", other)] for other in ("k_proj", "v_proj"))
            state[ours.replace(".self_attn.q_proj.", ".attn.qkv_proj.")] = torch.cat([tensor, k, v])
        elif ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
            state[ours] = tensor
    return config, state


for _model_type in LLAMA_FAMILY:
    register_converter(_model_type, convert_llama)


def to_llama(model: ScratchGPTForCausalLM, model_type: str = "llama") -> PreTrainedModel:
    """The same network as a native `LlamaForCausalLM` ("llama"), `Qwen2ForCausalLM` ("qwen2") or `Qwen3ForCausalLM` ("qwen3")."""
    import transformers

    config = model.config
    class_name, fixed = LLAMA_FAMILY[model_type]
    needed = {**LLAMA_SHAPE, **fixed}
    needed.setdefault("qkv_bias", config.attention_bias)  # one bias switch for q, k, v and o in these classes
    if model_type == "qwen2":  # Qwen2's heads are hidden_size / num_attention_heads wide
        needed["head_dim"] = config.hidden_size // config.num_attention_heads
    wrong = {name: getattr(config, name) for name, value in needed.items() if getattr(config, name) != value}
    if wrong:
        raise BadInput(
            f"This ScratchGPT cannot be written as {class_name}: it needs {needed}, but has {wrong}; "
            "export it --to the family it was built as (GPT-2-shaped: gpt2; RoPE, RMSNorm and SwiGLU with a bias on "
            "q, k and v only: qwen2; with qk-norm: qwen3)."
        )
    config_class = getattr(transformers, class_name.replace("ForCausalLM", "Config"))
    values = {name: getattr(config, name) for name in LLAMA_CONFIG_NAMES}
    values.update(attention_bias=config.attention_bias, attention_dropout=config.attn_pdrop)
    if model_type == "llama":
        values["mlp_bias"] = config.mlp_bias
    if model_type == "qwen2":  # fixed by the class, not in its config: the head size, the bias on q, k, v only
        del values["head_dim"], values["attention_bias"]
    native = getattr(transformers, class_name)(config_class(**values)).to(model.dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        if ".attn.qkv_proj." in name:
            sizes = model.model.layers[0].attn.sizes
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split(sizes)):
                state[name.replace(".attn.qkv_proj.", f".self_attn.{part}.")] = piece.contiguous()
        else:
            state[renamed(name, LLAMA_NAMES)] = tensor
    native.load_state_dict(state, strict=True)
    native.generation_config = model.generation_config
    return native.eval()


def check_gpt2_shape(config: ScratchGPTConfig) -> None:
    """Refuse, in one sentence, a ScratchGPT whose switches GPT2LMHeadModel cannot express."""
    gpt2 = dict(position_embedding_type="learned", norm_type="layernorm", mlp_type="gelu", qk_norm=False)
    gpt2.update(attention_bias=True, mlp_bias=True, num_key_value_heads=config.num_attention_heads)
    gpt2["head_dim"] = config.hidden_size // config.num_attention_heads
    wrong = {name: getattr(config, name) for name, value in gpt2.items() if getattr(config, name) != value}
    if wrong:
        raise BadInput(f"This ScratchGPT cannot be written as GPT2LMHeadModel: it needs {gpt2}, but has {wrong}; export it --to llama or qwen3.")


# --- `scratch-gpt export MODEL_DIR OUT_DIR --to gpt2|llama|qwen2|qwen3`: a folder of the native class, which
# anything serving GPT-2, Llama, Qwen2 or Qwen3 runs without remote code. `export-gpt2` is `--to gpt2`.
NATIVE_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    to="gpt2",
    *,
    outtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Write the causal LM `model_dir` (a ScratchGPT folder or Hub id, a checkpoint it converts, or a LoRA
    adapter folder, merged into its base) as a folder of the native transformers class `to`, `out_dir`, its
    tokenizer included; or, `to="gguf"`, as `out_dir/model.gguf` for llama.cpp with an Ollama Modelfile
    beside it, its weights in `outtype` (f32, f16 or q8_0; default f16; see `scratch_gpt.gguf_export`).

    The model loads through the registered ScratchGPT class; code shipped in the folder runs only
    with `trust_remote_code=True`. `out_dir` is checked first (see `io_utils.check_output`).
    """
    ExportOptions(to=to, outtype=outtype)  # the declared checks: `to` is one of EXPORT_TARGETS, --outtype of GGUF_TYPES (gguf only)
    if to == "gguf":
        from .gguf_export import import_gguf

        import_gguf()  # a missing extra is named before any work
    out_dir = Path(out_dir)
    check_output(out_dir, inputs=[model_dir], overwrite=overwrite, what="output folder", flag="OUT_DIR")
    if Path(model_dir).is_dir():
        check_model_folder(model_dir)
        adapters = (Path(model_dir) / "adapter_config.json").is_file()  # merged into their base by load_pretrained
        if not adapters and not (Path(model_dir) / "config.json").is_file():
            raise MissingFile(f"No config.json in {str(model_dir)!r}; pass a folder written by save_pretrained.")
        if not any(Path(model_dir).glob("*.safetensors")):
            raise MissingFile(f"No *.safetensors weights in {str(model_dir)!r}; pass a folder written by save_pretrained.")
    model_class = AutoModelForCausalLM if trust_remote_code else ScratchGPTForCausalLM  # ours: no folder code runs
    model = load_pretrained(model_class.from_pretrained, model_dir, trust_remote_code=trust_remote_code)
    architectures = model.config.architectures or ["ScratchGPTForCausalLM"]
    if "ScratchGPTForCausalLM" not in architectures:
        raise BadInput(f"{str(model_dir)!r} holds a {architectures[0]}, not a causal LM; export a causal LM folder.")
    native = None if to == "gguf" else to_gpt2(model) if to == "gpt2" else to_llama(model, to)
    tokenizer = None
    try:
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model_dir, trust_remote_code=trust_remote_code)
    except NeedsTrustRemoteCode:
        raise
    except (OSError, ValueError):  # a model folder without a tokenizer exports without one (not to GGUF)
        pass
    if native is None:
        return export_to_gguf(model, tokenizer, model_dir, out_dir, outtype or "f16")
    check_free_space(out_dir, sum(p.numel() * p.element_size() for p in native.parameters()), "output folder")
    with atomic_directory(out_dir) as tmp:
        native.save_pretrained(tmp)
        add_older_names(tmp / "config.json")
        if tokenizer is not None:
            from .tokenizer import save_tokenizer

            save_tokenizer(tokenizer, tmp)
    return out_dir


def export_to_gguf(model, tokenizer, model_dir, out_dir: Path, outtype: str) -> Path:
    """`export_model(..., to="gguf")` once the model is loaded: the tokenizer is part of the file (completed
    as `chat` completes it: a pad token, the Alpaca chat template where it has none)."""
    from .gguf_export import export_gguf
    from .tokenizer import check_fits, complete_tokenizer

    if tokenizer is None:
        raise MissingFile(
            f"{str(model_dir)!r} has no tokenizer, which a GGUF file carries (vocabulary, merges, special tokens); "
            "save the model's tokenizer into that folder and export again."
        )
    complete_tokenizer(tokenizer)
    check_fits(tokenizer, model.config, f"the model {str(model_dir)!r}")
    export_gguf(model.eval(), tokenizer, out_dir, outtype)
    return out_dir


def add_older_names(config_file: Path) -> None:
    """Write into a native config.json, beside transformers 5's names, the keys older readers look for
    (transformers 4.x, llama.cpp's converter, optimum): GPT-2's context as `n_ctx`, and the RoPE base
    `rope_theta` (and a scaled RoPE as `rope_scaling`) at the top level, where transformers 4.x reads it,
    not only in `rope_parameters` (without it, 4.x silently uses a base of 10,000)."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "n_positions" in config:
        config.setdefault("n_ctx", config["n_positions"])
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    if rope.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", rope)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_gpt2(model_dir: str | Path, out_dir: str | Path, **options) -> Path:
    """`export_model(model_dir, out_dir, "gpt2")`: a plain GPT2LMHeadModel folder."""
    return export_model(model_dir, out_dir, "gpt2", **options)


def export_command(args: ExportOptions) -> None:
    """`scratch-gpt export MODEL_DIR OUT_DIR --to gpt2|llama|qwen2|qwen3|gguf [--outtype f32|f16|q8_0]`
    (`export-gpt2` is `--to gpt2`)."""
    out = export_model(
        args.model_dir, args.out_dir, args.to, outtype=args.outtype, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code
    )
    if args.to != "gguf":
        print(f"Wrote a {NATIVE_CLASSES[args.to]} folder to {out}")
        return
    from .gguf_export import FILE_NAME, describe

    print(f"Wrote {out / FILE_NAME} ({describe(out / FILE_NAME)}) and {out / 'Modelfile'}")
    if "TEMPLATE" not in (out / "Modelfile").read_text(encoding="utf-8"):
        print("The chat template is not made of plain turns, so the Modelfile has no TEMPLATE: Ollama reads the one in the GGUF file.")


def read_book_config(path: str | None) -> dict | None:
    """`--config-json`: the book's GPT_CONFIG dict, saved as one JSON object."""
    if path is None:
        return None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BadInput(f"{path!r} is not valid JSON ({error}); fix the file.") from None
    if not isinstance(config, dict):
        raise BadInput(f"{path!r} must hold the book's config as one JSON object.")
    return config


def import_book_command(args: ImportBookOptions) -> None:
    """`scratch-gpt import-book CHECKPOINT OUT_DIR [--num-heads N | --config-json FILE]`"""
    out = import_book_checkpoint(
        args.checkpoint, args.out_dir, num_heads=args.num_heads, config=read_book_config(args.config_json),
        tokenizer=args.tokenizer, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code,
    )  # fmt: skip
    print(f"Wrote the ScratchGPT model to {out}")
