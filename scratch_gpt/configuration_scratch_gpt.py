"""Configuration of ScratchGPT: the numbers that fix the shape of the network.

The attribute names are the ones every Hugging Face tool looks for (`hidden_size`,
`num_hidden_layers`, ...). The names used in "Build a Large Language Model (From Scratch)"
(`emb_dim`, `n_layers`, `context_length`, ...) are accepted as aliases, so the book's config
dicts build the same model:

    >>> ScratchGPTConfig(**{"vocab_size": 50257, "context_length": 1024, "emb_dim": 768,
    ...                     "n_heads": 12, "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False})

This module imports nothing but transformers: it ships next to the weights as remote code.
"""

from transformers import PretrainedConfig

# The book's names -> the Hugging Face names. `drop_rate` sets all three dropout fields.
BOOK_ALIASES = {
    "emb_dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "context_length": "max_position_embeddings",
}

# GPT-2's published sizes. Parameter counts (with the tied LM head, vocab 50257, context 1024):
# small 124M, medium 355M, large 774M, xl 1558M.
PRESETS = {
    "gpt2-small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "gpt2-medium": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "gpt2-large": dict(hidden_size=1280, num_hidden_layers=36, num_attention_heads=20),
    "gpt2-xl": dict(hidden_size=1600, num_hidden_layers=48, num_attention_heads=25),
    # Small enough for unit tests and a laptop CPU; special ids match scratch_gpt's tokenizer.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    ),
}

ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "silu")

# How new weights are drawn (`init_style`): "gpt2" is GPT-2's N(0, 0.02) with scaled residual
# projections; "pytorch" is what the book's GPTModel gets from torch's own layer defaults
# (embeddings N(0, 1), linear layers uniform in +-1/sqrt(fan_in)), for reproducing its figures.
INIT_STYLES = ("gpt2", "pytorch")


class ScratchGPTConfig(PretrainedConfig):
    model_type = "scratch_gpt"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads"}

    def __init__(
        self,
        vocab_size: int = 50257,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 1024,
        hidden_act: str = "gelu_new",
        embd_pdrop: float = 0.0,
        attn_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        init_style: str = "gpt2",
        qkv_bias: bool = True,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        bos_token_id: int = 50256,
        eos_token_id: int = 50256,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        # Accept the book's names. An explicit HF name wins over its alias.
        book = {alias: kwargs.pop(alias) for alias in list(BOOK_ALIASES) if alias in kwargs}
        drop_rate = kwargs.pop("drop_rate", None)
        hf_values = dict(
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            max_position_embeddings=max_position_embeddings,
        )
        for alias, value in book.items():
            hf_values[BOOK_ALIASES[alias]] = value
        if drop_rate is not None:
            embd_pdrop = attn_pdrop = resid_pdrop = drop_rate

        self.vocab_size = vocab_size
        self.hidden_size = hf_values["hidden_size"]
        self.num_hidden_layers = hf_values["num_hidden_layers"]
        self.num_attention_heads = hf_values["num_attention_heads"]
        self.max_position_embeddings = hf_values["max_position_embeddings"]
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * self.hidden_size
        self.hidden_act = hidden_act
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.resid_pdrop = resid_pdrop
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.init_style = init_style
        self.qkv_bias = qkv_bias
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self._validate()
        super().__init__(
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ScratchGPTConfig":
        """A named size: `gpt2-small`, `gpt2-medium`, `gpt2-large`, `gpt2-xl` or `tiny`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def _validate(self) -> None:
        for field in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ScratchGPTConfig.{field} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ScratchGPTConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        for field in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ScratchGPTConfig.{field} must be in [0, 1), got {value!r}.")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"ScratchGPTConfig.hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}."
            )
        if self.init_style not in INIT_STYLES:
            raise ValueError(f"ScratchGPTConfig.init_style must be one of {', '.join(INIT_STYLES)}, got {self.init_style!r}.")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise ValueError("ScratchGPTConfig.layer_norm_eps and initializer_range must be positive.")


__all__ = ["ScratchGPTConfig", "PRESETS"]
