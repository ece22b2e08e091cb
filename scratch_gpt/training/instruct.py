"""Instruction fine-tuning (stage 7.2): `scratch-gpt finetune-instruct` and `scratch-gpt chat`.

The prompt format lives in ONE place, the tokenizer's chat template (see `scratch_gpt.tokenizer`):
training renders each conversation with `apply_chat_template`, and so do `scratch-gpt chat` and
`pipeline("text-generation")` called with messages, so the model sees at inference exactly the
text it was trained on. The steps of `finetune-instruct`, top to bottom:

1. read records, Alpaca-shaped (`instruction`, optional `input`, `output`) or chat-shaped
   (`messages`: a list of `{"role", "content"}`), and check each one;
2. render and tokenize every conversation, marking which tokens belong to assistant answers;
3. train with the shared loop; `InstructionCollator` pads each batch and builds the labels
   (padding -> -100, optionally the prompt -> -100 so only the answers are learned);
4. report the held-out loss, write the model's answers to the held-out instructions to
   `answers.jsonl`, and save model (or LoRA adapter), tokenizer, generation config and card.
"""

import argparse
import copy
import json
import logging
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
    set_seed,
)

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.convert import add_trust_remote_code_flag, load_pretrained
from scratch_gpt.errors import BadInput, MissingFile
from scratch_gpt.io_utils import check_model_folder
from scratch_gpt.lora import check_lora_arguments, describe_trainable, lora_config_from_args
from scratch_gpt.sources import read_records
from scratch_gpt.tokenizer import complete_tokenizer, format_alpaca_messages
from scratch_gpt.training.finetune import (
    build_finetune_parser,
    card_writer,
    hold_out,
    load_base_tokenizer,
    max_length_for,
)
from scratch_gpt.training.loop import check_output_dir, process_state, train
from scratch_gpt.training.options import from_args, run_command
from scratch_gpt.training.sharding import gathered_root, is_sharded

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label value the loss skips


# ----------------------------------------------------------------------------------------------
# 1. Records -> conversations
# ----------------------------------------------------------------------------------------------
def read_instruction_records(source, *, split: str = "train", **options) -> list[dict]:
    """The records of `source` (see `scratch_gpt.sources.read_records`), each with only the keys it has.

    A Dataset gives every record every column (None where a record has none), so Alpaca records
    and chat records can share one file; the None values are dropped to give each back its shape.
    """
    rows = read_records(source, split=split, **options).to_list()
    return [{key: value for key, value in row.items() if value is not None} for row in rows]


def to_messages(record, index: int, source: str) -> list[dict]:
    """One record as chat messages ending with the assistant's answer; ValueError naming the record."""
    where = f"Record {index} of {source!r}"
    if not isinstance(record, dict):
        raise BadInput(f"{where} is a {type(record).__name__}, not an object with instruction/output or messages.")
    if "messages" in record:
        messages = record["messages"]
        valid = isinstance(messages, list) and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
        )
        if not valid:
            raise BadInput(
                f"{where}: 'messages' must be a list of {{'role': one of {ROLES}, 'content': text}} objects."
            )
        if any(m["role"] == "system" for m in messages[1:]):
            raise BadInput(f"{where}: a 'system' message may only come first; move it to the start of 'messages'.")
        if not messages or messages[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in messages):
            raise BadInput(f"{where}: the messages need a user turn and must end with an assistant answer.")
        return messages
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        if not isinstance(record.get("input") or "", str):
            raise BadInput(f"{where}: 'input' must be text.")
        return format_alpaca_messages(record)
    raise BadInput(
        f"{where} has keys {sorted(record)}; expected Alpaca keys 'instruction' and 'output' (and an optional "
        "'input') as text, or a 'messages' list."
    )


