"""`scratch-gpt evaluate` (lm-evaluation-harness on local task files, and lm-eval's own) and PEFT beyond LoRA.

lm-eval runs in-process through `scratch_gpt.cli.main` on a tiny model and tiny local files;
conftest sets HF_HUB_OFFLINE and HF_DATASETS_OFFLINE, and a guard makes any network access fail.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from scratch_gpt.cli import main

TEXT = " ".join(
    [
        "The quick brown fox jumps over the lazy dog.",
        "A language model predicts the next token from the tokens before it.",
        "Attention lets every position look at the earlier positions.",
    ]
    * 4
)
QUESTIONS = [
    {"question": "The quick brown fox jumps over the lazy", "choices": ["dog.", "attention."], "answer": 0},
    {"question": "def add(a, b):", "choices": ["hello world", "return a + b"], "answer": 1},
    {"question": "Attention lets every", "choices": ["position", "fox", "token"], "answer": 0},
]



def run_evaluate(tmp_path, model_dir, *flags) -> dict:
    output = tmp_path / "results.json"
    assert main(["evaluate", str(model_dir), *flags, "--bootstrap-iters", "0", "--output", str(output)]) == 0
    return json.loads(output.read_text())["results"]


@pytest.mark.slow
def test_lm_eval_bits_per_byte_agrees_with_the_training_loops(tmp_path, make_base_dir, no_network):
    """The acceptance check on tiny data: lm-eval's bits_per_byte and ours (the loop's mean loss /
    ln 2 / bytes_per_token) on the same windows agree within 2%, with 16-token windows (the
    document spans several) over a model with a 32-token context (the last window gets context)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scratch_gpt.evaluation import loop_bits_per_byte

    model_dir = make_base_dir(max_position_embeddings=32)
    (tmp_path / "held_out.txt").write_text(TEXT, encoding="utf-8")
    flags = ["--tasks", "scratch_perplexity", "--data", str(tmp_path / "held_out.txt"), "--max-length", "16"]
    metrics = run_evaluate(tmp_path, model_dir, *flags)["scratch_perplexity"]

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ours = loop_bits_per_byte(model, AutoTokenizer.from_pretrained(model_dir), [TEXT], block_size=16)
    assert metrics["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], rel=0.02)
    assert metrics["byte_perplexity,none"] == pytest.approx(2 ** metrics["bits_per_byte,none"])
    # word perplexity: the same total log-likelihood spread over the words instead of the bytes
    num_bytes, num_words = len(TEXT.encode()), len(TEXT.split())
    assert math.log(metrics["word_perplexity,none"]) == pytest.approx(math.log(2) * metrics["bits_per_byte,none"] * num_bytes / num_words)


def test_multiple_choice_task_picks_the_choice_the_model_scores_highest(tmp_path, make_base_dir, no_network):
    """acc from lm-eval equals the accuracy of the argmax of sum log p(choice tokens | question)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = make_base_dir()
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS), encoding="utf-8")
    metrics = run_evaluate(tmp_path, model_dir, "--tasks", "scratch_choice", "--data", str(data))["scratch_choice"]

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    correct = 0
    for row in QUESTIONS:
        context = tokenizer(row["question"]).input_ids
        scores = []
        for choice in row["choices"]:
            whole = tokenizer(row["question"] + " " + choice).input_ids
            with torch.no_grad():
                logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        correct += max(range(len(scores)), key=scores.__getitem__) == row["answer"]
    assert metrics["acc,none"] == pytest.approx(correct / len(QUESTIONS))
    assert 0 <= metrics["acc_norm,none"] <= 1


def test_include_path_runs_a_users_own_task_file(tmp_path, make_base_dir, no_network):
    """A YAML of the user's (here: the shipped one, renamed, its data file beside it) runs by name."""
    from scratch_gpt.evaluation import shipped_tasks

    model_dir = make_base_dir()
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "notes.jsonl").write_text(json.dumps({"text": TEXT}) + "\n", encoding="utf-8")
    config = shipped_tasks()["scratch_perplexity"].read_text(encoding="utf-8")
    config = config.replace("task: scratch_perplexity", "task: my_notes").replace("held_out.jsonl", str(tasks / "notes.jsonl"))
    (tasks / "my_notes.yaml").write_text(config, encoding="utf-8")
    metrics = run_evaluate(tmp_path, model_dir, "--tasks", "my_notes", "--include-path", str(tasks))["my_notes"]
    assert 0 < metrics["bits_per_byte,none"] < 20


