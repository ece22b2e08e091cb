"""ScratchGPT: a GPT-2 style decoder written out from scratch as a `transformers` model.

Read it top to bottom:

    token ids ──► token embedding + position embedding ──► dropout
              ──► N x Block:  x = x + Attention(LayerNorm(x))      (causal, multi-head)
                              x = x + MLP(LayerNorm(x))            (Linear -> GELU -> Linear)
              ──► final LayerNorm ──► LM head (tied to the token embedding) ──► logits

Shapes in comments: B batch, T new tokens, S tokens attended to (past + new), H heads,
D head size, C hidden size (= H * D), V vocabulary.

This file imports only torch, transformers and its configuration module (and `scratch_gpt.hub`
inside `push_to_hub`, when it can), so it is copied next to the weights by `save_pretrained` and
loads with `trust_remote_code=True` where the `scratch_gpt` package is not installed.
"""

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
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
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_scratch_gpt import ScratchGPTConfig


# ----------------------------------------------------------------------------------------------
# Stage 4: attention
# ----------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, T, D)
    key: torch.Tensor,  # (B, H, S, D)
    value: torch.Tensor,  # (B, H, S, D)
    attention_mask: torch.Tensor | None,  # (B, 1, T, S): bool (True = may attend) or additive (0 / very negative)
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, spelled out. The `sdpa` and flash paths compute the same thing."""
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
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True  # read by the sdpa / flash attention functions
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj.is_residual_projection = True  # scaled at init, see `_init_weights`

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        # (B, T, 3C) -> three (B, T, C) -> split C into H heads of size D -> (B, H, T, D)
        query, key, value = self.qkv_proj(hidden_states).split(self.config.hidden_size, dim=-1)
        query, key, value = (x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2) for x in (query, key, value))

        if cache is not None:
            # Append this step's keys/values to the cache and get back everything seen so far: (B, H, S, D).
            key, value = cache.update(key, value, self.layer_idx)

        # Eager is the readable reference; "sdpa" (default), "flash_attention_2", "flex_attention"
        # are fused kernels behind transformers' attention interface. Weights need the eager path.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attn_pdrop if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = self.out_proj(output.reshape(batch, length, -1))  # (B, T, C)
        return output, weights


# ----------------------------------------------------------------------------------------------
# Stage 5: the transformer block and the GPT body
# ----------------------------------------------------------------------------------------------
class ScratchGPTMLP(nn.Module):
    """Position-wise feed-forward network: expand to 4C, GELU, project back."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.fc_out.is_residual_projection = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(hidden_states)))


class ScratchGPTBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: two residual branches, attention then MLP."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = ScratchGPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ScratchGPTMLP(config)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attn(
            self.ln_1(hidden_states), attention_mask, cache=cache, output_attentions=output_attentions, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.ln_2(hidden_states)))
        return hidden_states, attn_weights


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

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * layers)."""
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

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As in transformers, but weights load from safetensors only unless `use_safetensors=False`
        is passed (a `pytorch_model.bin` is then read with `weights_only=True`)."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def push_to_hub(self, repo_id: str, *, tokenizer=None, **kwargs):
        """Upload the model with its tokenizer, model card and plots to the Hub in one commit.

        With `scratch_gpt` installed this is `scratch_gpt.hub.push_model` (see there): the weights,
        config, remote code and generation config, plus `tokenizer` and the card and plots of the
        folder the model was loaded from. Loaded as remote code without the package, it is
        transformers' own push (no tokenizer, a generic card), and `tokenizer` follows in a second commit.
        """
        try:
            from scratch_gpt.hub import push_model
        except ImportError:
            commit = super().push_to_hub(repo_id, **kwargs)
            if tokenizer is not None:
                names = ("commit_message", "private", "token", "revision", "create_pr")
                tokenizer.push_to_hub(repo_id, **{name: kwargs[name] for name in names if name in kwargs})
            return commit
        return push_model(self, repo_id, tokenizer=tokenizer, **kwargs)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6 * matmul weights + 12 * layers * C * T.

        Matmul weights are every block weight plus the LM head (the embedding lookups cost no
        matmul); the second term is attention's scores and weighted sum over a context of T.
        Divide achieved FLOP/s by the hardware peak to get MFU.
        """
        config = self.config
        seq_len = seq_len or config.max_position_embeddings
        block_weights = sum(p.numel() for name, p in self.named_parameters() if ".layers." in f".{name}")
        matmul_weights = block_weights + config.vocab_size * config.hidden_size
        return 6 * matmul_weights + 12 * config.num_hidden_layers * config.hidden_size * seq_len