# ----------------------------------------------------------------------------------------------
# 2. Conversations -> tokens
# ----------------------------------------------------------------------------------------------
def tokenize_conversation(tokenizer, messages: list[dict]) -> dict:
    """`input_ids` of the rendered conversation and `assistant_mask` (1 = token of an answer).

    An answer spans from the end of the prompt rendered up to it (with the generation prompt) to
    the end of the conversation rendered through it, so it includes the end-of-text token the
    template puts after every answer. Tokens are matched to spans by their character offsets.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = [
        (
            len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)),
            len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)),
        )
        for i, message in enumerate(messages)
        if message["role"] == "assistant"
    ]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assistant_mask = [
        int(any(end > span_start and start < span_end for span_start, span_end in spans))
        for start, end in encoding["offset_mapping"]
    ]
    input_ids = encoding["input_ids"]
    if input_ids[-1] != tokenizer.eos_token_id:  # a template that does not close answers: close the last one
        input_ids, assistant_mask = input_ids + [tokenizer.eos_token_id], assistant_mask + [1]
    return {"input_ids": input_ids, "assistant_mask": assistant_mask}


def tokenize_conversations(tokenizer, conversations: list[list[dict]], max_length: int) -> datasets.Dataset:
    """Tokenize all; cut to `max_length` with ONE warning; drop those left without any answer token.

    Each row keeps `record`, the index of its conversation in `conversations`.
    """
    rows = [tokenize_conversation(tokenizer, messages) for messages in conversations]
    truncated = sum(len(row["input_ids"]) > max_length for row in rows)
    rows = [
        {"record": index, **{key: values[:max_length] for key, values in row.items()}} for index, row in enumerate(rows)
    ]
    kept = [row for row in rows if any(row["assistant_mask"])]
    if truncated:
        logger.warning(
            "%d of %d conversations are longer than %d tokens and were truncated; %d of them lost their whole "
            "answer and were dropped.",
            truncated,
            len(rows),
            max_length,
            len(rows) - len(kept),
        )
    if not kept:
        raise BadInput(
            f"No conversation has an answer within {max_length} tokens; raise --max-length or shorten the data."
        )
    return datasets.Dataset.from_list(kept)


# ----------------------------------------------------------------------------------------------
# 3. The collator
# ----------------------------------------------------------------------------------------------
@dataclass
class InstructionCollator:
    """Pads a list of tokenized conversations into a batch for a causal LM.

    `labels` are the input ids (the model shifts them by one) with -100 on padding, so each
    sequence keeps exactly its own end-of-text token as a target even when the pad token is the
    end-of-text token; with `mask_prompt` the prompt tokens are -100 too and only answers are learned.
    """

    pad_token_id: int
    mask_prompt: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
            if self.mask_prompt:
                ids = ids.masked_fill(~torch.as_tensor(row["assistant_mask"], dtype=torch.bool), IGNORE_INDEX)
            labels[i, : len(ids)] = ids
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ----------------------------------------------------------------------------------------------
# 4. Answers to held-out instructions
# ----------------------------------------------------------------------------------------------
def fit_to_context(generation_config: GenerationConfig, room: int) -> GenerationConfig:
    """A copy that generates at most `room` new tokens (what is left of the context)."""
    config = copy.deepcopy(generation_config)
    config.max_new_tokens = min(config.max_new_tokens or room, room)
    return config


@torch.no_grad()
def generate_answers(model, tokenizer, conversations: list[list[dict]], generation_config, batch_size: int = 8):
    """Greedy answers to each conversation's prompt (everything before its last answer)."""
    model.eval()
    device = next(model.parameters()).device
    prompts = [
        tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        for messages in conversations
    ]
    answers = []
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(
            prompts[start : start + batch_size],
            add_special_tokens=False,
            padding=True,
            padding_side="left",  # new tokens follow every prompt directly
            return_tensors="pt",
        ).to(device)
        room = model.config.max_position_embeddings - inputs["input_ids"].shape[1]
        if room < 1:
            answers += [""] * len(inputs["input_ids"])  # the prompt alone fills the context
            continue
        # synced_gpus: under FSDP every process runs each step's forward, until all are done
        output = model.generate(**inputs, generation_config=fit_to_context(generation_config, room), synced_gpus=is_sharded(model))
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return answers


def write_answers(path: Path, conversations: list[list[dict]], answers: list[str]) -> None:
    """One JSON object per held-out conversation: the prompt messages, the reference and the model's answer."""
    with path.open("w", encoding="utf-8") as file:
        for messages, answer in zip(conversations, answers):
            record = {"messages": messages[:-1], "reference": messages[-1]["content"], "answer": answer}
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# finetune-instruct
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = build_finetune_parser(
        "scratch-gpt finetune-instruct",
        "Instruction-tune a pre-trained ScratchGPT folder on Alpaca-style or chat records.",
        data_help="a .json / .jsonl file of records {instruction, input?, output} or {messages}, or a Hub dataset name",
        num_epochs=2,
        learning_rate=5e-5,
        batch_size=8,
    )
    head = parser.add_argument_group("instructions")
    head.add_argument("--mask-prompt", action="store_true", help="learn only the answers (prompt labels = -100)")
    head.add_argument(
        "--max-new-tokens", type=int, default=256, help="answer length in the saved generation config (default: 256)"
    )
    head.add_argument(
        "--max-answers", type=int, default=100, help="held-out instructions to answer in answers.jsonl (default: 100)"
    )
    return parser


