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

try:  # with the package installed, a value that cannot make a model is the user's input: one sentence, exit 2
    from scratch_gpt.errors import BadInput as ConfigError
except ImportError:  # remote code, loaded without the package (transformers skips imports inside try)
    ConfigError = ValueError

# The book's names -> the Hugging Face names. `drop_rate` sets all three dropout fields.
BOOK_ALIASES = {
    "emb_dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "context_length": "max_position_embeddings",
}

# What turns the GPT-2 block into a Llama block (each switch is explained where modeling_scratch_gpt.py uses it).
LLAMA_SWITCHES = dict(
    position_embedding_type="rope",
    norm_type="rmsnorm",
    mlp_type="swiglu",
    hidden_act="silu",
    qkv_bias=False,
    attention_bias=False,
    mlp_bias=False,
)

# GPT-2's published sizes. Parameter counts (with the tied LM head, vocab 50257, context 1024):
# small 124M, medium 355M, large 774M, xl 1558M. Then three published Llama-style shapes (tied LM head):
# SmolLM2-135M 134,515,008; Qwen3-0.6B 596,049,920; Llama-3.2-1B 1,235,814,400 parameters.
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
    "smollm2-135m": dict(
        **LLAMA_SWITCHES,
        vocab_size=49152,
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "qwen3-0.6b": dict(
        **LLAMA_SWITCHES,
        qk_norm=True,
        vocab_size=151936,
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
    ),
    "llama-3.2-1b": dict(
        **LLAMA_SWITCHES,
        vocab_size=128256,
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
        ),
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
}

# The choices of each switch; the first is GPT-2's.
SWITCHES = {
    "position_embedding_type": ("learned", "rope"),
    "norm_type": ("layernorm", "rmsnorm"),
    "mlp_type": ("gelu", "swiglu"),
}
ROPE_TYPES = ("default", "llama3")

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
        # The switches from GPT-2 to Llama 3 / Qwen3; the defaults are GPT-2.
        position_embedding_type: str = "learned",
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        rope_parameters: dict | None = None,
        norm_type: str = "layernorm",
        rms_norm_eps: float = 1e-6,
        mlp_type: str = "gelu",
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        qk_norm: bool = False,
        attention_bias: bool = True,
        mlp_bias: bool = True,
        use_cache: bool = True,
        bos_token_id: int = 50256,
        eos_token_id: int = 50256,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        values = {name: value for name, value in locals().items() if name not in ("self", "kwargs", "__class__")}
        for alias, name in BOOK_ALIASES.items():  # the book's names (emb_dim, n_layers, ...) set the HF ones
            if alias in kwargs:
                values[name] = kwargs.pop(alias)
        drop_rate = kwargs.pop("drop_rate", None)  # the book's one dropout rate sets all three
        if drop_rate is not None:
            values.update(embd_pdrop=drop_rate, attn_pdrop=drop_rate, resid_pdrop=drop_rate)
        special_tokens = {name: values.pop(name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        self._set_attributes(values)
        self._validate()
        super().__init__(**special_tokens, **kwargs)

    def _set_attributes(self, values: dict) -> None:
        """Every value as an attribute, after the defaults that follow from others: the MLP width
        (4 x hidden), one key/value head per query head, the head size, RoPE's parameters."""
        parameters, theta, scaling = (values.pop(name) for name in ("rope_parameters", "rope_theta", "rope_scaling"))
        if values["intermediate_size"] is None:
            values["intermediate_size"] = 4 * values["hidden_size"]
        if values["num_key_value_heads"] is None:
            values["num_key_value_heads"] = values["num_attention_heads"]
        if values["head_dim"] is None:
            if values["hidden_size"] % values["num_attention_heads"]:
                raise ConfigError(
                    f"ScratchGPTConfig.hidden_size ({values['hidden_size']}) must be divisible by num_attention_heads "
                    f"({values['num_attention_heads']}), or head_dim given."
                )
            values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
        if values["position_embedding_type"] == "rope":  # transformers' one dict: {"rope_type", "rope_theta", scaling...}
            values["rope_parameters"] = dict(parameters or {"rope_type": "default", "rope_theta": theta, **(scaling or {})})
        for name, value in values.items():
            setattr(self, name, value)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ScratchGPTConfig":
        """A named shape: `gpt2-small` ... `gpt2-xl`, `tiny`, `smollm2-135m`, `qwen3-0.6b`, `llama-3.2-1b`.

        Overriding the width or the heads keeps the preset's proportions for what is not overridden:
        head_dim becomes hidden_size / num_attention_heads, the key/value heads keep the preset's
        group size (query heads per key/value head), the MLP keeps its width relative to hidden_size.
        """
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        preset = PRESETS[name]
        values = {**preset, **overrides}
        if "hidden_size" in overrides or "num_attention_heads" in overrides:
            if "head_dim" not in overrides:
                values.pop("head_dim", None)
            if "num_key_value_heads" in preset and "num_key_value_heads" not in overrides:
                group = preset["num_attention_heads"] // preset["num_key_value_heads"]
                if values["num_attention_heads"] % group:
                    raise ConfigError(
                        f"Preset {name!r} shares each key/value head among {group} query heads, which does not divide "
                        f"{values['num_attention_heads']} heads; give the number of key/value heads too."
                    )
                values["num_key_value_heads"] = values["num_attention_heads"] // group
        if "intermediate_size" in preset and "hidden_size" in overrides and "intermediate_size" not in overrides:
            ratio = preset["intermediate_size"] / preset["hidden_size"]
            values["intermediate_size"] = -(-round(ratio * overrides["hidden_size"]) // 8) * 8  # a multiple of 8
        return cls(**values)

    def _validate(self) -> None:
        for field in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "num_key_value_heads",
            "head_dim",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ScratchGPTConfig.{field} must be a positive integer, got {value!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"ScratchGPTConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}): each key/value head serves a whole group of query heads."
            )
        for field, choices in SWITCHES.items():
            if getattr(self, field) not in choices:
                raise ConfigError(f"ScratchGPTConfig.{field} {getattr(self, field)!r} is not supported; use one of {', '.join(choices)}.")
        if self.position_embedding_type == "rope":
            rope_type = self.rope_parameters.get("rope_type", self.rope_parameters.get("type", "default"))
            if rope_type not in ROPE_TYPES:
                raise ConfigError(f"ScratchGPT does not implement the RoPE type {rope_type!r}; it implements {', '.join(ROPE_TYPES)}.")
            if self.head_dim % 2:
                raise ConfigError(f"ScratchGPTConfig.head_dim ({self.head_dim}) must be even: RoPE rotates pairs of dimensions.")
        for field in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"ScratchGPTConfig.{field} must be in [0, 1), got {value!r}.")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"ScratchGPTConfig.hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}."
            )
        if self.init_style not in INIT_STYLES:
            raise ConfigError(f"ScratchGPTConfig.init_style must be one of {', '.join(INIT_STYLES)}, got {self.init_style!r}.")
        if self.layer_norm_eps <= 0 or self.rms_norm_eps <= 0 or self.initializer_range <= 0:
            raise ConfigError("ScratchGPTConfig.layer_norm_eps, rms_norm_eps and initializer_range must be positive.")


__all__ = ["ScratchGPTConfig", "PRESETS"]
