"""Preference tuning with DPO (stage 7.3): records, masking, the loss by hand, the reference, the command."""

import json
import math
import random
import re

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from scratch_gpt.cli import main
from scratch_gpt.lora import lora_config
from scratch_gpt.tokenizer import format_alpaca_messages
from scratch_gpt.training import dpo
from scratch_gpt.training.dpo import (
    DPOModel,
    PreferenceCollator,
    answer_logprobs,
    dpo_loss,
    to_pair,
    tokenize_answer,
)

BOOK = {"instruction": "Rewrite the word in capitals.", "input": "fox", "chosen": "FOX", "rejected": "fox"}
CONVERSATIONAL = {
    "prompt": [{"role": "user", "content": "Say fox."}],
    "chosen": [{"role": "assistant", "content": "FOX"}],
    "rejected": [{"role": "assistant", "content": "dog"}],
}
PLAIN = {"prompt": "Q: Say fox.\nA:", "chosen": " FOX", "rejected": " dog"}


@pytest.fixture
def base_dir(make_base_dir):
    """A tiny causal-LM folder (random weights, context 256) with the project's tokenizer and chat template."""
    return make_base_dir(max_position_embeddings=256)


@pytest.fixture
def base_model(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir)


def toy_preferences(n: int, seed: int = 0) -> list[dict]:
    """The chosen answer is the word in capitals, the rejected one another word."""
    rng = random.Random(seed)
    words = ["fox", "dog", "hello", "world"]
    records = []
    for _ in range(n):
        word = rng.choice(words)
        other = rng.choice([w for w in words if w != word])
        records.append({"instruction": "Rewrite the word in capitals.", "input": word, "chosen": word.upper(), "rejected": other})
    return records


# ----------------------------------------------------------------------------------------- the loss by hand
def test_dpo_loss_is_the_formula_evaluated_by_hand():
    beta = 0.1
    policy_chosen, policy_rejected, reference_chosen, reference_rejected = -5.0, -7.0, -6.0, -6.5
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        *(torch.tensor([x]) for x in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)), beta
    )
    # rewards: 0.1 * (-5 + 6) = 0.1 and 0.1 * (-7 + 6.5) = -0.05; loss = -log sigmoid(0.15)
    assert chosen_rewards.item() == pytest.approx(0.1)
    assert rejected_rewards.item() == pytest.approx(-0.05)
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.15))), abs=1e-7)
    assert losses.item() == pytest.approx(0.620957, abs=1e-6)
    # equal log-ratios: loss ln 2 whatever beta
    losses, _, _ = dpo_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-4.0]), 5.0)
    assert losses.item() == pytest.approx(math.log(2))


def test_answer_logprobs_sum_only_the_answer_tokens():
    # vocabulary of 3; one sequence [prompt 2, prompt 0, answer 1, answer 2, padding]
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[-100, -100, 1, 2, -100]])

    def log_softmax(row, token):
        return row[token] - math.log(sum(math.exp(x) for x in row))

    # the logits at t predict the token at t + 1: positions 1 and 2 predict the two answer tokens
    expected = log_softmax([0.5, 0.5, 3.0], 1) + log_softmax([2.0, 0.0, 1.0], 2)
    assert answer_logprobs(logits, labels).item() == pytest.approx(expected, abs=1e-6)

    # what the logits say about prompt and padding positions changes nothing
    changed = logits.clone()
    changed[0, 0] = torch.tensor([-4.0, 7.0, 1.0])
    changed[0, 3:] = 42.0
    assert answer_logprobs(changed, labels).item() == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------------- data
def test_the_three_record_shapes_become_pairs():
    assert to_pair(BOOK, 0, "p.json") == {
        "prompt": [{"role": "user", "content": "Rewrite the word in capitals.\n\n### Input:\nfox"}],
        "chosen": [{"role": "assistant", "content": "FOX"}],
        "rejected": [{"role": "assistant", "content": "fox"}],
    }
    assert to_pair({**BOOK, "output": "FOX"}, 0, "p.json") == to_pair(BOOK, 0, "p.json")  # the book's `output` is unused
    assert to_pair(CONVERSATIONAL, 0, "p.json") == CONVERSATIONAL
    assert to_pair(PLAIN, 0, "p.json") == PLAIN


