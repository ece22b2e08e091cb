"""ScratchGPT: a GPT-2 style decoder written out from scratch as a `transformers` model.

Read it top to bottom, in the order the stages build it:

    token ids ──► token embedding + position embedding ──► dropout             (stage 3)
              ──► N x Block:  x = x + Attention(LayerNorm(x))      (causal, multi-head: stage 4)
                              x = x + MLP(LayerNorm(x))            (Linear -> GELU -> Linear)
              ──► final LayerNorm                                              (stage 5)
              ──► LM head (tied to the token embedding) ──► logits, or a classification head

From GPT-2 to Llama 3 and Qwen3 is a handful of config switches, each a few lines below, marked
"# switch:" with the model that introduced it: rotary positions instead of learned ones (RoPE),
RMSNorm instead of LayerNorm, a SwiGLU MLP, fewer key/value heads than query heads (GQA/MQA),
RMSNorm on queries and keys (QK-norm), which projections have biases, a head size of its own.
The defaults are GPT-2; the `smollm2-135m`, `qwen3-0.6b` and `llama-3.2-1b` presets turn them on.

Shapes in comments: B batch, T new tokens, S tokens attended to (past + new), H query heads,
K key/value heads (H for GPT-2), D head size, C hidden size (H * D for GPT-2), V vocabulary.

This file imports only torch, transformers and its configuration module, so it is copied next to
the weights by `save_pretrained` and loads with `trust_remote_code=True` where the `scratch_gpt`
package is not installed. What needs the package (reading other architectures' checkpoints, the
one-commit push) reaches this file through the hooks at its end, which `import scratch_gpt` fills.
"""

import contextlib
import inspect
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_scratch_gpt import ConfigError, ScratchGPTConfig


# ----------------------------------------------------------------------------------------------
# Stage 3: token embeddings + absolute position embeddings
# ----------------------------------------------------------------------------------------------
# Two lookup tables, `embed_tokens` (V x C) and `embed_positions` (max_position_embeddings x C), live
# on `ScratchGPTModel` below; the vector entering the first block is the sum of a token's two rows.
# These helpers pick the rows: they check the token ids and number the positions.
def check_input_ids(input_ids: torch.Tensor, vocab_size: int, check_range: bool) -> None:
    if input_ids.is_floating_point() or input_ids.is_complex():
        raise ValueError(
            f"ScratchGPT input_ids must be integer token ids, got dtype {input_ids.dtype}; "
            "pass the tokenizer's output (torch.long)."
        )
    if not check_range or input_ids.numel() == 0:
        return  # the range check reads values back to the host, which a compiled graph avoids
    low, high = (int(x) for x in torch.aminmax(input_ids))
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"ScratchGPT input_ids must be in [0, {vocab_size}), got values in [{low}, {high}]; "
            "use the tokenizer the model was trained with, or resize_token_embeddings."
        )


def position_ids_for(attention_mask: torch.Tensor | None, past_length: int, length: int, device) -> torch.LongTensor:
    """Positions of the new tokens: (B, T) or (1, T). With a padding mask they count real tokens
    only, so a left-padded prompt gets the same positions (and logits) as the prompt alone."""
    if attention_mask is not None and attention_mask.ndim == 2:
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)[:, -length:]
    return (torch.arange(length, device=device) + past_length).unsqueeze(0)  # past_length: an int, or a tensor


