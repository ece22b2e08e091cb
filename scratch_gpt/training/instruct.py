"""Instruction fine-tuning (stage 7.2): `scratch-gpt finetune-instruct`.

The prompt format lives in ONE place, the tokenizer's chat template (see `scratch_gpt.tokenizer`):
training renders each conversation with `apply_chat_template`, and so do `scratch-gpt chat`
(`scratch_gpt.inference`) and `pipeline("text-generation")` called with messages, so the model sees
at inference exactly the text it was trained on. The steps of `finetune-instruct`, top to bottom:

1. read records, Alpaca-shaped (`instruction`, optional `input`, `output`) or chat-shaped
   (`messages`: a list of `{"role", "content"}`), and check each one;
2. render and tokenize every conversation, marking which tokens belong to assistant answers;
3. train with the shared loop; `InstructionCollator` pads each batch and builds the labels
   (padding -> -100, optionally the prompt -> -100 so only the answers are learned);
4. report the held-out loss, write the model's answers to the held-out instructions to
   `answers.jsonl`, and save model (or LoRA adapter), tokenizer, generation config and card.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from peft import get_peft_model
from tqdm.auto import tqdm
from transformers import GenerationConfig, set_seed

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.args import InstructOptions
from scratch_gpt.convert import load_pretrained
from scratch_gpt.errors import BadInput
from scratch_gpt.inference.generation import fit_to_context
from scratch_gpt.lora import describe_trainable, lora_config_for
from scratch_gpt.sources import read_records
from scratch_gpt.tokenizer import format_alpaca_messages
from scratch_gpt.training.finetune import (
    ROLES,
    card_writer,
    hold_out,
    is_messages,
    load_base_tokenizer,
    max_length_for,
    pad_batch,
    with_base_defaults,
)
from scratch_gpt.training.loop import check_output_dir, process_state, train
from scratch_gpt.training.sharding import gathered_root, is_sharded

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# 1. Records -> conversations
def read_instruction_records(source, *, split: str = "train", **options) -> list[dict]:
    """The records of `source` (see `scratch_gpt.sources.read_records`), each with only the keys it has:
    a Dataset gives every record every column (None where a record has none), so Alpaca records and
    chat records can share one file; the None values are dropped to give each back its shape."""
    rows = read_records(source, split=split, **options).to_list()
    return [{key: value for key, value in row.items() if value is not None} for row in rows]


def to_messages(record, index: int, source: str) -> list[dict]:
    """One record as chat messages ending with the assistant's answer; ValueError naming the record."""
    where = f"Record {index} of {source!r}"
    if not isinstance(record, dict):
        raise BadInput(f"{where} is a {type(record).__name__}, not an object with instruction/output or messages.")
    if "messages" in record:
        messages = record["messages"]
        if not is_messages(messages):
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
def tokenize_conversation(tokenizer, messages: list[dict]) -> dict:
    """`input_ids` of the rendered conversation and `assistant_mask` (1 = token of an answer).
    An answer spans from the end of the prompt rendered up to it (with the generation prompt) to
    the end of the conversation rendered through it, so it includes the end-of-text token the
    template puts after every answer. Tokens are matched to spans by their character offsets."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)

    def rendered_length(count: int, **options) -> int:  # of the first `count` messages
        return len(tokenizer.apply_chat_template(messages[:count], tokenize=False, **options))

    answers = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    spans = [(rendered_length(i, add_generation_prompt=True), rendered_length(i + 1)) for i in answers]
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
    Each row keeps `record`, the index of its conversation in `conversations`."""
    rows = [tokenize_conversation(tokenizer, messages) for messages in conversations]
    truncated = sum(len(row["input_ids"]) > max_length for row in rows)
    rows = [{"record": i, **{key: values[:max_length] for key, values in row.items()}} for i, row in enumerate(rows)]
    kept = [row for row in rows if any(row["assistant_mask"])]
    if truncated:
        logger.warning(
            f"{truncated} of {len(rows)} conversations are longer than {max_length} tokens and were truncated; "
            f"{len(rows) - len(kept)} of them lost their whole answer and were dropped."
        )
    if not kept:
        raise BadInput(
            f"No conversation has an answer within {max_length} tokens; raise --max-length or shorten the data."
        )
    return datasets.Dataset.from_list(kept)


# ----------------------------------------------------------------------------------------------
# 3. The collator
@dataclass
class InstructionCollator:
    """Pads tokenized conversations into a batch for a causal LM (`finetune.pad_batch`); with
    `mask_prompt` the prompt tokens are no labels either and only the answers are learned."""

    pad_token_id: int
    mask_prompt: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [(row["input_ids"], row["assistant_mask"] if self.mask_prompt else None) for row in rows]
        return pad_batch(sequences, self.pad_token_id)