class ScratchGPTModel(ScratchGPTPreTrainedModel):
    """The GPT body: embeddings, blocks and the final norm. Returns hidden states, not logits."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        # Stage 3: token embeddings plus learned absolute position embeddings.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList(ScratchGPTBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S): 1 real token, 0 padding
        position_ids: torch.LongTensor | None = None,  # (B, T)
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = config.use_cache if use_cache is None else use_cache
        return_dict = config.return_dict if return_dict is None else return_dict
        if self.gradient_checkpointing and self.training:
            use_cache = False  # checkpointed blocks are run twice; the cache must not be written twice

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds` to ScratchGPT.")
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        past_length = cache.get_seq_length() if cache is not None else 0
        if input_ids is not None:
            # The range check reads the ids back to the host. Decoding steps feed back tokens the model
            # itself chose, so only a prompt needs it; and a training step on an accelerator would wait
            # for it every step, so there the training commands check the tokenizer against vocab_size once.
            on_host = input_ids.device.type == "cpu"
            self._check_input_ids(input_ids, check_range=past_length == 0 and (on_host or not self.training))
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, C)
        length = inputs_embeds.shape[1]
        if past_length + length > config.max_position_embeddings:
            raise ValueError(
                f"ScratchGPT got {past_length + length} tokens but max_position_embeddings is "
                f"{config.max_position_embeddings}; truncate the input or use a model with a longer context."
            )
        if position_ids is None:
            position_ids = self._position_ids(attention_mask, past_length, length, inputs_embeds.device)

        hidden_states = self.drop(inputs_embeds + self.embed_positions(position_ids))
        causal_mask = create_causal_mask(
            config=config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.layers:
            hidden_states, weights = block(
                hidden_states, causal_mask, cache=cache, output_attentions=output_attentions, **kwargs
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:  # the last entry is the normed output, as in every HF decoder
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _position_ids(attention_mask, past_length: int, length: int, device) -> torch.LongTensor:
        """Positions of the new tokens. With a padding mask they count real tokens only, so a
        left-padded prompt gets the same positions (and logits) as the prompt alone."""
        if attention_mask is not None and attention_mask.ndim == 2:
            positions = attention_mask.long().cumsum(-1) - 1
            return positions.clamp(min=0)[:, -length:]
        return torch.arange(past_length, past_length + length, device=device).unsqueeze(0)

    def _check_input_ids(self, input_ids: torch.Tensor, check_range: bool) -> None:
        if input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(
                f"ScratchGPT input_ids must be integer token ids, got dtype {input_ids.dtype}; "
                "pass the tokenizer's output (torch.long)."
            )
        if not check_range or torch.compiler.is_compiling() or input_ids.numel() == 0:
            return  # the range check reads values back to the host, which a compiled graph avoids
        low, high = (int(x) for x in torch.aminmax(input_ids))
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"ScratchGPT input_ids must be in [0, {self.config.vocab_size}), got values in [{low}, {high}]; "
                "use the tokenizer the model was trained with, or resize_token_embeddings."
            )


# ----------------------------------------------------------------------------------------------
# Stage 6: GPT-2 checkpoints. Same network, other names; GPT-2's Conv1D stores Linear weights transposed.
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


def gpt2_name(name: str) -> str:
    """`model.layers.3.attn.qkv_proj.weight` -> `transformer.h.3.attn.c_attn.weight`."""
    for ours, theirs in GPT2_NAMES.items():
        name = name.replace(ours, theirs)
    return name


def config_from_gpt2(gpt2_config) -> ScratchGPTConfig:
    return ScratchGPTConfig(
        vocab_size=gpt2_config.vocab_size,
        hidden_size=gpt2_config.n_embd,
        num_hidden_layers=gpt2_config.n_layer,
        num_attention_heads=gpt2_config.n_head,
        intermediate_size=gpt2_config.n_inner or 4 * gpt2_config.n_embd,
        max_position_embeddings=gpt2_config.n_positions,
        hidden_act=gpt2_config.activation_function,
        embd_pdrop=gpt2_config.embd_pdrop,
        attn_pdrop=gpt2_config.attn_pdrop,
        resid_pdrop=gpt2_config.resid_pdrop,
        layer_norm_eps=gpt2_config.layer_norm_epsilon,
        initializer_range=gpt2_config.initializer_range,
        qkv_bias=True,
        tie_word_embeddings=gpt2_config.tie_word_embeddings,
        bos_token_id=gpt2_config.bos_token_id,
        eos_token_id=gpt2_config.eos_token_id,
        pad_token_id=gpt2_config.pad_token_id,
    )


# ----------------------------------------------------------------------------------------------
# The heads: next-token prediction and sequence classification
# ----------------------------------------------------------------------------------------------
class ScratchGPTForCausalLM(ScratchGPTPreTrainedModel, GenerationMixin):
    """GPT body + LM head. `generate`, the KV cache and `pipeline("text-generation")` come from transformers."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.model = ScratchGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def from_gpt2(cls, gpt2: "str | os.PathLike | PreTrainedModel", **from_pretrained_kwargs) -> "ScratchGPTForCausalLM":
        """Build a ScratchGPT from a transformers GPT-2 checkpoint (a Hub id such as
        `openai-community/gpt2`, a local folder, or a loaded `GPT2LMHeadModel`)."""
        from transformers import GPT2LMHeadModel

        if isinstance(gpt2, (str, os.PathLike)):
            gpt2 = GPT2LMHeadModel.from_pretrained(gpt2, **from_pretrained_kwargs)
        model = cls(config_from_gpt2(gpt2.config)).to(gpt2.dtype)
        theirs = gpt2.state_dict()
        state = {}
        for name in model.state_dict():
            tensor = theirs[gpt2_name(name)]
            state[name] = tensor.t() if gpt2_name(name).endswith(GPT2_CONV1D_WEIGHTS) else tensor
        model.load_state_dict(state)
        model.generation_config = gpt2.generation_config
        return model.eval()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (B, T); the model shifts them, -100 is ignored
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,  # e.g. 1 during generation: only the last position's logits
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,  # attention-kernel arguments reach the blocks; the loss takes e.g. num_items_in_batch
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            hidden_states = hidden_states[:, keep, :]
        logits = self.lm_head(hidden_states)  # (B, T, V)

        loss = None
        if labels is not None:
            # Position t predicts token t+1: the loss shifts labels left by one and skips -100.
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (B,) class ids (or floats for regression)
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
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

        output = SequenceClassifierOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "ScratchGPTPreTrainedModel",
    "ScratchGPTModel",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
]