# RoPE (RoFormer, 2021; Llama): no position table. Each query and key is rotated by an angle
# proportional to its position, pair of dimensions by pair, so that q·k depends on how far apart
# two tokens are, not where they are. Pair i turns at `inv_freq[i]` radians per position.
def rope_inv_freq(config: ScratchGPTConfig) -> torch.Tensor:
    """Rotation speed of each pair of head dimensions: theta^(-2i/D), i = 0 .. D/2 - 1."""
    rope = config.rope_parameters
    dims = torch.arange(0, config.head_dim, 2, dtype=torch.int64).float()
    inv_freq = 1.0 / rope["rope_theta"] ** (dims / config.head_dim)  # (D/2,)
    if rope.get("rope_type", "default") == "llama3":  # switch: Llama 3.1's long-context scaling
        # Wavelengths (positions per full turn) longer than the pre-training context / low_freq_factor
        # are slowed down by `factor`, those shorter than context / high_freq_factor are kept, and
        # in between the two are blended, so short-range order stays as trained.
        context, factor = rope["original_max_position_embeddings"], rope["factor"]
        turns_in_context = context * inv_freq / (2 * torch.pi)  # = context / wavelength
        keep = ((turns_in_context - rope["low_freq_factor"]) / (rope["high_freq_factor"] - rope["low_freq_factor"])).clamp(0, 1)
        inv_freq = keep * inv_freq + (1 - keep) * inv_freq / factor
    return inv_freq


class ScratchGPTRotaryEmbedding(nn.Module):
    """Cosines and sines of every position's rotation angles, shared by all blocks."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.LongTensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, D): dimension i pairs with i + D/2
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + D/2]) of (B, heads, T, D) by its angle: cos/sin are (B, T, D)."""
    first, second = x.chunk(2, dim=-1)
    rotated_quarter_turn = torch.cat((-second, first), dim=-1)
    return x * cos.unsqueeze(1) + rotated_quarter_turn * sin.unsqueeze(1)


# RMSNorm (Zhang & Sennrich 2019; Llama): LayerNorm without the mean and the shift, x / rms(x) * weight.
class ScratchGPTRMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # in fp32 for stability, as Llama does
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def make_norm(config: ScratchGPTConfig, size: int) -> nn.Module:
    if config.norm_type == "rmsnorm":  # switch: RMSNorm, no mean subtraction and no bias: Llama
        return ScratchGPTRMSNorm(size, eps=config.rms_norm_eps)
    return nn.LayerNorm(size, eps=config.layer_norm_eps)


