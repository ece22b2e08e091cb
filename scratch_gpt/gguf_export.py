"""`scratch-gpt export MODEL OUT --to gguf [--outtype f32|f16|q8_0]`: one file for llama.cpp, Ollama and LM Studio.

OUT is a folder with two files:

- `model.gguf`, written with `gguf` (llama.cpp's own writer): the weights under llama.cpp's tensor names,
  the shape (context length, widths, heads, norms' epsilon, RoPE base and scaling), the tokenizer
  (vocabulary, merges, the pre-tokenizer's name, special tokens) and the chat template;
- `Modelfile`, for `ollama create NAME -f Modelfile`: the chat template in Ollama's Go-template syntax,
  the stop strings and the context length.

A GPT-2-shaped ScratchGPT becomes llama.cpp's `gpt2`, a Llama-shaped one `llama`, `qwen2` or `qwen3`
(whichever runs it exactly, see `gguf_architecture`). What llama.cpp cannot run exactly (a shape that
mixes the two families, another activation, a tokenizer whose pre-tokenizer it does not know) is
refused in one sentence, never written approximately. The layouts follow llama.cpp's
convert_hf_to_gguf.py: 1-D tensors and the position table stay f32, the rest is stored as --outtype;
the Llama family's queries and keys are permuted from transformers' rotate-half order to the
adjacent pairs that llama.cpp's `llama` rotates (its `qwen2`/`qwen3` rotate halves, as we do).
"""

import json
from pathlib import Path

import numpy as np
import torch

from .errors import BadInput
from .io_utils import atomic_directory, check_free_space

INSTALL_HINT = "pip install 'scratch_gpt[gguf]'"
FILE_NAME = "model.gguf"


def import_gguf():
    """The `gguf` package; one sentence with the pip command when the extra is not installed."""
    try:
        import gguf
    except ImportError:
        raise BadInput(f"--to gguf needs the gguf package (llama.cpp's writer), which is not installed; run {INSTALL_HINT}.") from None
    return gguf


# --- which llama.cpp architecture runs the model ----------------------------------------------------


def gguf_architecture(config) -> str:
    """The llama.cpp architecture that computes exactly what this ScratchGPT computes, or BadInput.

    gpt2: learned positions, LayerNorm, a GELU MLP (llama.cpp's GELU is the tanh approximation, GPT-2's
    "gelu_new"). A missing bias is written as zeros, the same function. The Llama family (RoPE, RMSNorm,
    SwiGLU with SiLU): qwen3 when queries and keys are normed (it has no bias on the attention output or
    the MLP, and no Llama 3 RoPE scaling); qwen2 for Qwen2's exact shape (a bias on q, k and v only);
    llama for the rest (any bias, Llama 3 scaling).
    """
    shape = (config.position_embedding_type, config.norm_type, config.mlp_type)
    heads_width = config.num_attention_heads * config.head_dim
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if shape == ("learned", "layernorm", "gelu"):
        problems = [
            (config.hidden_act not in ("gelu_new", "gelu_pytorch_tanh"),
             f"the activation {config.hidden_act!r} (llama.cpp's gpt2 computes GELU's tanh approximation, 'gelu_new')"),
            (config.qk_norm, "a norm on queries and keys"),
            (config.num_key_value_heads != config.num_attention_heads, "fewer key/value heads than query heads"),
            (heads_width != config.hidden_size, f"heads {config.head_dim} wide that do not fill hidden_size {config.hidden_size}"),
        ]  # fmt: skip
        refuse_if(problems, "gpt2")
        return "gpt2"
    if shape == ("rope", "rmsnorm", "swiglu"):
        refuse_if([(config.hidden_act != "silu", f"the activation {config.hidden_act!r} in SwiGLU (llama.cpp uses SiLU)")], "llama")
        if config.qk_norm:
            problems = [
                (config.attention_bias, "a bias on the attention output"),
                (config.mlp_bias, "biases in the MLP"),
                (rope_type != "default", f"the RoPE type {rope_type!r}"),
            ]
            refuse_if(problems, "qwen3")
            return "qwen3"
        qwen2 = config.qkv_bias and not config.attention_bias and not config.mlp_bias and rope_type == "default"
        return "qwen2" if qwen2 and heads_width == config.hidden_size else "llama"
    raise BadInput(
        f"llama.cpp runs GPT-2-shaped models (learned positions, LayerNorm, GELU MLP) and Llama-shaped ones (RoPE, "
        f"RMSNorm, SwiGLU), but this one mixes them (position_embedding_type={shape[0]!r}, norm_type={shape[1]!r}, "
        f"mlp_type={shape[2]!r}), which no llama.cpp architecture computes; it runs as a ScratchGPT folder (scratch-gpt, "
        "or transformers with trust_remote_code)."
    )