@pytest.mark.parametrize(
    "record, message",
    [
        ({"instruction": "x", "rejected": "b"}, "Record 4 of 'p.json' has no 'chosen' answer"),
        ({"prompt": "x", "chosen": "a"}, "Record 4 of 'p.json' has no 'rejected' answer"),
        ({"instruction": "x", "chosen": "a", "rejected": "a"}, "Record 4 of 'p.json' has the same 'chosen' and 'rejected'"),
        ({"question": "x", "chosen": "a", "rejected": "b"}, r"has keys \['chosen', 'question', 'rejected'\]"),
        ({"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "must be text too"),
        ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "lists of {'role', 'content'}"),
    ],
)
def test_bad_records_are_named(record, message):
    with pytest.raises(ValueError, match=message):
        to_pair(record, 4, "p.json")


def test_identical_pairs_are_found_for_skip_identical():
    records = [BOOK, {**BOOK, "rejected": "FOX"}, PLAIN, {**PLAIN, "chosen": " dog"}]
    assert dpo.identical_pairs(records) == [1, 3]
    with pytest.raises(ValueError, match="pass --skip-identical"):
        to_pair(records[1], 1, "p.json")


def test_only_the_answer_and_its_end_of_text_token_are_marked(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    book = to_pair(BOOK, 0, "p.json")
    tokens = tokenize_answer(tiny_tokenizer, book["prompt"], book["chosen"])
    answer = [t for t, m in zip(tokens["input_ids"], tokens["answer_mask"]) if m]
    prompt = [t for t, m in zip(tokens["input_ids"], tokens["answer_mask"]) if not m]
    assert answer[-1] == eos and tiny_tokenizer.decode(answer[:-1]) == "FOX"
    # the prompt is the book's Alpaca prompt, as the chat template renders it
    assert tiny_tokenizer.decode(prompt) == tiny_tokenizer.apply_chat_template(
        book["prompt"], tokenize=False, add_generation_prompt=True
    )
    assert tokens["answer_mask"] == sorted(tokens["answer_mask"])  # prompt first, then the answer

    tokens = tokenize_answer(tiny_tokenizer, PLAIN["prompt"], PLAIN["rejected"])  # plain text: no template
    answer = [t for t, m in zip(tokens["input_ids"], tokens["answer_mask"]) if m]
    assert tiny_tokenizer.decode(tokens["input_ids"][: -len(answer)]) == PLAIN["prompt"]
    assert tiny_tokenizer.decode(answer[:-1]) == " dog" and answer[-1] == eos


def test_collator_stacks_chosen_then_rejected_and_labels_only_answers():
    rows = [
        {"chosen_input_ids": [5, 6, 7], "chosen_answer_mask": [0, 1, 1], "rejected_input_ids": [5, 8], "rejected_answer_mask": [0, 1]},
        {"chosen_input_ids": [4, 9], "chosen_answer_mask": [0, 1], "rejected_input_ids": [4, 3, 2, 1], "rejected_answer_mask": [0, 0, 1, 1]},
    ]
    batch = PreferenceCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [4, 9, 0, 0], [5, 8, 0, 0], [4, 3, 2, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [-100, 9, -100, -100], [-100, 8, -100, -100], [-100, -100, 2, 1]]


# ----------------------------------------------------------------------------------------- the reference
def toy_batch(tokenizer, n: int = 4):
    pairs = [to_pair(record, i, "toy") for i, record in enumerate(toy_preferences(n))]
    rows = dpo.tokenize_pairs(tokenizer, pairs, max_length=256)
    return PreferenceCollator(tokenizer.pad_token_id)(rows.to_list())


def storages(module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


def test_the_reference_is_a_frozen_copy_and_the_loss_starts_at_ln2(base_model, tiny_tokenizer):
    model = DPOModel(base_model, beta=0.1).train()
    assert model.reference.training is False and model.policy.training is True
    assert not any(p.requires_grad for p in model.reference.parameters())
    assert storages(model.reference).isdisjoint(storages(model.policy))  # a second set of weights

    batch = toy_batch(tiny_tokenizer)
    output = model(**batch)
    assert output.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert output.chosen_rewards.abs().max().item() < 1e-6

    before = [p.clone() for p in model.reference.parameters()]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    output.loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.reference.parameters()))  # the reference stays
    assert model(**batch).loss.item() < math.log(2)  # one step towards the chosen answers


def test_with_lora_the_reference_is_the_adapter_disabled_base_without_a_copy(base_model, tiny_tokenizer):
    batch = toy_batch(tiny_tokenizer)
    with torch.no_grad():
        base_logps = answer_logprobs(base_model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    policy = get_peft_model(base_model, lora_config(task="causal"))
    model = DPOModel(policy, beta=0.1)
    assert model.reference is None and storages(model) == storages(policy)  # no second set of weights
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in policy.parameters())

    with torch.no_grad():  # move the adapters: the policy changes, the reference does not
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        reference_logps = answer_logprobs(model.reference_logits(inputs), batch["labels"])
        policy_logps = answer_logprobs(policy(**inputs).logits, batch["labels"])
    assert torch.allclose(reference_logps, base_logps, atol=1e-5)
    assert not torch.allclose(policy_logps, base_logps, atol=1e-3)
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())


