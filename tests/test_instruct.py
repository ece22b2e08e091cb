"""Instruction fine-tuning (stage 7.2): records, chat template, collator, the command and `chat`."""

import json
import logging
import random

import datasets
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

from scratch_gpt.cli import main
from scratch_gpt.inference import chat
from scratch_gpt.inference.chat import stream_reply
from scratch_gpt.tokenizer import format_alpaca_messages
from scratch_gpt.training.instruct import (
    InstructionCollator,
    read_instruction_records,
    to_messages,
    tokenize_conversation,
    tokenize_conversations,
)

BOOK_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA = {"instruction": "Rewrite the word in capitals.", "input": "fox", "output": "FOX"}


@pytest.fixture
def base_dir(make_base_dir):
    """A tiny causal LM folder with the project's tokenizer (chat template included)."""
    return make_base_dir(max_position_embeddings=256)


def toy_records(n: int, seed: int = 0) -> list[dict]:
    """A learnable toy task in both record shapes: the answer is fixed by the instruction."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        word = rng.choice(["fox", "dog", "hello", "world"])
        if rng.random() < 0.5:
            records.append({"instruction": "Rewrite the word in capitals.", "input": word, "output": word.upper()})
        else:
            records.append(
                {"messages": [{"role": "user", "content": f"Say {word}."}, {"role": "assistant", "content": word}]}
            )
    return records


# ----------------------------------------------------------------------------------------- records
def test_alpaca_and_chat_records_become_messages():
    assert to_messages(ALPACA, 0, "d.json") == [
        {"role": "user", "content": "Rewrite the word in capitals.\n\n### Input:\nfox"},
        {"role": "assistant", "content": "FOX"},
    ]
    no_input = {"instruction": "Say hi.", "input": "", "output": "hi"}
    assert to_messages(no_input, 0, "d.json")[0]["content"] == "Say hi."
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert to_messages(chat, 0, "d.json") == chat["messages"]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "x", "completion": "y"}, r"Record 3 of 'd.json' has keys \['completion', 'prompt'\]"),
        ({"instruction": "x"}, "expected Alpaca keys"),
        ({"instruction": "x", "input": 5, "output": "y"}, "'input' must be text"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "must end with an assistant answer"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "'messages' must be a list"),
        ("just text", "is a str, not an object"),
    ],
)
def test_records_of_the_wrong_shape_are_named_in_the_error(record, message):
    with pytest.raises(ValueError, match=message):
        to_messages(record, 3, "d.json")


def test_json_and_jsonl_files_are_read(tmp_path):
    records = toy_records(3)
    (tmp_path / "d.json").write_text(json.dumps(records))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_instruction_records(str(tmp_path / "d.json")) == records
    assert read_instruction_records(str(tmp_path / "d.jsonl")) == records
    (tmp_path / "obj.json").write_text(json.dumps({"instruction": "x"}))
    with pytest.raises(ValueError, match="must hold a list of records"):
        read_instruction_records(str(tmp_path / "obj.json"))
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_instruction_records(str(tmp_path / "bad.jsonl"))


def test_a_hub_dataset_name_is_loaded_with_datasets(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([ALPACA])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_instruction_records("hub:someone/alpaca-mini", split="validation") == [ALPACA]
    assert calls == [("someone/alpaca-mini", "validation")]


# ----------------------------------------------------------------------------------------- template and tokens
def test_training_tokens_are_the_chat_template_rendering_of_the_book_prompt(tiny_tokenizer):
    messages = format_alpaca_messages(ALPACA)
    row = tokenize_conversation(tiny_tokenizer, messages)
    book_prompt = (
        f"{BOOK_SYSTEM}\n\n### Instruction:\nRewrite the word in capitals.\n\n### Input:\nfox\n\n### Response:\n"
    )
    assert tiny_tokenizer.decode(row["input_ids"]) == book_prompt + "FOX<|endoftext|>"
    # inference renders the same prompt: its tokens are exactly the start of the training tokens
    prompt_ids = tiny_tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)["input_ids"]
    assert tiny_tokenizer.decode(prompt_ids) == book_prompt
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids
    answer = [t for t, keep in zip(row["input_ids"], row["assistant_mask"]) if keep]
    assert tiny_tokenizer.decode(answer) == "FOX<|endoftext|>"
    assert row["assistant_mask"] == [0] * len(prompt_ids) + [1] * (len(row["input_ids"]) - len(prompt_ids))


def test_every_answer_of_a_multi_turn_conversation_is_marked(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "Say fox."},
        {"role": "assistant", "content": "fox"},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "fox fox"},
    ]
    row = tokenize_conversation(tiny_tokenizer, messages)
    answer = tiny_tokenizer.decode([t for t, keep in zip(row["input_ids"], row["assistant_mask"]) if keep])
    assert answer == "fox<|endoftext|>fox fox<|endoftext|>"


def test_truncation_warns_once_and_drops_conversations_without_an_answer(tiny_tokenizer, caplog):
    short = format_alpaca_messages({"instruction": "Hi", "output": "yo"})
    long_answer = format_alpaca_messages({"instruction": "Hi", "output": "word " * 200})
    long_prompt = format_alpaca_messages({"instruction": "word " * 200, "output": "yo"})
    prompt_length = len(tokenize_conversation(tiny_tokenizer, short)["input_ids"]) - 3
    max_length = prompt_length + 10
    with caplog.at_level(logging.WARNING):
        rows = tokenize_conversations(tiny_tokenizer, [short, long_answer, long_prompt], max_length)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"2 of 3 conversations are longer than {max_length} tokens and were truncated; "
        "1 of them lost their whole answer and were dropped."
    ]
    assert len(rows) == 2 and max(len(ids) for ids in rows["input_ids"]) == max_length
    with pytest.raises(ValueError, match="No conversation has an answer within"):
        tokenize_conversations(tiny_tokenizer, [long_prompt], max_length)


# ----------------------------------------------------------------------------------------- collator
def test_collator_pads_masks_padding_and_keeps_the_end_of_text_token():
    eos = 0
    rows = [
        {"input_ids": [5, 6, 7, eos], "assistant_mask": [0, 0, 1, 1]},
        {"input_ids": [8, 9, eos], "assistant_mask": [0, 1, 1]},
    ]
    # pad == eos, as with GPT-2's tokenizer: the real end-of-text token must stay a target
    batch = InstructionCollator(pad_token_id=eos)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, eos], [8, 9, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, eos], [8, 9, eos, -100]]

    masked = InstructionCollator(pad_token_id=1, mask_prompt=True)(rows)
    assert masked["input_ids"].tolist() == [[5, 6, 7, eos], [8, 9, eos, 1]]
    assert masked["labels"].tolist() == [[-100, -100, 7, eos], [-100, 9, eos, -100]]


# ----------------------------------------------------------------------------------------- the commands
def run(command, args, capsys):
    code = main([command, *(str(arg) for arg in args)])
    return code, capsys.readouterr()


def test_bad_instruction_file_fails_before_training(base_dir, tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text(json.dumps(ALPACA) + "\n" + json.dumps({"question": "x"}) + "\n")
    code, out = run(
        "finetune-instruct", ["--model", base_dir, "--data", tmp_path / "d.jsonl", "--output", tmp_path / "o"], capsys
    )
    assert code == 2 and "Record 1 of" in out.err and "Traceback" not in out.err
    assert not (tmp_path / "o").exists()
    (tmp_path / "empty.json").write_text("[]")
    code, out = run(
        "finetune-instruct", ["--model", base_dir, "--data", tmp_path / "empty.json", "--output", tmp_path / "o"], capsys
    )
    assert code == 2 and "holds no records" in out.err


def test_a_tokenizer_larger_than_the_models_vocabulary_fails_before_training(base_dir, tiny_tokenizer, tmp_path, capsys):
    config = json.loads((base_dir / "config.json").read_text())
    (base_dir / "config.json").write_text(json.dumps({**config, "vocab_size": len(tiny_tokenizer) - 1}))
    (tmp_path / "d.json").write_text(json.dumps(toy_records(10)))
    code, out = run("finetune-instruct", ["--model", base_dir, "--data", tmp_path / "d.json", "--output", tmp_path / "o"], capsys)
    assert code == 2 and f"The tokenizer has {len(tiny_tokenizer)} tokens but the model in" in out.err
    assert "Traceback" not in out.err and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_finetune_instruct_lowers_masked_loss_and_chat_streams_the_answer(base_dir, tmp_path, capsys):
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_records(40)))
    out = tmp_path / "instruct"
    args = [
        "--model",
        base_dir,
        "--data",
        tmp_path / "toy.jsonl",
        "--output",
        out,
        "--mask-prompt",
        "--lr",
        "5e-3",
        "--max-steps",
        "40",
        "--batch-size",
        "8",
        "--max-new-tokens",
        "6",
        "--no-progress",
    ]
    code, printed = run("finetune-instruct", args, capsys)
    assert code == 0, printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] < 0.6 * metrics["initial_eval_loss"]  # about 6.0 -> 1.8 nats

    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4  # 10% of 40 held out
    assert all({"messages", "reference", "answer"} <= set(a) for a in answers)
    generation = GenerationConfig.from_pretrained(out)
    assert (generation.eos_token_id, generation.max_new_tokens) == (0, 6)

    # `chat --prompt` streams the greedy answer to the template-rendered prompt
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Say fox."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    expected = tokenizer.decode(model.generate(**inputs)[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    code, printed = run("chat", [out, "--prompt", "Say fox."], capsys)
    assert code == 0 and printed.out.strip() == expected.strip()
    # pipeline("text-generation") with messages renders the same prompt
    generator = pipeline("text-generation", model=out)
    reply = generator(messages)[0]["generated_text"][-1]
    assert reply == {"role": "assistant", "content": expected}


@pytest.mark.slow
def test_lora_instruct_saves_an_adapter_that_chat_loads(base_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "toy.json").write_text(json.dumps(toy_records(20)))
    out = tmp_path / "adapter"
    args = [
        "--model",
        base_dir,
        "--data",
        tmp_path / "toy.json",
        "--output",
        out,
        "--lora",
        "--lora-targets",
        "qkv_proj,fc_in",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-new-tokens",
        "3",
        "--no-progress",
    ]
    code, printed = run("finetune-instruct", args, capsys)
    assert code == 0, printed.err
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"qkv_proj", "fc_in"}
    assert (out / "generation_config.json").is_file() and (out / "tokenizer.json").is_file()

    # interactive chat: two turns, then an empty line ends it; the second turn sees the first
    lines = iter(["Say fox.", "Again.", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    seen = []

    def recording_reply(model, tokenizer, messages, generation_config):
        seen.append([m["content"] for m in messages])
        return stream_reply(model, tokenizer, messages, generation_config)

    monkeypatch.setattr(chat, "stream_reply", recording_reply)
    code, printed = run("chat", [out], capsys)
    assert code == 0
    assert len(seen) == 2 and seen[0] == ["Say fox."]
    assert seen[1][0] == "Say fox." and seen[1][2] == "Again." and len(seen[1]) == 3