def refuse_if(problems: list[tuple[bool, str]], architecture: str) -> None:
    found = [what for present, what in problems if present]
    if found:
        raise BadInput(
            f"llama.cpp's {architecture} architecture cannot run this model exactly: it has {' and '.join(found)}; "
            "for transformers-based tools, export a folder with --to gpt2, llama, qwen2 or qwen3 instead."
        )


# --- the weights under llama.cpp's names ------------------------------------------------------------

TOP_NAMES = {  # ScratchGPT name (less .weight/.bias) -> GGUF name
    "model.embed_tokens": "token_embd",
    "model.embed_positions": "position_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}
BLOCK_NAMES = {  # within model.layers.{i} -> within blk.{i}
    "ln_1": "attn_norm",
    "ln_2": "ffn_norm",
    "attn.qkv_proj": "attn_qkv",  # split into attn_q, attn_k, attn_v for the Llama family
    "attn.out_proj": "attn_output",
    "attn.q_norm": "attn_q_norm",
    "attn.k_norm": "attn_k_norm",
    "mlp.fc_in": "ffn_up",
    "mlp.fc_out": "ffn_down",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(name: str) -> str:
    """`model.layers.3.mlp.fc_in.bias` -> `blk.3.ffn_up.bias`."""
    stem, kind = name.rsplit(".", 1)
    if stem.startswith("model.layers."):
        block, part = stem[len("model.layers.") :].split(".", 1)
        return f"blk.{block}.{BLOCK_NAMES[part]}.{kind}"
    return f"{TOP_NAMES[stem]}.{kind}"


def pairs_adjacent(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from transformers' halves (dimension i turns with i + D/2) to llama.cpp's
    `llama` order, where dimension 2i turns with 2i + 1: new row 2i is old row i, new row 2i + 1 is old i + D/2."""
    head_dim = rows.shape[0] // heads
    return rows.reshape(heads, 2, head_dim // 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def gguf_tensors(model, architecture: str) -> dict[str, torch.Tensor]:
    """Every weight the architecture reads, under its GGUF name, in float32 (a tied LM head is not repeated)."""
    config = model.config
    state = {name: tensor.detach().float().cpu() for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        del state["lm_head.weight"]  # llama.cpp reads token_embd when there is no output tensor
    sizes = model.model.layers[0].attn.sizes  # the rows of query, key and value in the fused projection
    if architecture == "gpt2":  # llama.cpp's gpt2 reads every bias: a missing one is zero
        widths = {"attn.qkv_proj": sum(sizes),
                  "attn.out_proj": config.hidden_size, "mlp.fc_in": config.intermediate_size, "mlp.fc_out": config.hidden_size}  # fmt: skip
        for i in range(config.num_hidden_layers):
            for part, width in widths.items():
                state.setdefault(f"model.layers.{i}.{part}.bias", torch.zeros(width))
    tensors = {}
    for name, tensor in state.items():
        if ".attn.qkv_proj." in name and architecture != "gpt2":
            q, k, v = tensor.split(sizes)
            if architecture == "llama":
                q, k = pairs_adjacent(q, config.num_attention_heads), pairs_adjacent(k, config.num_key_value_heads)
            base = gguf_name(name).replace(".attn_qkv.", ".attn_{}.")
            tensors.update({base.format(part): piece.contiguous() for part, piece in zip("qkv", (q, k, v))})
        else:
            tensors[gguf_name(name)] = tensor
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") == "llama3":  # llama.cpp divides each pair's frequency by this factor
        from .modeling_scratch_gpt import rope_inv_freq

        unscaled = 1.0 / rope["rope_theta"] ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim)
        tensors["rope_freqs.weight"] = unscaled / rope_inv_freq(config)
    return tensors


def kept_in_f32(name: str, tensor: torch.Tensor) -> bool:
    """As llama.cpp's converter: vectors (norms, biases, RoPE factors) and the position table stay f32."""
    return tensor.ndim == 1 or name.endswith("_norm.weight") or name.startswith("position_embd.")


def check_q8_0(config) -> None:
    """q8_0 stores each row of a matrix in blocks of 32 numbers: refuse, in one sentence, rows of another width.
    The rows are hidden_size wide (embeddings, every projection that reads the residual stream),
    intermediate_size (the MLP's down projection) or heads x head_dim (the attention output)."""
    widths = {"hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
              "heads x head_dim": config.num_attention_heads * config.head_dim}  # fmt: skip
    odd = [f"{name} {width}" for name, width in widths.items() if width % 32]
    if odd:
        verb = "is not a multiple" if len(odd) == 1 else "are not multiples"
        raise BadInput(
            f"--outtype q8_0 stores weights in blocks of 32 numbers per row, but this model's {' and '.join(odd)} "
            f"{verb} of 32; use --outtype f16 or f32."
        )


def stored(gguf, name: str, tensor: torch.Tensor, outtype: str):
    """(array, GGML type) of one tensor as the file stores it."""
    data = tensor.numpy()
    if outtype == "f32" or kept_in_f32(name, tensor):
        return data, gguf.GGMLQuantizationType.F32
    if outtype == "f16":
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    q8_0 = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, q8_0), q8_0


# --- the tokenizer -----------------------------------------------------------------------------------

# The pre-tokenizer split patterns llama.cpp implements under a name (tokenizer.json's "Split" regex).
SPLIT_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the way this tokenizer (tokenizer.json as a dict) splits text before BPE.

    Read from the pre-tokenizer itself, not from a model's name: GPT-2's byte-level regex alone (ours,
    GPT-2's) is "gpt-2"; digits split one by one before it (SmolLM2) is "smollm"; a Split on Qwen2's or
    Llama 3's pattern before a byte-level step without regex is "qwen2" or "llama-bpe". Anything else is refused.
    """
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = steps[-1] if steps else {}
    name = None
    if model.get("type") == "BPE" and not model.get("byte_fallback") and byte_level.get("type") == "ByteLevel":
        first = steps[:-1]
        split = first[0] if len(first) == 1 else {}
        if byte_level.get("add_prefix_space"):
            name = None  # llama.cpp's byte-level pre-tokenizers add no space in front
        elif not first and byte_level.get("use_regex", True):
            name = "gpt-2"
        elif split == {"type": "Digits", "individual_digits": True} and byte_level.get("use_regex", True):
            name = "smollm"
        elif split.get("type") == "Split" and not split.get("invert") and split.get("behavior") == "Isolated":
            name = None if byte_level.get("use_regex", True) else SPLIT_PATTERNS.get((split.get("pattern") or {}).get("Regex"))
    normalizer = spec.get("normalizer")
    if name is None or (normalizer is not None and normalizer.get("type") != "NFC") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise BadInput(
            "llama.cpp cannot tokenize exactly as this tokenizer does: it runs byte-level BPE tokenizers that split "
            "text like GPT-2's, SmolLM2's, Qwen2's or Llama 3's (this one: pre-tokenizer "
            f"{json.dumps(pre)[:160]}, normalizer {json.dumps(normalizer)[:60]}); export it --to a transformers folder instead."
        )
    return name


def token_list(tokenizer, vocab_size: int, gguf) -> tuple[list[str], list[int]]:
    """The text and type of every id up to the model's `vocab_size`: the byte-level BPE pieces (normal),
    added tokens (control when special, else user-defined: llama.cpp matches those whole before BPE,
    as the tokenizer does), and the padding rows past the tokenizer, which it never produces (unused)."""
    kind = gguf.TokenType
    tokens, types = [f"[PAD{i}]" for i in range(vocab_size)], [kind.UNUSED] * vocab_size
    for text, index in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items():
        tokens[index], types[index] = text, kind.NORMAL
    for index, token in tokenizer.added_tokens_decoder.items():
        types[index] = kind.CONTROL if token.special else kind.USER_DEFINED
    return tokens, types


def adds_special_tokens(tokenizer) -> tuple[bool, bool]:
    """Whether encoding a text adds the bos token in front, and eos behind (ours add neither)."""
    plain, full = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a")
    grown = len(full) > len(plain)
    return grown and full[0] == tokenizer.bos_token_id, grown and full[-1] == tokenizer.eos_token_id


def add_tokenizer(writer, tokenizer, spec: dict, vocab_size: int, gguf) -> None:
    """`spec`: the tokenizer's own JSON (`backend_tokenizer.to_str()`), parsed."""
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    tokens, types = token_list(tokenizer, vocab_size, gguf)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id), ("pad", writer.add_pad_token_id)):
        if getattr(tokenizer, f"{name}_token_id") is not None:
            add(getattr(tokenizer, f"{name}_token_id"))
    add_bos, add_eos = adds_special_tokens(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


# --- the file -----------------------------------------------------------------------------------------


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}  # --outtype -> gguf.LlamaFileType


def write_gguf(path: Path, model, tokenizer, spec: dict, architecture: str, outtype: str, name: str, gguf) -> None:
    """Write `model` (a ScratchGPTForCausalLM) and its tokenizer (`spec`: its JSON, parsed) to the GGUF file
    `path`, as llama.cpp's `architecture`; `export_gguf` has checked that llama.cpp runs it."""
    config = model.config
    tensors = gguf_tensors(model, architecture)
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[outtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if architecture == "gpt2":
        writer.add_layer_norm_eps(config.layer_norm_eps)
    else:
        writer.add_vocab_size(config.vocab_size)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    add_tokenizer(writer, tokenizer, spec, config.vocab_size, gguf)
    for tensor_name, tensor in tensors.items():
        data, kind = stored(gguf, tensor_name, tensor, outtype)
        writer.add_tensor(tensor_name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- the Ollama Modelfile -----------------------------------------------------------------------------

# Placeholder contents: rendering the chat template with these shows what it puts around each message.
SYSTEM, USER, ASSISTANT, USER_2 = "SYSTEM-TEXT-1", "USER-TEXT-1", "ASSISTANT-TEXT-1", "USER-TEXT-2"


def turn_pieces(render) -> dict[str, str] | None:
    """The text a chat template puts around each message, read off renderings of short conversations.

    `render(messages, add_generation_prompt)` is the template. The pieces: `default_system` (what comes
    first without a system message), `system_before`/`system_after` (around a system message),
    `user_before`/`user_after`, `assistant_before`/`assistant_after`, and `generation_prompt`. None for
    a template that is not made of such pieces (checked by rendering other conversations both ways).
    """
    user, assistant = {"role": "user", "content": USER}, {"role": "assistant", "content": ASSISTANT}
    try:
        one = render([user], False)
        prompt = render([user], True)
        answered = render([user, assistant], False)
        two = render([user, assistant, {"role": "user", "content": USER_2}], False)
        with_system = render([{"role": "system", "content": SYSTEM}, user], False)
        if not (prompt.startswith(one) and answered.startswith(one) and two.startswith(answered)):
            return None
        head, user_after = one.split(USER)
        assistant_turn = answered[len(one) :]
        assistant_before, assistant_after = assistant_turn.split(ASSISTANT)
        user_before = two[len(answered) :].split(USER_2)[0]
        system_turn = with_system.split(USER)[0]
        if not (head.endswith(user_before) and system_turn.endswith(user_before)):
            return None
        system_before, system_after = system_turn[: len(system_turn) - len(user_before)].split(SYSTEM)
        pieces = dict(
            default_system=head[: len(head) - len(user_before)], system_before=system_before, system_after=system_after,
            user_before=user_before, user_after=user_after, assistant_before=assistant_before,
            assistant_after=assistant_after, generation_prompt=prompt[len(one) :],
        )  # fmt: skip
    except Exception:  # a template that refuses these conversations, or puts a placeholder twice
        return None
    checks = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
         {"role": "user", "content": "And?"}],
        [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"}, {"role": "user", "content": "Three"}],
    ]  # fmt: skip
    try:
        same = all(render(messages, True) == render_with_pieces(pieces, messages) for messages in checks)
    except Exception:
        return None
    return pieces if same else None


def render_with_pieces(pieces: dict[str, str], messages: list[dict]) -> str:
    """What the Ollama template written by `ollama_template` renders (for a conversation waiting for an answer)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    text = pieces["system_before"] + "\n\n".join(system) + pieces["system_after"] if system else pieces["default_system"]
    for message in messages:
        if message["role"] in ("user", "assistant"):
            role = message["role"]
            text += pieces[f"{role}_before"] + message["content"] + pieces[f"{role}_after"]
    return text + pieces["generation_prompt"]


def go_text(text: str) -> str:
    """`text` as a Go-template action that prints it: a quoted string, so that no whitespace is trimmed."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def ollama_template(pieces: dict[str, str]) -> str:
    """Ollama's TEMPLATE (Go text/template) for a chat template made of `pieces` (see `turn_pieces`).

    Ollama gives the template `.System` (every system message, joined) and `.Messages` (all messages,
    each with `.Role` and `.Content`); literal text is printed from quoted strings, so the `{{-` that
    trim the template's own line breaks never touch it.
    """
    p = {name: go_text(text) for name, text in pieces.items()}
    return (
        f"{{{{- if .System }}}}{p['system_before']}{{{{ .System }}}}{p['system_after']}{{{{ else }}}}{p['default_system']}{{{{ end }}}}\n"
        "{{- range .Messages }}\n"
        f"{{{{- if eq .Role \"user\" }}}}{p['user_before']}{{{{ .Content }}}}{p['user_after']}\n"
        f"{{{{- else if eq .Role \"assistant\" }}}}{p['assistant_before']}{{{{ .Content }}}}{p['assistant_after']}\n"
        "{{- end }}\n"
        f"{{{{- end }}}}{p['generation_prompt']}"
    )


def modelfile(tokenizer, context_length: int) -> tuple[str, bool]:
    """The Modelfile beside model.gguf, and whether it carries a TEMPLATE (a chat template made of turns)."""
    lines = [f"FROM ./{FILE_NAME}", ""]
    pieces = None
    if tokenizer.chat_template:
        def render(messages, add_generation_prompt):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

        pieces = turn_pieces(render)
    stops = []
    if pieces is not None:
        lines += [f'TEMPLATE """{ollama_template(pieces)}"""', ""]
        stops = [pieces["assistant_after"].strip(), pieces["user_before"].strip()]  # the answer ends; a next turn starts
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in dict.fromkeys(s for s in stops if s)]
    lines.append(f"PARAMETER num_ctx {context_length}")  # the model's context: no position past what it learned
    return "\n".join(lines) + "\n", pieces is not None


def export_gguf(model, tokenizer, out_dir: Path, outtype: str = "f16") -> tuple[str, bool]:
    """Write OUT_DIR/model.gguf and OUT_DIR/Modelfile (atomically: the whole folder or nothing); returns
    (the llama.cpp architecture, whether the Modelfile has a chat TEMPLATE). What llama.cpp cannot run
    is refused before anything is written."""
    gguf = import_gguf()
    architecture = gguf_architecture(model.config)
    if outtype == "q8_0":
        check_q8_0(model.config)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre_tokenizer_name(spec)
    widths = {"f32": 4, "f16": 2, "q8_0": 34 / 32}  # bytes per weight
    check_free_space(out_dir, int(sum(p.numel() for p in model.parameters()) * widths[outtype]), "output folder")
    with atomic_directory(out_dir) as tmp:
        write_gguf(tmp / FILE_NAME, model, tokenizer, spec, architecture, outtype, Path(out_dir).name, gguf)
        text, has_template = modelfile(tokenizer, model.config.max_position_embeddings)
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
    return architecture, has_template


def describe(path: Path) -> str:
    """"gpt2, f16, 2.3 MB": the architecture and weights' format a GGUF file declares (read back), and its size."""
    gguf = import_gguf()
    reader = gguf.GGUFReader(path)
    architecture = reader.fields["general.architecture"].contents()
    file_type = gguf.LlamaFileType(reader.fields["general.file_type"].contents())
    outtype = {getattr(gguf.LlamaFileType, kind): name for name, kind in FILE_TYPES.items()}
    return f"{architecture}, {outtype.get(file_type, file_type.name)}, {path.stat().st_size / 1e6:.1f} MB"