# ----------------------------------------------------------------------------------------- the command
def run(command, args, capsys):
    code = main([command, *(str(arg) for arg in args)])
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "records, message",
    [
        ([BOOK, {"instruction": "x", "rejected": "b"}], "Record 1 of .* has no 'chosen' answer"),
        ([BOOK, BOOK, {"instruction": "x", "chosen": "b"}], "Record 2 of .* has no 'rejected' answer"),
        ([{**BOOK, "rejected": "FOX"}], "Record 0 of .* has the same 'chosen' and 'rejected' answer"),
    ],
)
def test_bad_preference_files_fail_before_training(base_dir, tmp_path, capsys, records, message):
    (tmp_path / "p.json").write_text(json.dumps(records))
    code, out = run("finetune-dpo", ["--model", base_dir, "--data", tmp_path / "p.json", "--output-dir", tmp_path / "o"], capsys)
    assert code == 2 and "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1
    assert re.search(message, out.err)
    assert not (tmp_path / "o").exists()


def test_a_tokenizer_without_a_chat_template_gets_the_books_prompt(base_dir):
    """As GPT-2's tokenizer comes: the command completes it with the Alpaca template (the book's prompt)."""
    from scratch_gpt.tokenizer import CHAT_TEMPLATE
    from scratch_gpt.training.finetune import load_base_tokenizer

    (base_dir / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((base_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(base_dir).chat_template is None
    tokenizer = load_base_tokenizer(base_dir)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    rows = dpo.tokenize_pairs(tokenizer, [dpo.to_pair(BOOK, 0, "book")], 256)
    prompt = tokenizer.apply_chat_template(format_alpaca_messages(BOOK)[:1], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(rows[0]["chosen_input_ids"]).startswith(prompt)


@pytest.mark.slow
def test_finetune_dpo_prefers_the_chosen_answers_and_chat_loads_the_result(base_dir, tmp_path, capsys):
    records = toy_preferences(40) + [{**BOOK, "rejected": "FOX"}]  # a tie, skipped with --skip-identical
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "dpo"
    args = ["--model", base_dir, "--data", tmp_path / "prefs.jsonl", "--output-dir", out, "--beta", "0.5", "--skip-identical",
            "--lr", "3e-3", "--max-steps", "12", "--batch-size", "8", "--eval-every", "6", "--no-progress"]  # fmt: skip
    code, printed = run("finetune-dpo", args, capsys)
    assert code == 0, printed.err
    assert "36 training and 4 held-out pairs" in printed.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["initial_eval_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["eval_loss"] < math.log(2) - 0.1
    assert metrics["eval_reward_margin"] > metrics["initial_eval_reward_margin"] + 0.2
    assert metrics["eval_reward_accuracy"] > 0.5 and metrics["train_pairs_reward_accuracy"] > 0.5
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in logged if "eval_loss" in r]
    assert [r["step"] for r in evaluations] == [0, 6, 12]
    keys = {"eval_reward_margin", "eval_reward_accuracy", "eval_chosen_reward", "eval_rejected_reward"}
    assert keys | {f"train_pairs_{k}" for k in ("loss", "reward_margin", "reward_accuracy")} <= set(evaluations[-1])
    assert (out / "loss_curve.png").is_file() and "DPO" in (out / "README.md").read_text()
    assert not any("perplexity" in r for r in [metrics, *logged])  # exp(DPO loss) is no perplexity

    # an ordinary causal-LM folder: the policy alone, with as many weights as the base
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    code, printed = run("chat", [out, "--prompt", "Rewrite the word in capitals.", "--max-new-tokens", "4"], capsys)
    assert code == 0, printed.err
    reply = pipeline("text-generation", model=str(out))([{"role": "user", "content": "Say fox."}], max_new_tokens=4)
    assert reply[0]["generated_text"][-1]["role"] == "assistant"


@pytest.mark.slow
def test_lora_dpo_on_conversational_records_saves_an_adapter_that_chat_loads(base_dir, tmp_path, capsys):
    records = [
        {
            "prompt": [{"role": "user", "content": r["input"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in toy_preferences(20)
    ]
    (tmp_path / "prefs.json").write_text(json.dumps(records))
    out = tmp_path / "adapter"
    args = ["--model", base_dir, "--data", tmp_path / "prefs.json", "--output-dir", out, "--lora",
            "--lr", "1e-2", "--max-steps", "3", "--batch-size", "4", "--no-progress"]  # fmt: skip
    code, printed = run("finetune-dpo", args, capsys)
    assert code == 0, printed.err
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert (out / "generation_config.json").is_file() and (out / "tokenizer.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["initial_eval_loss"] == pytest.approx(math.log(2), abs=1e-4)
    code, printed = run("chat", [out, "--prompt", "fox", "--max-new-tokens", "3"], capsys)
    assert code == 0, printed.err


@pytest.mark.slow
def test_every_command_that_takes_a_model_reads_an_adapter_folder(base_dir, tmp_path, capsys):
    """The README's chain: finetune-instruct --lora leaves an adapter folder; DPO (with or without LoRA),
    another instruct run, a classifier and evaluate take it as --model, as chat does."""
    from scratch_gpt.cli import main

    data = tmp_path / "prefs.json"
    data.write_text(json.dumps(toy_preferences(24)))
    instructions = tmp_path / "instructions.json"
    instructions.write_text(json.dumps([{k: r[k] for k in ("instruction", "input")} | {"output": r["chosen"]} for r in toy_preferences(24)]))
    labelled = tmp_path / "labels.jsonl"
    labelled.write_text("".join(json.dumps({"text": r["input"], "label": int(r["chosen"] == "FOX")}) + "\n" for r in toy_preferences(40)))
    short = ["--max-steps", "1", "--batch-size", "2", "--no-progress"]
    adapter = tmp_path / "instruct"
    assert main(["finetune-instruct", "--model", str(base_dir), "--data", str(instructions), "--output-dir", str(adapter), "--lora", *short, "--max-answers", "1"]) == 0
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()

    runs = {
        "dpo": ["finetune-dpo", "--data", str(data)],
        "dpo-lora": ["finetune-dpo", "--data", str(data), "--lora"],
        "instruct-again": ["finetune-instruct", "--data", str(instructions), "--max-answers", "1"],
        "classifier": ["finetune-classifier", "--data", str(labelled)],
    }
    for name, (command, *flags) in runs.items():
        assert main([command, "--model", str(adapter), *flags, "--output-dir", str(tmp_path / name), *short]) == 0, capsys.readouterr().err
    # an adapter trained on an adapter names it as its base (not a temporary copy), and chat follows the chain
    assert json.loads((tmp_path / "dpo-lora" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(adapter)
    assert main(["chat", str(tmp_path / "dpo-lora"), "--prompt", "Say fox.", "--max-new-tokens", "2"]) == 0
    assert not list(tmp_path.rglob("*scratch_gpt-merged*"))
    saved = [p for p in tmp_path.rglob("*.json") if "scratch_gpt-merged" in p.read_text()]
    assert not saved, saved


def test_dpo_under_fsdp_is_refused_before_any_work(base_dir, tmp_path, capsys, monkeypatch):
    from scratch_gpt.training import parallel

    monkeypatch.setattr(parallel, "choose", lambda fsdp=False: parallel.FSDP2())  # as under an FSDP launch
    (tmp_path / "p.json").write_text(json.dumps([BOOK] * 8))
    code, out = run("finetune-dpo", ["--model", base_dir, "--data", tmp_path / "p.json", "--output-dir", tmp_path / "o"], capsys)
    assert code == 2 and "does not run under FSDP yet" in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