# ---------------------------------------------------------------------------- lm-eval's own tasks
# Indexing lm-eval's ~15,000 task files takes 10-12 s of CPU time, hence `slow`.


@pytest.mark.slow
def test_lm_evals_own_task_names_are_found_and_ours_alone_skip_its_index(monkeypatch, no_network):
    """`hellaswag` is known (its YAML in lm-eval's task folder), without downloading anything; a run of our
    tasks only builds the index of ours (lm-eval's own would hold thousands of names)."""
    import lm_eval.tasks

    from scratch_gpt.evaluation import task_manager

    manager, theirs = task_manager(["hellaswag", "scratch_choice"], [])
    assert theirs == ["hellaswag"]
    entry = manager.task_index["hellaswag"]
    assert Path(lm_eval.tasks.__file__).parent in Path(entry.yaml_path).parents
    assert "scratch_perplexity" in manager.all_tasks and len(manager.all_tasks) > 1000
    ours, theirs = task_manager(["scratch_perplexity", "scratch_choice"], [])
    assert theirs == [] and sorted(ours.all_tasks) == ["scratch_choice", "scratch_perplexity"]


@pytest.mark.slow
def test_an_unknown_task_names_ours_and_how_to_list_lm_evals(tmp_path, make_base_dir, capsys):
    assert main(["evaluate", str(make_base_dir()), "--tasks", "scratch_choice,hellaswag_typo"]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # (the lines before: the tiny model's save)
    assert message == (
        "scratch-gpt evaluate: error: Unknown task 'hellaswag_typo': it is none of ours (scratch_choice, scratch_perplexity; "
        "add folders of task YAML files with --include-path DIR) nor one of lm-eval's (`lm-eval ls tasks` lists them)."
    )


@pytest.mark.slow
def test_lm_evals_own_task_offline_without_its_data_is_one_sentence(tmp_path, make_base_dir, monkeypatch, capsys, no_network):
    """HF_HUB_OFFLINE=1 (conftest) and empty caches: hellaswag's data cannot be had; one sentence, exit 1."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model_dir = make_base_dir()
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--tasks", "hellaswag", "--limit", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(
        "scratch-gpt evaluate: lm-eval's task 'hellaswag' downloads its data from the Hugging Face Hub, which is offline "
        "(HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1) here, and the data is not in the local cache ("
    )
    assert captured.err.rstrip().endswith("run it once with network (it is cached then), or evaluate local data with "
                                          "scratch_perplexity, scratch_choice or --include-path.")
    assert "Rowan/hellaswag" in captured.err  # the dataset lm-eval asked for, in the reason


def test_without_lm_eval_it_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    assert main(["evaluate", str(tmp_path), "--tasks", "scratch_perplexity"]) == 2
    assert "pip install 'scratch_gpt[eval]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- PEFT beyond LoRA
@pytest.mark.parametrize("method", ["prefix", "prompt", "dora"])
def test_peft_methods_train_and_change_the_model(make_base_dir, method):
    """Prefix tuning (virtual keys/values put in the model's cache), prompt tuning (virtual input
    embeddings) and DoRA on ScratchGPT: a training step moves the adapter only, and the adapter
    changes the logits. Prefix tuning's cache holds the virtual tokens and the prompt's; generation
    is checked for the other two (peft 0.21 hands the prefix to `generate` as `past_key_values`,
    which transformers 5 ignores in favour of its own `cache`, for GPT-2 too)."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = make_base_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = {
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "dora": LoraConfig(task_type="CAUSAL_LM", r=4, use_dora=True),
    }[method]
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    frozen = {name: p.clone() for name, p in base.named_parameters()}
    model = get_peft_model(base, config)
    batch = tokenizer(["The quick brown fox", "Attention lets every position"], return_tensors="pt", padding=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model(**batch, labels=batch.input_ids).loss.backward()
    optimizer.step()

    with model.disable_adapter():
        plain = model(**batch).logits
    adapted = model(**batch).logits[:, -plain.shape[1] :]  # prompt tuning also returns its virtual positions
    assert not torch.allclose(plain, adapted, atol=1e-4)
    if method != "dora":  # prefix and prompt tuning leave every weight of the model as it was
        assert all(torch.equal(p, frozen[name]) for name, p in base.named_parameters() if name in frozen)

    prompt = tokenizer(["The quick brown"], return_tensors="pt")
    if method == "prefix":
        cache = model(**prompt, use_cache=True).cache
        assert cache.get_seq_length() == 4 + prompt.input_ids.shape[1]
    else:
        generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
        assert generated[0, prompt.input_ids.shape[1]].item() == model(**prompt).logits[0, -1].argmax().item()