def cli(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, finetune_instruct)


def make_trainable(model, args: argparse.Namespace):
    """LoRA adapters with `--lora`, else every weight trains."""
    return get_peft_model(model, lora_config_from_args(args, task="causal")) if args.lora else model


def finetune_instruct(args: argparse.Namespace, *, make_trainable=make_trainable) -> dict:
    """The whole command; returns its metrics. `make_trainable(model, args)` may swap the model
    (the benchmark passes transformers' GPT-2 with the same weights)."""
    check_lora_arguments(args)
    if not 0.0 < args.val_fraction < 1.0:
        raise BadInput(f"--val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}.")
    config = from_args(args)
    check_output_dir(config, inputs=[args.model, args.data])  # before any work: never over an input
    state = process_state()  # this process among those `accelerate launch` started (one by default)
    tokenizer = load_base_tokenizer(args.model, args.trust_remote_code)  # GPT-2's gains a pad token and the Alpaca chat template

    # 1. records -> conversations -> tokens cut to the context, all checked before the model loads
    records = read_instruction_records(args.data, split=args.split, encoding=args.encoding, errors=args.encoding_errors)
    if not records:
        raise BadInput(f"{args.data!r} holds no records; pass at least two instruction records.")
    conversations = [to_messages(record, index, args.data) for index, record in enumerate(records)]
    max_length = max_length_for(args, tokenizer)
    rows = tokenize_conversations(tokenizer, conversations, max_length)

    # 2. a seeded held-out split
    train_set, val_set = hold_out(rows, args.val_fraction, args.seed, "conversations")
    answered = [conversations[index] for index in val_set["record"]][: args.max_answers]
    state.print(f"{len(train_set)} training and {len(val_set)} held-out conversations")

    set_seed(args.seed)  # LoRA adapters start the same way every run
    generation_config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    def build_model():  # called by the loop, in its build context (under FSDP the main process reads the weights)
        model = load_pretrained(ScratchGPTForCausalLM.from_pretrained, args.model, trust_remote_code=args.trust_remote_code)  # GPT-2 / Llama / Qwen are converted
        model.generation_config = generation_config
        model = make_trainable(model, args)
        state.print(describe_trainable(model))
        return model

    # 3-4. the shared loop (its evaluations, before and after, are the held-out loss), then one
    # save that also holds the answers to the held-out instructions
    # The answers are generated by every process (under FSDP each holds a slice of the model and they
    # run the forward passes together), then written by the main one into the saved folder.
    answers = []

    def answer_held_out(trained) -> None:
        with gathered_root(trained):
            answers[:] = generate_answers(trained, tokenizer, answered, generation_config, batch_size=args.batch_size)

    def write_answers_and_generation_config(folder: Path) -> None:
        write_answers(folder / "answers.jsonl", answered, answers)
        generation_config.save_pretrained(folder)

    metrics = train(
        build_model,
        train_set,
        val_set,
        config,
        collate_fn=InstructionCollator(tokenizer.pad_token_id, mask_prompt=args.mask_prompt),
        tokenizer=tokenizer,
        final_dir=config.output_dir,
        before_save=answer_held_out,
        on_save=card_writer(args, "instruct", extra=write_answers_and_generation_config),
        merge_adapters=args.save_merged,
        seq_len=max_length,
    )
    state.print(
        f"held-out loss {metrics['initial_eval_loss']:.4f} before, {metrics['eval_loss']:.4f} after fine-tuning"
    )
    output = Path(config.output_dir)
    state.print(f"saved to {output} (answers to {len(answered)} held-out instructions in {output / 'answers.jsonl'})")
    return metrics