# ----------------------------------------------------------------------------------------------
# Stage 4: attention
# ----------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, T, D)
    key: torch.Tensor,  # (B, K, S, D)
    value: torch.Tensor,  # (B, K, S, D)
    attention_mask: torch.Tensor | None,  # (B, 1, T, S): bool (True = may attend) or additive (0 / very negative)
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, spelled out. The `sdpa` and flash paths compute the same thing."""
    # 0. With grouped key/value heads, each one serves `num_key_value_groups` query heads: repeat it.
    if module.num_key_value_groups > 1:
        key = key.repeat_interleave(module.num_key_value_groups, dim=1)  # (B, H, S, D)
        value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    # 1. Attention scores: how much each query position matches each key position.
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling  # (B, H, T, S)
    # 2. Causal (and padding) mask: a position may only look at itself and earlier, real tokens.
    #    `create_causal_mask` built it with the cache offset and padding taken into account; without
    #    padding it may leave it to the kernel (None), so spell out the causal triangle here.
    if attention_mask is None:
        new, seen = query.shape[-2], key.shape[-2]  # query t sits at position (seen - new + t)
        attention_mask = torch.ones(new, seen, dtype=torch.bool, device=query.device).tril(diagonal=seen - new)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask
    # 3. Softmax over the keys (in fp32 for stability), then dropout on the weights.
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    # 4. Weighted sum of the values, heads moved back next to each other.
    output = torch.matmul(weights, value)  # (B, H, T, D)
    return output.transpose(1, 2).contiguous(), weights  # (B, T, H, D), (B, H, T, S)


class ScratchGPTAttention(nn.Module):
    """Causal multi-head self-attention with one fused query/key/value projection."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx  # which slot of the KV cache this layer writes
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim  # switch: a head size of its own, not C / H: Qwen3 (and Gemma)
        # switch: fewer key/value heads than query heads, each serving a group: GQA (Llama 2 70B); one: MQA.
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads  # also read by sdpa / flex
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attn_pdrop  # on the attention weights, while training
        self.qk_norm = config.qk_norm  # read once: a config attribute costs a lookup on every decoding step
        self.is_causal = True  # read by the sdpa / flash attention functions
        self.sizes = [self.num_heads * self.head_dim, *2 * [self.num_key_value_heads * self.head_dim]]  # q, k, v
        # switch: `qkv_bias` (GPT-2 and Qwen2: yes; Llama, Qwen3: no), `attention_bias` on the output (GPT-2 only).
        self.qkv_proj = nn.Linear(config.hidden_size, sum(self.sizes), bias=config.qkv_bias)
        self.out_proj = nn.Linear(self.sizes[0], config.hidden_size, bias=config.attention_bias)
        self.out_proj.is_residual_projection = True  # scaled at init, see `_init_weights`
        if config.qk_norm:  # switch: RMSNorm over each head's queries and keys, before RoPE: Qwen3 (after OLMo 2)
            self.q_norm = ScratchGPTRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = ScratchGPTRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,  # RoPE's (cos, sin), each (B, T, D)
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        # (B, T, (H + 2K) * D) -> query (B, T, H * D), key and value (B, T, K * D) -> heads of size D
        query, key, value = self.qkv_proj(hidden_states).split(self.sizes, dim=-1)
        query, key, value = (x.view(batch, length, -1, self.head_dim) for x in (query, key, value))
        if self.qk_norm:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # (B, H or K, T, D)
        if position_embeddings is not None:  # switch: rotate queries and keys by their positions (RoPE): Llama
            query, key = apply_rope(query, *position_embeddings), apply_rope(key, *position_embeddings)

        if cache is not None:
            # Append this step's keys/values to the cache and get back everything seen so far: (B, K, S, D).
            key, value = cache.update(key, value, self.layer_idx)

        # Eager is the readable reference; "sdpa" (default), "flash_attention_2", "flex_attention"
        # are fused kernels behind transformers' attention interface. Weights need the eager path.
        implementation = "eager" if kwargs.get("output_attentions") else self.config._attn_implementation
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = self.out_proj(output.reshape(batch, length, -1))  # (B, T, C)
        return output, weights  # `output_attentions=True` collects `weights` (see `_can_record_outputs`)


# ----------------------------------------------------------------------------------------------
# The transformer block
# ----------------------------------------------------------------------------------------------
class ScratchGPTMLP(nn.Module):
    """Position-wise feed-forward network: expand to 4C, GELU, project back."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        # GPT-2's "gelu_new" is GELU's tanh approximation; torch computes the same function in one fused op.
        self.act = ACT2FN["gelu_pytorch_tanh" if config.hidden_act == "gelu_new" else config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.fc_out.is_residual_projection = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(hidden_states)))


class ScratchGPTGatedMLP(nn.Module):
    """SwiGLU (Shazeer 2020; PaLM, Llama): a second expansion gates the first, element by element."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]  # SiLU (= Swish) in Llama and Qwen
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.down_proj.is_residual_projection = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class ScratchGPTBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: two residual branches, attention then MLP."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config, config.hidden_size)
        self.attn = ScratchGPTAttention(config, layer_idx)
        self.ln_2 = make_norm(config, config.hidden_size)
        # switch: a gated SiLU MLP (gate_proj, up_proj, down_proj) instead of Linear-GELU-Linear: Llama
        self.mlp = ScratchGPTGatedMLP(config) if config.mlp_type == "swiglu" else ScratchGPTMLP(config)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: Cache | None = None, **kwargs
    ) -> torch.Tensor:  # (B, T, C) -> (B, T, C); kwargs carry RoPE's `position_embeddings`
        attn_output, _ = self.attn(self.ln_1(hidden_states), attention_mask, cache=cache, **kwargs)
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.ln_2(hidden_states)))  # (B, T, C)


