"""Generation helpers shared by every way of talking to a model: the terminal chat (`inference.chat`),
the web page (`inference.web`) and the answers `finetune-instruct` writes for held-out instructions.

The prompt format lives in ONE place, the tokenizer's chat template (see `scratch_gpt.tokenizer`):
`apply_chat_template` renders a conversation exactly as in training, the text the model learned.
"""

import copy
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.convert import load_pretrained
from scratch_gpt.errors import BadInput, MissingFile
from scratch_gpt.io_utils import check_model_folder
from scratch_gpt.tokenizer import complete_tokenizer


def load_for_chat(model_dir: str, trust_remote_code: bool = False):
    """Model, tokenizer and generation config of `model_dir`: a ScratchGPT or GPT-2 folder or Hub id
    (GPT-2 converted, its tokenizer completed with the Alpaca chat template), or a LoRA adapter folder
    (its base model loaded the same way). The folder's own code runs only with `trust_remote_code`."""
    if Path(model_dir).is_dir():
        check_model_folder(model_dir)  # a damaged file named in one sentence, before any library reads it
        if not any(Path(model_dir).glob("*.safetensors")):
            raise MissingFile(f"No *.safetensors weights in {model_dir!r}; pass the --output-dir of finetune-instruct.")
    try:
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model_dir, trust_remote_code=trust_remote_code)
    except MissingFile:
        raise MissingFile(
            f"{model_dir!r} is not a model folder with a tokenizer, nor a Hub model id found in the cache or online; "
            "pass the --output-dir of finetune-instruct."
        ) from None
    tokenizer = complete_tokenizer(tokenizer)
    if (Path(model_dir) / "adapter_config.json").is_file():
        base_dir = PeftConfig.from_pretrained(model_dir).base_model_name_or_path
        base = load_pretrained(ScratchGPTForCausalLM.from_pretrained, base_dir, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = load_pretrained(ScratchGPTForCausalLM.from_pretrained, model_dir, trust_remote_code=trust_remote_code)
    model.eval()
    saved = (Path(model_dir) / "generation_config.json").is_file()
    generation_config = GenerationConfig.from_pretrained(model_dir) if saved else copy.deepcopy(model.generation_config)
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, generation_config


def fit_to_context(generation_config: GenerationConfig, room: int) -> GenerationConfig:
    """A copy that generates at most `room` new tokens (what is left of the context)."""
    config = copy.deepcopy(generation_config)
    config.max_new_tokens = min(config.max_new_tokens or room, room)
    return config


def chat_generation_config(
    generation_config: GenerationConfig, *, max_new_tokens: int | None = None, temperature: float = 0.0, top_k: int = 50
) -> GenerationConfig:
    """A copy of the model's generation config with the chat settings: greedy at temperature 0, else
    sampling at `temperature` from the `top_k` likeliest tokens (0 = all); `max_new_tokens` if given."""
    config = copy.deepcopy(generation_config)
    if max_new_tokens:
        config.max_new_tokens = max_new_tokens
    if temperature > 0:
        config.update(do_sample=True, temperature=temperature, top_k=top_k)
    else:
        config.do_sample = False
    return config


class StopWhenAsked(StoppingCriteria):
    """Ends `generate` at its next step once `event` is set (the reader of the answer went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def reply_pieces(model, tokenizer, messages: list[dict], generation_config) -> Iterator[str]:
    """Yield the answer to `messages` in pieces (about a word each) while it is being generated.

    The conversation is rendered with the tokenizer's chat template. `generate` runs in a background
    thread and hands each new token to a `TextIteratorStreamer`, which decodes the text and queues it;
    this generator reads that queue. When the reader stops early (the Stop button of the web page
    closes the generator), generation stops too. The terminal chat and the web page both answer
    through here. ValueError if the conversation leaves no room in the model's context.
    """
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    room = model.config.max_position_embeddings - prompt_length
    if room < 1:
        raise BadInput(f"The conversation ({prompt_length} tokens) fills the model's context; start a new one.")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop, failures = threading.Event(), []

    def generate() -> None:
        try:
            with torch.no_grad():
                model.generate(
                    **inputs.to(model.device),
                    generation_config=fit_to_context(generation_config, room),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([StopWhenAsked(stop)]),
                )
        except Exception as error:  # handed to the reader below, which would otherwise wait forever
            failures.append(error)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:  # also when the reader closes this generator early
        stop.set()
        thread.join()
    if failures:
        raise failures[0]