# ----------------------------------------------------------------------------------------------
# 4. Answers to held-out instructions
@torch.no_grad()
def generate_answers(model, tokenizer, conversations: list[list[dict]], generation_config, batch_size: int = 8, progress=False):
    """Greedy answers to each conversation's prompt (everything before its last answer); `progress`: a bar."""
    model.eval()
    device = next(model.parameters()).device
    prompts = [tokenizer.apply_chat_template(m[:-1], tokenize=False, add_generation_prompt=True) for m in conversations]
    answers = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=f"answering {len(prompts)} held-out instructions", disable=not progress, dynamic_ncols=True):
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
        config = fit_to_context(generation_config, room)
        # synced_gpus: under FSDP every process runs each step's forward, until all are done
        output = model.generate(**inputs, generation_config=config, synced_gpus=is_sharded(model))
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
def make_trainable(model, args: InstructOptions):
    """LoRA adapters with `--lora`, else every weight trains. (`scripts/bench_finetune.py` patches this
    function to swap in transformers' GPT-2 with the same weights.)"""
    return get_peft_model(model, lora_config_for(args, task="causal")) if args.lora else model


def read_conversations(args: InstructOptions, tokenizer) -> tuple[list[list[dict]], datasets.Dataset, int]:
    """The records of `--data` as checked conversations, their tokens cut to the token budget, and the budget."""
    records = read_instruction_records(args.data, split=args.split, encoding=args.encoding, errors=args.encoding_errors)
    if not records:
        raise BadInput(f"{args.data!r} holds no records; pass at least two instruction records.")
    conversations = [to_messages(record, index, args.data) for index, record in enumerate(records)]
    max_length = max_length_for(args.model, args.max_length, tokenizer)
    return conversations, tokenize_conversations(tokenizer, conversations, max_length), max_length


def model_factory(args: InstructOptions, generation_config: GenerationConfig, state):
    """What the trainer calls, in its build context, to build the model: the base model (GPT-2 /
    Llama / Qwen are converted) with the generation config saved with the result, then what trains."""

    def build():
        model = load_pretrained(ScratchGPTForCausalLM.from_pretrained, args.model, trust_remote_code=args.trust_remote_code)
        model.generation_config = generation_config
        model = make_trainable(model, args)
        state.print(describe_trainable(model))
        return model

    return build


def answer_hooks(generation_config: GenerationConfig, tokenizer, answered: list[list[dict]], batch_size: int, progress: bool):
    """The loop's `before_save` and the save's `extra` step for the answers to the held-out instructions:
    generated by every process (under FSDP they run the forward passes together), then written by the
    main one into the saved folder, next to the generation config."""
    answers = []

    def answer_held_out(trained) -> None:
        with gathered_root(trained):
            answers[:] = generate_answers(trained, tokenizer, answered, generation_config, batch_size, progress)

    def write_answers_and_config(folder: Path) -> None:
        write_answers(folder / "answers.jsonl", answered, answers)
        generation_config.save_pretrained(folder)

    return answer_held_out, write_answers_and_config


def finetune_instruct(args: InstructOptions) -> dict:
    """The whole command; returns its metrics."""
    args = with_base_defaults(args, "instruct")  # --lr, when not given
    config = args.training()
    check_output_dir(config, inputs=[args.model, args.data])  # before any work: never over an input
    state = process_state()  # this process among those `accelerate launch` started (one by default)
    tokenizer = load_base_tokenizer(args.model, args.trust_remote_code)

    # 1. records -> conversations -> tokens cut to the context, all checked before the model loads
    conversations, rows, max_length = read_conversations(args, tokenizer)

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

    # 3-4. the shared loop trains; its evaluations are the held-out loss; the save holds the answers too
    show = args.progress and state.is_local_main_process
    answer_held_out, write_answers_and_config = answer_hooks(generation_config, tokenizer, answered, args.batch_size, show)
    metrics = train(
        model_factory(args, generation_config, state),
        train_set,
        val_set,
        config,
        collate_fn=InstructionCollator(tokenizer.pad_token_id, mask_prompt=args.mask_prompt),
        tokenizer=tokenizer,
        final_dir=config.output_dir,
        before_save=answer_held_out,
        on_save=card_writer(args, "instruct", extra=write_answers_and_config),
        merge_adapters=args.save_merged,
        seq_len=max_length,
    )
    state.print(
        f"held-out loss {metrics['initial_eval_loss']:.4f} before, {metrics['eval_loss']:.4f} after fine-tuning"
    )
    output = Path(config.output_dir)
    state.print(f"saved to {output} (answers to {len(answered)} held-out instructions in {output / 'answers.jsonl'})")
    return metrics