# ----------------------------------------------------------------------------------------------
# Stage 5: the GPT body
# ----------------------------------------------------------------------------------------------
class ScratchGPTPreTrainedModel(PreTrainedModel):
    config_class = ScratchGPTConfig
    config: ScratchGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchGPTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # What `output_hidden_states=True` / `output_attentions=True` collect, through forward hooks
    # (transformers' `capture_outputs`): each block's output, each attention's weights.
    _can_record_outputs = {"hidden_states": ScratchGPTBlock, "attentions": ScratchGPTAttention}

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * layers).
        With `init_style="pytorch"`, the book's: torch's layer defaults (see `_init_weights_pytorch`)."""
        if getattr(self.config, "init_style", "gpt2") == "pytorch":
            return self._init_weights_pytorch(module)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                # Each block adds two branches to the residual stream; keep its variance from growing with depth.
                std = std / (2 * self.config.num_hidden_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ScratchGPTRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ScratchGPTRotaryEmbedding):
            init.copy_(module.inv_freq, rope_inv_freq(self.config))

    def _init_weights_pytorch(self, module: nn.Module) -> None:
        """The book's GPTModel keeps torch's defaults: embeddings N(0, 1), linear weights and biases
        uniform in +-1/sqrt(fan_in) (`nn.Linear.reset_parameters`), layer norms ones and zeros."""
        if isinstance(module, nn.Linear):
            bound = 1 / module.in_features**0.5
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As in transformers, with two additions. Weights load from safetensors only unless
        `use_safetensors=False` is passed (a `pytorch_model.bin` is then read with `weights_only=True`).
        A checkpoint of another architecture (a GPT-2 folder or Hub id, ...) is converted on the way
        in, when `import scratch_gpt` registered a converter for its `model_type` (see the end of the file).

        `use_kernels` defaults to False: ScratchGPT has no layer that the `kernels` library swaps for a
        Hub kernel, so kernelizing it changes nothing. Since transformers 5.25 it would run at every load
        and refuse a model read onto the meta device, which is how FSDP reads a folder on every process
        but the first (`init_empty_weights`)."""
        kwargs.setdefault("use_safetensors", True)
        kwargs.setdefault("use_kernels", False)
        model_type = None if "config" in kwargs else checkpoint_model_type(pretrained_model_name_or_path, kwargs)
        if model_type in (None, ScratchGPTConfig.model_type):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return cls.from_converted(pretrained_model_name_or_path, model_type, *model_args, **kwargs)

    @classmethod
    def from_converted(cls, source, model_type: str, *model_args, **kwargs):
        """Load the `model_type` checkpoint `source` through the converter registered for it.

        The converter returns a ScratchGPT config and state dict. The rest is transformers' own loading:
        config kwargs (`num_labels`, `id2label`, `pad_token_id`, ...) apply as for a ScratchGPT folder,
        `dtype` is respected, weights the class lacks (a classifier has no `lm_head`) are left out, weights
        the checkpoint lacks (a classifier's `score`) are freshly initialised.
        """
        convert = CHECKPOINT_CONVERTERS.get(model_type)
        if convert is None:
            supported = ", ".join([ScratchGPTConfig.model_type, *CHECKPOINT_CONVERTERS])
            install = "" if CHECKPOINT_CONVERTERS else " (install the scratch_gpt package to read other architectures)"
            raise ConfigError(
                f"{cls.__name__} cannot read a checkpoint of model type {model_type!r}; it reads {supported}{install}."
            )
        download = {name: kwargs.pop(name) for name in DOWNLOAD_KWARGS if name in kwargs}
        config, state_dict = convert(source, **download)
        dtype = {name: kwargs.pop(name) for name in ("dtype", "torch_dtype") if name in kwargs}
        # The config as config.json would hold it, so that kwargs update it as they update a saved one.
        config, kwargs = cls.config_class.from_dict(config.to_diff_dict(), return_unused_kwargs=True, **kwargs)
        loaded = super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **dtype, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info=True
        from_path = isinstance(source, (str, os.PathLike))
        model.name_or_path = model.config.name_or_path = str(source) if from_path else source.name_or_path
        if from_path and model.can_generate():
            with contextlib.suppress(OSError):  # no generation_config.json: keep the one made from the config
                model.generation_config = GenerationConfig.from_pretrained(source, **download)
        return loaded

    def push_to_hub(self, repo_id: str, *, tokenizer=None, **kwargs):
        """Upload the model with its tokenizer, model card and plots to the Hub in one commit.

        With `scratch_gpt` imported this is `scratch_gpt.hub.push_model` (see there, and the hooks at
        the end of this file): the weights, config, remote code and generation config, plus `tokenizer`
        and the card and plots of the folder the model was loaded from. Loaded as remote code without
        the package, it is transformers' own push (no tokenizer, a generic card), and `tokenizer`
        follows in a second commit.
        """
        if PUSH_TO_HUB is not None:
            return PUSH_TO_HUB(self, repo_id, tokenizer=tokenizer, **kwargs)
        commit = super().push_to_hub(repo_id, **kwargs)
        if tokenizer is not None:
            names = ("commit_message", "private", "token", "revision", "create_pr")
            tokenizer.push_to_hub(repo_id, **{name: kwargs[name] for name in names if name in kwargs})
        return commit

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6 * matmul weights + 12 * layers * H * D * T.

        Matmul weights are every block weight plus the LM head (the embedding lookups cost no
        matmul); the second term is attention's scores and weighted sum over a context of T.
        Divide achieved FLOP/s by the hardware peak to get MFU.
        """
        config = self.config
        seq_len = seq_len or config.max_position_embeddings
        block_weights = sum(p.numel() for name, p in self.named_parameters() if ".layers." in f".{name}")
        matmul_weights = block_weights + config.vocab_size * config.hidden_size
        attention_width = config.num_attention_heads * config.head_dim  # C in GPT-2
        return 6 * matmul_weights + 12 * config.num_hidden_layers * attention_width * seq_len


class ScratchGPTModel(ScratchGPTPreTrainedModel):
    """The GPT body: embeddings, blocks and the final norm. Returns hidden states, not logits."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        # Stage 3: token embeddings plus learned absolute position embeddings.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:  # switch: no position table; attention rotates queries and keys instead (RoPE): Llama
            self.rotary_emb = ScratchGPTRotaryEmbedding(config)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList(ScratchGPTBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config, config.hidden_size)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    # `merge_with_config_defaults` fills `use_cache` from the config (off while gradient checkpointing
    # trains); `capture_outputs` collects `output_hidden_states` / `output_attentions` with hooks and
    # turns the output into a tuple for `return_dict=False`.
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S): 1 real token, 0 padding
        position_ids: torch.LongTensor | None = None,  # (B, T)
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds` to ScratchGPT.")
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        past_length = cache.get_seq_length() if cache is not None else 0
        if input_ids is not None:
            # The range check reads the ids back to the host. Decoding steps feed back tokens the model
            # itself chose, so only a prompt needs it; and a training step on an accelerator would wait
            # for it every step, so there the training commands check the tokenizer against vocab_size once.
            # Under torch.compile no check reads values back (a static cache's length is a tensor there).
            on_host = input_ids.device.type == "cpu"
            check_range = not torch.compiler.is_compiling() and past_length == 0 and (on_host or not self.training)
            check_input_ids(input_ids, config.vocab_size, check_range=check_range)
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, C)
        length = inputs_embeds.shape[1]
        if not torch.compiler.is_compiling() and past_length + length > config.max_position_embeddings:
            raise ValueError(
                f"ScratchGPT got {past_length + length} tokens but max_position_embeddings is "
                f"{config.max_position_embeddings}; truncate the input or use a model with a longer context."
            )
        if position_ids is None:
            position_ids = position_ids_for(attention_mask, past_length, length, inputs_embeds.device)

        if config.position_embedding_type == "learned":
            hidden_states = self.drop(inputs_embeds + self.embed_positions(position_ids))  # stage 3: (B, T, C)
        else:  # RoPE: the blocks get each position's (cos, sin) and rotate queries and keys with them
            hidden_states = self.drop(inputs_embeds)
            kwargs["position_embeddings"] = self.rotary_emb(position_ids, inputs_embeds.dtype)
        causal_mask = create_causal_mask(
            config=config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        for block in self.layers:
            hidden_states = block(hidden_states, causal_mask, cache=cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache if use_cache else None)


# ----------------------------------------------------------------------------------------------
# The heads: next-token prediction and sequence classification
# ----------------------------------------------------------------------------------------------
class ChunkedLMHeadLoss(torch.autograd.Function):
    """The LM head and the cross-entropy together, a chunk of tokens at a time (Liger-Kernel's
    fused linear cross-entropy, in plain PyTorch).

    Why: the logits are tokens x V floats (8 x 1024 x 50257 x 4 bytes = 1.6 GB for one GPT-2
    batch), and the usual path keeps them, their log-softmax and their gradient alive at once;
    for a small model that is most of the training memory. Here each chunk's logits exist only
    while that chunk is processed. The gradient of the loss is computed right then, in forward
    (for a chunk it is softmax - one_hot(label)), and pushed through the head at once, so
    backward never needs the logits again and nothing is recomputed: backward only scales the
    stored gradients, by the incoming gradient over the denominator.

    hidden (N, C), weight (V, C), labels (N,) already shifted (-100: skipped); the loss is the
    sum over the kept tokens divided by `denominator`.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size: int, denominator):
        needs_grad = any(ctx.needs_input_grad[:2])  # False under no_grad (evaluation)
        # float32 without autocast: the products go straight into buffers and sums (no temporaries)
        plain = hidden.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(hidden.device.type)
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_hidden = torch.zeros_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        # The chunk's logits and log-probabilities, two (n, V) buffers that every chunk reuses (on a
        # CPU a fresh 50 MB tensor per chunk costs page faults; on a GPU it changes nothing).
        logits_buffer = hidden.new_empty(min(chunk_size, hidden.shape[0]), weight.shape[0], dtype=torch.float32)
        log_probs_buffer = torch.empty_like(logits_buffer)
        for start in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[start : start + chunk_size], labels[start : start + chunk_size]
            n = len(y)
            # (n, V): the only logits that exist
            logits = torch.mm(h, weight.T, out=logits_buffer[:n]) if plain else h @ weight.T
            log_probs = torch.log_softmax(logits, -1, dtype=torch.float32, out=log_probs_buffer[:n])
            total += F.nll_loss(log_probs, y, ignore_index=-100, reduction="sum")
            if needs_grad:
                grad_logits = log_probs.exp_()  # softmax, in place
                grad_logits[torch.arange(n, device=y.device), y.clamp(min=0)] -= 1  # - one_hot(label)
                grad_logits *= (y != -100).unsqueeze(1)  # skipped tokens: no gradient
                grad_logits = grad_logits.to(h.dtype)
                grad_hidden[start : start + chunk_size] = grad_logits @ weight
                if plain:
                    grad_weight.addmm_(grad_logits.T, h)  # in place: no (V, C) temporary per chunk
                else:  # the product in autocast's (or the weights') dtype, the sum in float32
                    grad_weight += grad_logits.T @ h
        if needs_grad:
            ctx.grads, ctx.denominator, ctx.weight_dtype = (grad_hidden, grad_weight), denominator, weight.dtype
        return total / denominator

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None  # free them now (not `del`: torch.compile would split the graph here)
        scale = grad_loss / ctx.denominator  # d(loss)/d(sum): one in-place pass over each gradient
        return grad_hidden.mul_(scale.to(grad_hidden.dtype)), grad_weight.mul_(scale).to(ctx.weight_dtype), None, None, None


def chunked_lm_loss(hidden_states, lm_head_weight, labels, chunk_size: int, num_items_in_batch=None, **kwargs):
    """The same loss as transformers' `ForCausalLMLoss` on `lm_head(hidden_states)` (labels shifted
    left by one, -100 skipped, mean over the kept tokens or sum / `num_items_in_batch`), without
    ever holding all the logits. (B, T, C) hidden states, (B, T) labels."""
    labels = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1).to(hidden_states.device)  # token t predicts t+1
    denominator = (labels != -100).sum() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(denominator):
        denominator = denominator.to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    return ChunkedLMHeadLoss.apply(hidden, lm_head_weight, labels, chunk_size, denominator)


class ScratchGPTForCausalLM(ScratchGPTPreTrainedModel, GenerationMixin):
    """GPT body + LM head. `generate`, the KV cache and `pipeline("text-generation")` come from transformers."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.model = ScratchGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._head_columns = None  # (key, (C, V) copy of the head's weight): see `project_to_vocab`
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def project_to_vocab(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`lm_head(hidden_states)`: (B, T, C) -> (B, T, V) logits.

        Decoding one or two sequences on a CPU is a matrix-vector product with the (V, C) head, and
        MKL reads that layout at about half its memory speed; it reads a (C, V) copy at full speed
        (50257 x 256, one core: 7-8 ms -> 3-4 ms per token, most of a small model's decoding step;
        measured slower from 8 rows on). So in evaluation mode without autograd, for fewer than 4
        rows of float32 on a CPU, the product uses such a copy, made once and remade whenever the
        weight changes (another place in memory, or an in-place update). It holds the head's
        memory a second time; `model.train()` frees it. Under `torch.compile` no copy is needed:
        written as a multiply-and-sum, inductor turns it into one fused pass at memory speed.
        """
        head = self.lm_head
        rows = hidden_states.numel() // hidden_states.shape[-1]
        if (
            rows < 4
            and not self.training
            and not torch.is_grad_enabled()
            and type(head) is nn.Linear  # not a LoRA-wrapped head
            and head.bias is None
            and head.weight.device.type == "cpu"
            and head.weight.dtype == hidden_states.dtype == torch.float32
        ):
            weight = head.weight
            if torch.compiler.is_compiling():  # inductor fuses this into one pass over the (V, C) weight
                return (hidden_states.unsqueeze(-2) * weight).sum(-1)
            if not weight.is_inference():  # (made under inference_mode: no version counter to watch)
                key = (weight.data_ptr(), weight._version, weight.shape)
                if self._head_columns is None or self._head_columns[0] != key:
                    self._head_columns = (key, weight.T.contiguous())
                return hidden_states @ self._head_columns[1]
        return head(hidden_states)

    def train(self, mode: bool = True):
        if mode:
            self._head_columns = None
        return super().train(mode)

    @classmethod
    def from_gpt2(cls, gpt2: "str | os.PathLike | PreTrainedModel", **from_pretrained_kwargs) -> "ScratchGPTForCausalLM":
        """A ScratchGPT from a transformers GPT-2 checkpoint: a Hub id such as `openai-community/gpt2`,
        a local folder (both as `from_pretrained` reads them), or a loaded `GPT2LMHeadModel`."""
        return cls.from_converted(gpt2, "gpt2", **from_pretrained_kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (B, T); the model shifts them, -100 is ignored
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,  # e.g. 1 during generation: only the last position's logits
        loss_chunk_size: int | None = None,  # with labels: the loss this many tokens at a time, no logits (None)
        **kwargs,  # output_hidden_states, output_attentions, attention-kernel arguments, the loss's num_items_in_batch
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache=use_cache, return_dict=True, **kwargs
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            hidden_states = hidden_states[:, keep, :]
        if labels is not None and loss_chunk_size and type(self.lm_head) is nn.Linear:  # not a LoRA-wrapped head
            # Training without the (B, T, V) logits: see ChunkedLMHeadLoss. The output has no logits.
            loss = chunked_lm_loss(hidden_states, self.lm_head.weight, labels, loss_chunk_size, **kwargs)
            return CausalLMOutputWithPast(
                loss=loss, logits=None, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions
            )
        logits = self.project_to_vocab(hidden_states)  # (B, T, V)

        loss = None
        if labels is not None:
            # Position t predicts token t+1: the loss shifts labels left by one and skips -100.
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# `generate` reads the forward's signature at every decoding step for models with code of their own
# (looking for a `cache_position` argument); computed once here, that costs nothing per token.
ScratchGPTForCausalLM.forward.__signature__ = inspect.signature(ScratchGPTForCausalLM.forward)


class ScratchGPTForSequenceClassification(ScratchGPTPreTrainedModel):
    """GPT body + a linear head on the last real token of each sequence (stage 7.1).

    Under causal attention only the last token has seen the whole text. Its index comes from the
    attention mask, so right- and left-padded batches pool the same token.
    """

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ScratchGPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T): 1 real token, 0 padding; the last 1 is pooled
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (B,) class ids (or floats for regression)
        **kwargs,  # output_hidden_states, output_attentions
    ) -> SequenceClassifierOutputWithPast:
        outputs = self.model(
            input_ids, attention_mask, position_ids, inputs_embeds=inputs_embeds, use_cache=False, return_dict=True, **kwargs
        )
        hidden_states = outputs.last_hidden_state  # (B, T, C)
        batch, length = hidden_states.shape[:2]
        if attention_mask is None:
            last = torch.full((batch,), length - 1, device=hidden_states.device)
        else:
            # index of the last 1 in each row: argmax of (position * mask)
            positions = torch.arange(length, device=hidden_states.device)
            last = (attention_mask.to(hidden_states.device) * positions).argmax(-1)
        pooled = hidden_states[torch.arange(batch, device=hidden_states.device), last]  # (B, C)
        logits = self.score(pooled)  # (B, num_labels)

        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# ----------------------------------------------------------------------------------------------
# Stage 6 hooks: other checkpoints in, the Hub out. Empty here; `import scratch_gpt` fills them
# (scratch_gpt/convert.py, scratch_gpt/hub.py), so this file never imports the package.
# ----------------------------------------------------------------------------------------------
# source checkpoint's model_type -> convert(source, **download_kwargs) -> (ScratchGPTConfig, state dict
# under ScratchGPT's parameter names). `source` is what `from_pretrained` got (a Hub id or a folder), or
# a loaded model; `download_kwargs` are the `DOWNLOAD_KWARGS` the caller passed.
CHECKPOINT_CONVERTERS: dict[str, Callable[..., tuple[ScratchGPTConfig, dict[str, torch.Tensor]]]] = {}
DOWNLOAD_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")

# push(model, repo_id, tokenizer=..., **push_kwargs): what `model.push_to_hub(...)` runs, when set.
PUSH_TO_HUB: Callable | None = None


def register_converter(model_type: str, convert: Callable) -> None:
    """Let `from_pretrained` read checkpoints whose config.json says `model_type`, through `convert`."""
    CHECKPOINT_CONVERTERS[model_type] = convert


def register_push_to_hub(push: Callable | None) -> None:
    """Make `model.push_to_hub(repo_id, tokenizer=..., **kwargs)` call `push(model, repo_id, ...)`."""
    global PUSH_TO_HUB
    PUSH_TO_HUB = push


def checkpoint_model_type(source, kwargs: dict) -> str | None:
    """The `model_type` in the config.json of `source` (a folder or a Hub id, found as `from_pretrained`
    finds it: cache, offline mode, revision), or None when there is none to read."""
    if source is None or kwargs.get("gguf_file"):
        return None
    download = {name: kwargs[name] for name in DOWNLOAD_KWARGS if name in kwargs}
    try:
        config_dict, _ = ScratchGPTConfig.get_config_dict(source, **download)
    except OSError:
        return None  # transformers' own loading then says what is missing
    return config_dict.get("model_type")


__all__ = [
    "ScratchGPTPreTrainedModel",
    "ScratchGPTModel",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
]