# ----------------------------------------------------------------------------------------------
# chat
# ----------------------------------------------------------------------------------------------
def load_for_chat(model_dir: str, trust_remote_code: bool = False):
    """Model, tokenizer and generation config of `model_dir`: a folder or Hub id of a ScratchGPT or a
    GPT-2 checkpoint (converted; its tokenizer completed with the Alpaca chat template), or a LoRA
    adapter folder (its base model loaded the same way). Code shipped in the folder runs only with
    `trust_remote_code`."""
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
        model = PeftModel.from_pretrained(base, model_dir).eval()
    else:
        model = load_pretrained(ScratchGPTForCausalLM.from_pretrained, model_dir, trust_remote_code=trust_remote_code).eval()
    saved = (Path(model_dir) / "generation_config.json").is_file()
    generation_config = GenerationConfig.from_pretrained(model_dir) if saved else copy.deepcopy(model.generation_config)
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, generation_config


def chat_generation_config(
    generation_config: GenerationConfig, *, max_new_tokens: int | None = None, temperature: float = 0.0, top_k: int = 50
) -> GenerationConfig:
    """A copy of the model's generation config with the chat settings: greedy at temperature 0,
    else sampling with `temperature` from the `top_k` likeliest tokens (0 = all); `max_new_tokens`
    replaces the saved answer length when given."""
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

    The conversation is rendered with the tokenizer's chat template. `generate` runs in a
    background thread and hands each new token to a `TextIteratorStreamer`, which decodes the
    text and queues it; this generator reads that queue. When the reader stops early (the Stop
    button of the web page closes the generator), generation stops too. Both `scratch-gpt chat`
    (the terminal) and the web page (`scratch_gpt.web`) answer through here. ValueError if the
    conversation leaves no room in the model's context.
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


def stream_reply(model, tokenizer, messages: list[dict], generation_config) -> str:
    """Print the answer to `messages` piece by piece as it is generated; return it."""
    answer = ""
    for piece in reply_pieces(model, tokenizer, messages, generation_config):
        print(piece, end="", flush=True)
        answer += piece
    print()
    return answer


def build_chat_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratch-gpt chat",
        description="Chat with an instruction-tuned model; answers stream token by token. "
        "Interactive unless --prompt is given; an empty line or Ctrl-D ends, /reset forgets the conversation. "
        "--web serves the chat as a page in the browser instead (needs pip install 'scratch_gpt[web]').",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="output folder of finetune-instruct (model or adapter)")
    parser.add_argument("--prompt", default=None, help="answer this one instruction and exit")
    parser.add_argument("--system", default=None, help="system prompt (default: the template's)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="longest answer (default: the generation config's)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k likeliest tokens (with --temperature)")
    add_trust_remote_code_flag(parser)
    web = parser.add_argument_group("web page")
    web.add_argument("--web", action="store_true", help="serve the chat as a web page (Gradio) instead of the terminal")
    web.add_argument("--host", default="127.0.0.1", help="address the page listens on (default: 127.0.0.1, this machine only)")
    web.add_argument("--port", type=int, default=7860, help="port of the page (default: 7860)")
    return parser


def chat_cli(argv: list[str] | None = None) -> int:
    return run_command(build_chat_parser(), argv, chat)


def chat(args: argparse.Namespace) -> None:
    """`scratch-gpt chat`: bad input (folder, prompt too long, --web without Gradio) is one sentence via `run_command`."""
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise BadInput(f"--temperature must be 0 (greedy) or a positive number, got {args.temperature}.")
    if args.web:
        if args.prompt is not None:
            raise BadInput("--web and --prompt do not go together; drop --prompt and type the message in the page.")
        from scratch_gpt import web

        web.import_gradio()  # a missing extra is reported before the model loads
    model, tokenizer, saved_config = load_for_chat(args.model_dir, args.trust_remote_code)
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k}
    if args.web:
        page = web.chat_page(model, tokenizer, saved_config, system=args.system, **settings)
        web.serve(page, host=args.host, port=args.port)
        return
    generation_config = chat_generation_config(saved_config, **settings)
    system = [{"role": "system", "content": args.system}] if args.system else []

    if args.prompt is not None:
        stream_reply(model, tokenizer, [*system, {"role": "user", "content": args.prompt}], generation_config)
        return

    history: list[dict] = []
    while True:
        try:
            line = input("\n>>> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        try:
            answer = stream_reply(model, tokenizer, [*system, *history], generation_config)
        except ValueError as error:
            print(f"{error}", file=sys.stderr)
            history = []
            continue
        history.append({"role": "assistant", "content": answer})
