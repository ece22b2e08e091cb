"""Every bad input gets one sentence, and nothing of the user's is lost.

Each case runs one command in-process through `scratch_gpt.cli.main` on a fresh copy of a small
world (a corpus, a tiny model folder, data files, a folder of the user's own). It must exit with
status 2, print no traceback, end stderr with one sentence (`scratch-gpt CMD: error: ...`) and
leave every file of the world as it was (hashes before and after; no file added either).
"""

import hashlib
import json
import re
import shutil

import pytest
import torch

from scratch_gpt.cli import main

WORDS = "the quick brown fox jumps over the lazy dog hello world tokens attention blocks".split()


@pytest.fixture(scope="module")
def world_template(tmp_path_factory, tiny_tokenizer):
    """The files every case starts from (built once; each case gets its own copy)."""
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
    from scratch_gpt.tokenizer import config_kwargs

    root = tmp_path_factory.mktemp("world")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(" ".join(WORDS * 40) + "\n")
    (root / "empty.txt").write_text("")
    (root / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))

    config = ScratchGPTConfig.from_preset("tiny", hidden_size=32, max_position_embeddings=64, **config_kwargs(tiny_tokenizer))
    torch.manual_seed(0)
    ScratchGPTForCausalLM(config).save_pretrained(root / "base")
    tiny_tokenizer.save_pretrained(root / "base")
    classifier = ScratchGPTForSequenceClassification(
        ScratchGPTConfig.from_preset("tiny", hidden_size=32, max_position_embeddings=64, num_labels=3, **config_kwargs(tiny_tokenizer))
    )
    classifier.save_pretrained(root / "classifier3")
    tiny_tokenizer.save_pretrained(root / "classifier3")
    torch.save({"x": torch.zeros(2)}, root / "book.pth")  # a state dict, but not of the book's GPTModel
    (root / "no_weights").mkdir()
    shutil.copy(root / "base" / "config.json", root / "no_weights" / "config.json")
    gguf_folders(root, tiny_tokenizer)

    rows = [(" ".join(WORDS[i % 7 : i % 7 + 4]), "spam" if i % 2 else "ham") for i in range(40)]
    (root / "data.csv").write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    blank = rows[:5] + [(rows[5][0], "")] + rows[6:]
    (root / "blank_label.csv").write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in blank))
    records = [{"instruction": f"Repeat {w}", "output": w} for w in WORDS]
    (root / "instr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "instr_latin1.jsonl").write_bytes('{"instruction": "caf\u00e9", "output": "x"}\n'.encode("latin-1"))
    late_system = {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "be nice"},
                                {"role": "assistant", "content": "hello"}]}
    (root / "late_system.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [records[0], late_system]))
    (root / "not_json.jsonl").write_text("{not json\n")
    prefs = [{"instruction": f"Say {w}", "chosen": w, "rejected": w.upper()} for w in WORDS]
    (root / "prefs.json").write_text(json.dumps(prefs))
    (root / "prefs_no_rejected.json").write_text(json.dumps(prefs[:2] + [{"instruction": "Say a", "chosen": "a"}]))
    (root / "prefs_same.json").write_text(json.dumps(prefs[:3] + [{"instruction": "Say b", "chosen": "b", "rejected": "b"}]))
    (root / "wrong_shape.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    (root / "empty.json").write_text("[]")
    (root / "bad.yaml").write_text("max-steps: [1\n")
    (root / "unknown.yaml").write_text("max-stepz: 3\n")
    (root / "list.yaml").write_text("batch-size: [1, 2]\n")
    damaged_folders(root, config)
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own notes")
    from scratch_gpt.io_utils import atomic_directory, mark_output

    with atomic_directory(root / "ours") as tmp:  # an output of ours, to which the user then added a file
        tiny_tokenizer.save_pretrained(tmp)
    (root / "ours" / "notes.txt").write_text("the user's notes on this tokenizer")
    mark_output(root / "run_with_notes", run=True)  # a pre-training run folder whose model folder got a user's file
    with atomic_directory(root / "run_with_notes" / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    (root / "run_with_notes" / "model" / "notes.txt").write_text("the user's notes on this model")
    return root


def gguf_folders(root, tokenizer) -> None:
    """What `export --to gguf` refuses: LoRA adapters whose base is gone, rows of 48 numbers (q8_0 packs 32),
    a shape llama.cpp has no architecture for (RoPE with LayerNorm)."""
    from peft import LoraConfig, get_peft_model

    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from scratch_gpt.tokenizer import config_kwargs

    adapter = get_peft_model(ScratchGPTForCausalLM.from_pretrained(root / "base"), LoraConfig(r=2, target_modules=["qkv_proj"], task_type="CAUSAL_LM"))
    adapter.save_pretrained(root / "adapter_without_base")
    tokenizer.save_pretrained(root / "adapter_without_base")
    settings = json.loads((root / "adapter_without_base" / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = "deleted-base"  # the base folder the adapters were trained on, since removed
    (root / "adapter_without_base" / "adapter_config.json").write_text(json.dumps(settings))
    for name, sizes in (("width48", dict(hidden_size=48, num_attention_heads=2)), ("rope_layernorm", dict(position_embedding_type="rope"))):
        config = ScratchGPTConfig.from_preset("tiny", max_position_embeddings=64, **{"hidden_size": 32, **sizes}, **config_kwargs(tokenizer))
        ScratchGPTForCausalLM(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)


def damaged_folders(root, config) -> None:
    """Copies of the model folder `base`, each damaged one way (issue: damaged artifacts end in tracebacks)."""
    for name in ("dmg_truncated", "dmg_random", "dmg_tokenizer", "dmg_config", "dmg_vocab", "pickled"):
        shutil.copytree(root / "base", root / name)
    weights = (root / "base" / "model.safetensors").read_bytes()
    (root / "dmg_truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (root / "dmg_random" / "model.safetensors").write_bytes(bytes(range(256)) * 20)
    (root / "dmg_tokenizer" / "tokenizer.json").write_text('{"version": "1.0", "truncation": nul')
    (root / "dmg_config" / "config.json").write_text('{"model_type": "scratch_gpt", "hidden_size": 3')
    bigger = json.loads((root / "base" / "config.json").read_text())
    bigger["vocab_size"] += 64  # the config says 64 more embedding rows than the weights hold
    (root / "dmg_vocab" / "config.json").write_text(json.dumps(bigger))
    from safetensors.torch import load_file

    (root / "pickled" / "model.safetensors").unlink()
    torch.save(load_file(root / "base" / "model.safetensors"), root / "pickled" / "pytorch_model.bin")
    remote_code_folders(root)


# What code shipped in a folder does when it runs: it leaves a file in the working folder (the world).
CODE_THAT_RAN = """from pathlib import Path
Path("the_folder_code_ran.txt").write_text("yes")
"""


def remote_code_folders(root) -> None:
    """`remote_tokenizer`: a tokenizer whose class comes from the folder's own Python file (auto_map);
    `remote_model`: a config of an unknown model type whose classes come from the folder."""
    shutil.copytree(root / "base", root / "remote_tokenizer")
    (root / "remote_tokenizer" / "own_tokenizer.py").write_text(
        CODE_THAT_RAN + "from transformers import PreTrainedTokenizerFast\n\n\nclass OwnTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    settings = json.loads((root / "remote_tokenizer" / "tokenizer_config.json").read_text())
    settings.update(tokenizer_class="OwnTokenizer", auto_map={"AutoTokenizer": [None, "own_tokenizer.OwnTokenizer"]})
    (root / "remote_tokenizer" / "tokenizer_config.json").write_text(json.dumps(settings))
    shutil.copytree(root / "base", root / "remote_model")
    (root / "remote_model" / "own_model.py").write_text(CODE_THAT_RAN)
    config = json.loads((root / "remote_model" / "config.json").read_text())
    config.update(model_type="own_gpt", auto_map={"AutoConfig": "own_model.OwnConfig", "AutoModelForCausalLM": "own_model.OwnModel"})
    (root / "remote_model" / "config.json").write_text(json.dumps(config))


@pytest.fixture
def world(world_template, tmp_path, monkeypatch):
    root = tmp_path / "w"
    shutil.copytree(world_template, root)
    monkeypatch.chdir(root)  # the cases use paths relative to the world
    return root


def tree_hashes(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


FT = ["--max-steps", "1", "--batch-size", "2", "--no-progress"]  # fine-tuning: short, were it to run
PT = ["--max-steps", "1", "--batch-size", "2", "--vocab-size", "300", "--preset", "tiny", "--hidden-size", "32",
      "--num-layers", "1", "--num-heads", "2", "--block-size", "16", "--report-to", "none", "--no-progress"]

# (id, argv, a piece of the expected sentence)
CASES = [
    # train-tokenizer
    ("tok-output-is-data", ["train-tokenizer", "--data", "corpus", "--vocab-size", "300", "--output", "corpus"], "is the input"),
    ("tok-output-holds-data", ["train-tokenizer", "--data", "corpus/a.txt", "--vocab-size", "300", "--output", "corpus"], "contains the input"),
    ("tok-output-holds-glob", ["train-tokenizer", "--data", "corpus/*.txt", "--vocab-size", "300", "--output", "corpus"], "contains the input"),
    ("tok-user-file-in-our-output", ["train-tokenizer", "--data", "corpus", "--vocab-size", "300", "--output", "ours"], "notes.txt"),
    ("tok-output-users", ["train-tokenizer", "--data", "corpus", "--vocab-size", "300", "--output", "mine"], "not written by scratch-gpt"),
    ("tok-output-file", ["train-tokenizer", "--data", "corpus", "--vocab-size", "300", "--output", "data.csv"], "is a file"),
    ("tok-output-in-file", ["train-tokenizer", "--data", "corpus", "--vocab-size", "300", "--output", "data.csv/tok"], "inside the file"),
    ("tok-missing-data", ["train-tokenizer", "--data", "nope.txt", "--vocab-size", "300", "--output", "tok"], "does not exist"),
    ("tok-empty-data", ["train-tokenizer", "--data", "empty.txt", "--vocab-size", "300", "--output", "tok"], "empty"),
    ("tok-not-utf8", ["train-tokenizer", "--data", "latin1.txt", "--vocab-size", "300", "--output", "tok"], "not UTF-8"),
    ("tok-small-vocab", ["train-tokenizer", "--data", "corpus", "--vocab-size", "10", "--output", "tok"], "too small"),
    # pretrain
    ("pt-output-is-data", ["pretrain", "--data", "corpus", "--output-dir", "corpus", *PT], "is the input"),
    ("pt-output-is-init", ["pretrain", "--init-from", "base", "--output-dir", "base", *PT], "is the input"),
    ("pt-output-holds-tokenizer", ["pretrain", "--data", "corpus", "--tokenizer", "base", "--output-dir", ".", *PT], "contains the input"),
    ("pt-user-file-in-our-model", ["pretrain", "--data", "corpus", "--output-dir", "run_with_notes", *PT], "also holds files it did not write"),
    ("pt-output-users", ["pretrain", "--data", "corpus", "--output-dir", "mine", *PT], "not written by scratch-gpt"),
    ("pt-model-vocab-0", ["pretrain", "--data", "corpus", "--output-dir", "run", "--model-vocab-size", "0", *PT], "--model-vocab-size"),
    ("pt-eval-batches-0", ["pretrain", "--data", "corpus", "--output-dir", "run", *PT, "--eval-batches", "0"], "--eval-batches must be"),
    ("pt-batch-size-0", ["pretrain", "--data", "corpus", "--output-dir", "run", *PT, "--batch-size", "0"], "--batch-size must be"),
    ("pt-bad-yaml", ["pretrain", "--config", "bad.yaml", "--output-dir", "run"], "not valid YAML"),
    ("pt-unknown-yaml-key", ["pretrain", "--config", "unknown.yaml", "--output-dir", "run"], "Unknown option"),
    ("pt-list-for-one-value", ["pretrain", "--config", "list.yaml", "--output-dir", "run"], "takes one value"),
    ("pt-missing-config", ["pretrain", "--config", "nope.yaml", "--output-dir", "run"], "does not exist"),
    ("pt-missing-data", ["pretrain", "--data", "nope.txt", "--output-dir", "run", *PT], "does not exist"),
    ("pt-missing-tokenizer", ["pretrain", "--data", "corpus", "--tokenizer", "nope", "--output-dir", "run", *PT], "does not exist"),
    ("pt-resume-nothing", ["pretrain", "--data", "corpus", "--output-dir", "run", "--resume", *PT], "no checkpoint"),
    ("pt-streaming-no-steps", ["pretrain", "--data", "corpus", "--output-dir", "run", "--streaming"], "needs --max-steps"),
    ("pt-too-few-blocks", ["pretrain", "--data", "corpus", "--output-dir", "run", *PT, "--batch-size", "4096"], "fewer than one global batch"),
    ("qs-output-users", ["quickstart", "--output-dir", "mine", "--max-steps", "1"], "not written by scratch-gpt"),
    ("qs-into-model-folder", ["quickstart", "--output-dir", "ours", "--max-steps", "1"], "not a training run"),
    ("pt-into-model-folder", ["pretrain", "--data", "corpus", "--output-dir", "run_with_notes/model", *PT], "not a training run"),
    # finetune-classifier
    ("cls-output-is-model", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "base", *FT], "is the input"),
    ("cls-output-is-data", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "data.csv", *FT], "is the input"),
    ("cls-output-holds-model", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", ".", *FT], "contains the input"),
    ("cls-user-file-in-our-output", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "ours", *FT], "move them out"),
    ("cls-output-users", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "mine", *FT], "not written by scratch-gpt"),
    ("cls-missing-data", ["finetune-classifier", "--model", "base", "--data", "nope.csv", "--output-dir", "out", *FT], "does not exist"),
    ("cls-blank-label", ["finetune-classifier", "--model", "base", "--data", "blank_label.csv", "--output-dir", "out", *FT], "record 6"),
    ("cls-no-label-column", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--label-column", "y", "--output-dir", "out", *FT], "has no column"),
    ("cls-other-label-count", ["finetune-classifier", "--model", "classifier3", "--data", "data.csv", "--output-dir", "out", *FT], "3 classes"),
    ("cls-save-merged-no-lora", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "out", "--save-merged", *FT], "only applies with --lora"),
    ("cls-bad-lora-target", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "out", "--lora", "--lora-targets", "wq", *FT], "Unknown LoRA target"),
    ("cls-bad-val-fraction", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "out", "--val-fraction", "1.5", *FT], "--val-fraction must be"),
    # finetune-instruct
    ("ins-output-is-model", ["finetune-instruct", "--model", "base", "--data", "instr.jsonl", "--output-dir", "base", *FT], "is the input"),
    ("ins-output-users", ["finetune-instruct", "--model", "base", "--data", "instr.jsonl", "--output-dir", "mine", *FT], "not written by scratch-gpt"),
    ("ins-not-utf8", ["finetune-instruct", "--model", "base", "--data", "instr_latin1.jsonl", "--output-dir", "out", *FT], "instr_latin1.jsonl' is not UTF-8"),
    ("ins-late-system", ["finetune-instruct", "--model", "base", "--data", "late_system.jsonl", "--output-dir", "out", *FT], "may only come first"),
    ("ins-not-json", ["finetune-instruct", "--model", "base", "--data", "not_json.jsonl", "--output-dir", "out", *FT], "not valid JSON"),
    ("ins-wrong-shape", ["finetune-instruct", "--model", "base", "--data", "wrong_shape.jsonl", "--output-dir", "out", *FT], "expected Alpaca keys"),
    ("ins-no-records", ["finetune-instruct", "--model", "base", "--data", "empty.json", "--output-dir", "out", *FT], "holds no records"),
    ("ins-missing-data", ["finetune-instruct", "--model", "base", "--data", "nope.jsonl", "--output-dir", "out", *FT], "does not exist"),
    # a training run's folder is added to, never replaced by another command
    ("exp-into-run-folder", ["export-gpt2", "base", "run_with_notes"], "is a training run's folder"),
    ("tok-into-run-folder", ["train-tokenizer", "--data", "corpus", "--vocab-size", "300", "--output", "run_with_notes"], "is a training run's folder"),
    ("ins-into-run-folder", ["finetune-instruct", "--model", "base", "--data", "instr.jsonl", "--output-dir", "run_with_notes", *FT], "is a training run's folder"),
    ("ib-into-run-folder", ["import-book", "book.pth", "run_with_notes", "--num-heads", "2"], "is a training run's folder"),
    # export-gpt2
    ("exp-output-is-source", ["export-gpt2", "base", "base"], "is the input"),
    ("exp-output-holds-source", ["export-gpt2", "base", "."], "contains the input"),
    ("exp-output-users", ["export-gpt2", "base", "mine"], "not written by scratch-gpt"),
    ("exp-no-weights", ["export-gpt2", "no_weights", "gpt2"], "No *.safetensors"),
    ("exp-missing-source", ["export-gpt2", "nope", "gpt2"], "neither a local folder nor a Hub id"),
    ("exp-unwritable-output", ["export-gpt2", "base", "data.csv/gpt2"], "inside the file"),
    ("exp-classifier", ["export-gpt2", "classifier3", "gpt2"], "not a causal LM"),
    # finetune-dpo
    ("dpo-output-is-model", ["finetune-dpo", "--model", "base", "--data", "prefs.json", "--output-dir", "base", *FT], "is the input"),
    ("dpo-output-users", ["finetune-dpo", "--model", "base", "--data", "prefs.json", "--output-dir", "mine", *FT], "not written by scratch-gpt"),
    ("dpo-missing-rejected", ["finetune-dpo", "--model", "base", "--data", "prefs_no_rejected.json", "--output-dir", "out", *FT], "Record 2"),
    ("dpo-same-answers", ["finetune-dpo", "--model", "base", "--data", "prefs_same.json", "--output-dir", "out", *FT], "--skip-identical"),
    ("dpo-bad-beta", ["finetune-dpo", "--model", "base", "--data", "prefs.json", "--output-dir", "out", "--beta", "0", *FT], "--beta must be positive"),
    ("dpo-missing-data", ["finetune-dpo", "--model", "base", "--data", "nope.json", "--output-dir", "out", *FT], "does not exist"),
    # export (export-gpt2 is export --to gpt2)
    ("export-unknown-target", ["export", "base", "out", "--to", "bert"], "invalid choice"),
    ("export-no-target", ["export", "base", "out"], "required: --to"),
    ("export-wrong-family", ["export", "base", "out", "--to", "llama"], "cannot be written as LlamaForCausalLM"),
    ("export-output-is-source", ["export", "base", "base", "--to", "gpt2"], "is the input"),
    # export --to gguf
    ("gguf-adapter-without-base", ["export", "adapter_without_base", "out", "--to", "gguf"], "without their base model 'deleted-base'"),
    ("gguf-unknown-outtype", ["export", "base", "out", "--to", "gguf", "--outtype", "q4_k"], "invalid choice: 'q4_k'"),
    ("gguf-output-is-source", ["export", "base", "base", "--to", "gguf"], "is the input"),
    ("gguf-output-holds-source", ["export", "base", ".", "--to", "gguf"], "contains the input"),
    ("gguf-outtype-without-gguf", ["export", "base", "out", "--to", "llama", "--outtype", "f16"], "applies to --to gguf only"),
    ("gguf-q8-odd-width", ["export", "width48", "out", "--to", "gguf", "--outtype", "q8_0"], "hidden_size 48"),
    ("gguf-mixed-shape", ["export", "rope_layernorm", "out", "--to", "gguf"], "mixes them"),
    # import-book
    ("ib-missing-checkpoint", ["import-book", "nope.pth", "out", "--num-heads", "2"], "does not exist"),
    ("ib-not-a-state-dict", ["import-book", "data.csv", "out", "--num-heads", "2"], "is not a state dict"),
    ("ib-no-heads", ["import-book", "book.pth", "out"], "pass --num-heads"),
    ("ib-wrong-keys", ["import-book", "book.pth", "out", "--num-heads", "2"], "missing keys"),
    ("ib-output-is-checkpoint", ["import-book", "book.pth", "book.pth", "--num-heads", "2"], "is the input"),
    ("ib-output-users", ["import-book", "book.pth", "mine", "--num-heads", "2"], "not written by scratch-gpt"),
    # chat and push
    ("chat-missing-folder", ["chat", "nope", "--prompt", "hi"], "nor a Hub model id"),
    ("chat-no-weights", ["chat", "no_weights", "--prompt", "hi"], "No *.safetensors"),
    ("push-bad-repo-id", ["push", "base", "--repo-id", "no slash"], "Invalid repo id"),
    ("push-missing-folder", ["push", "nope", "--repo-id", "me/model"], "nope"),
    # numbers that are not numbers, or out of range: caught before any work, not as advice after it
    ("dpo-beta-nan", ["finetune-dpo", "--model", "base", "--data", "prefs.json", "--output-dir", "out", "--beta", "nan", *FT], "--beta must be positive"),
    ("pt-lr-nan", ["pretrain", "--data", "corpus", "--output-dir", "run", *PT, "--lr", "nan"], "--lr must be a finite number"),
    ("pt-lr-inf", ["pretrain", "--data", "corpus", "--output-dir", "run", *PT, "--lr", "inf"], "--lr must be a finite number"),
    ("pt-min-lr-ratio-negative", ["pretrain", "--data", "corpus", "--output-dir", "run", *PT, "--min-lr-ratio", "-20"], "--min-lr-ratio must be between 0 and 1"),
    ("pt-grad-norm-nan", ["pretrain", "--data", "corpus", "--output-dir", "run", *PT, "--max-grad-norm", "nan"], "--max-grad-norm must be a finite number"),
    ("ins-weight-decay-negative", ["finetune-instruct", "--model", "base", "--data", "instr.jsonl", "--output-dir", "out", *FT, "--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    ("cls-adam-beta-one", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "out", *FT, "--adam-betas", "0.9", "1.5"], "--adam-betas must each be in [0, 1)"),
    ("cls-label-named-twice", ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "out", "--label-names", "ham,spam,ham", *FT], "'ham' twice"),
    ("chat-temperature-nan", ["chat", "base", "--prompt", "hi", "--temperature", "nan"], "--temperature must be"),
    # damaged artifacts: the file named, what to do
    ("chat-truncated-weights", ["chat", "dmg_truncated", "--prompt", "hi"], "dmg_truncated/model.safetensors' is damaged"),
    ("chat-random-weights", ["chat", "dmg_random", "--prompt", "hi"], "dmg_random/model.safetensors' is damaged"),
    ("chat-tokenizer-not-json", ["chat", "dmg_tokenizer", "--prompt", "hi"], "dmg_tokenizer/tokenizer.json' is damaged"),
    ("chat-config-not-json", ["chat", "dmg_config", "--prompt", "hi"], "dmg_config/config.json' is damaged"),
    ("chat-vocab-mismatch", ["chat", "dmg_vocab", "--prompt", "hi"], "do not fit its config.json"),
    ("chat-pickled-only", ["chat", "pickled", "--prompt", "hi"], "reads safetensors only"),
    ("ins-truncated-weights", ["finetune-instruct", "--model", "dmg_truncated", "--data", "instr.jsonl", "--output-dir", "out", *FT], "is damaged"),
    ("ins-config-not-json", ["finetune-instruct", "--model", "dmg_config", "--data", "instr.jsonl", "--output-dir", "out", *FT], "config.json' is damaged"),
    ("cls-tokenizer-not-json", ["finetune-classifier", "--model", "dmg_tokenizer", "--data", "data.csv", "--output-dir", "out", *FT], "tokenizer.json' is damaged"),
    ("cls-vocab-mismatch", ["finetune-classifier", "--model", "dmg_vocab", "--data", "data.csv", "--output-dir", "out", *FT], "do not fit its config.json"),
    ("cls-pickled-only", ["finetune-classifier", "--model", "pickled", "--data", "data.csv", "--output-dir", "out", *FT], "ScratchGPTForCausalLM.from_pretrained"),
    ("dpo-random-weights", ["finetune-dpo", "--model", "dmg_random", "--data", "prefs.json", "--output-dir", "out", *FT], "is damaged"),
    ("pt-init-truncated", ["pretrain", "--data", "corpus", "--init-from", "dmg_truncated", "--output-dir", "run", "--max-steps", "1",
                           "--block-size", "16", "--no-progress"], "is damaged"),
    ("exp-pickled-only", ["export-gpt2", "pickled", "gpt2"], "reads safetensors only"),
    ("eval-vocab-mismatch", ["evaluate", "dmg_vocab", "--tasks", "scratch_perplexity", "--data", "corpus/a.txt"], "do not fit its config.json"),
    # code shipped in a model folder: refused without --trust-remote-code (the world unchanged: it did not run)
    ("chat-remote-tokenizer", ["chat", "remote_tokenizer", "--prompt", "hi"], "pass --trust-remote-code"),
    ("ins-remote-tokenizer", ["finetune-instruct", "--model", "remote_tokenizer", "--data", "instr.jsonl", "--output-dir", "out", *FT], "pass --trust-remote-code"),
    ("cls-remote-tokenizer", ["finetune-classifier", "--model", "remote_tokenizer", "--data", "data.csv", "--output-dir", "out", *FT], "pass --trust-remote-code"),
    ("pt-remote-tokenizer", ["pretrain", "--data", "corpus", "--tokenizer", "remote_tokenizer", "--output-dir", "run", *PT], "pass --trust-remote-code"),
    ("eval-remote-tokenizer", ["evaluate", "remote_tokenizer", "--tasks", "scratch_perplexity", "--data", "corpus/a.txt"], "pass --trust-remote-code"),
    ("eval-remote-model", ["evaluate", "remote_model", "--tasks", "scratch_perplexity", "--data", "corpus/a.txt"], "pass --trust-remote-code"),
    ("exp-remote-tokenizer", ["export-gpt2", "remote_tokenizer", "gpt2"], "pass --trust-remote-code"),
    ("ib-remote-tokenizer", ["import-book", "book.pth", "out", "--num-heads", "2", "--tokenizer", "remote_tokenizer"], "pass --trust-remote-code"),
    # inspect
    ("inspect-empty-prompt", ["inspect", "base", "--prompt", ""], "--prompt is empty"),
    ("inspect-layer", ["inspect", "base", "--prompt", "the cat", "--layers", "7"], "--layers 7 is out of range"),
    ("inspect-head", ["inspect", "base", "--prompt", "the cat", "--heads", "9"], "--heads 9 is out of range"),
    # prepare-data
    ("prep-missing-data", ["prepare-data", "--data", "nope.txt", "--tokenizer", "base", "--output-dir", "prep"], "nope.txt"),
    ("prep-no-tokenizer", ["prepare-data", "--data", "corpus", "--output-dir", "prep"], "--tokenizer"),
    ("prep-into-input", ["prepare-data", "--data", "corpus", "--tokenizer", "base", "--output-dir", "corpus"], "corpus"),
    # evaluate (lm-eval)
    ("eval-unknown-task", ["evaluate", "base", "--tasks", "nope_task"], "nor one of lm-eval's"),
    ("eval-missing-data", ["evaluate", "base", "--tasks", "scratch_choice", "--data", "nope.jsonl"], "is not a file"),
    ("eval-missing-text", ["evaluate", "base", "--tasks", "scratch_perplexity", "--data", "nope.txt"], "nope.txt"),
    ("eval-include-path-file", ["evaluate", "base", "--tasks", "x", "--include-path", "data.csv"], "is not a folder"),
    ("eval-output-is-data", ["evaluate", "base", "--tasks", "scratch_perplexity", "--data", "corpus/a.txt", "--output", "corpus/a.txt"], "is the input"),
    ("eval-output-in-model", ["evaluate", "base", "--tasks", "scratch_perplexity", "--data", "corpus/a.txt", "--output", "base/config.json"], "lies inside the input"),
    ("eval-output-in-our-folder", ["evaluate", "base", "--tasks", "scratch_perplexity", "--data", "corpus/a.txt", "--output", "ours/results.json"], "a folder scratch-gpt wrote"),
    ("eval-output-users-file", ["evaluate", "base", "--tasks", "scratch_perplexity", "--data", "corpus/a.txt", "--output", "data.csv"], "was not written by scratch-gpt"),
    ("eval-val-fraction-alone", ["evaluate", "base", "--tasks", "scratch_perplexity", "--val-fraction", "0.1"], "pass --data too"),
]


@pytest.mark.parametrize("argv, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_sentence_and_changes_nothing(world, capsys, argv, expected):
    before = tree_hashes(world)
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"scratch-gpt {argv[0]}: error: \S.*[.)]", last), last
    assert expected in last, last
    assert tree_hashes(world) == before  # nothing changed, nothing added


@pytest.mark.parametrize("command", ["pretrain", "finetune-instruct"])
def test_bf16_on_a_machine_without_it_is_refused_before_any_work(world, capsys, monkeypatch, command):
    from scratch_gpt.training import loop

    monkeypatch.setattr(loop, "bf16_supported", lambda: False)
    if command == "pretrain":
        argv = ["pretrain", "--data", "corpus", "--output-dir", "run", *PT]
    else:
        argv = ["finetune-instruct", "--model", "base", "--data", "instr.jsonl", "--output-dir", "run", *FT]
    before = tree_hashes(world)
    assert main([*argv, "--mixed-precision", "bf16"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "bf16 support" in last and "--mixed-precision no" in last, last
    assert tree_hashes(world) == before


def test_the_battery_covers_every_command():
    from scratch_gpt.cli import COMMANDS

    assert len(CASES) >= 40
    assert {case[1][0] for case in CASES} == set(COMMANDS)


def test_a_yaml_string_for_a_repeatable_option_is_one_item(tmp_path):
    from scratch_gpt.cli import parse_command

    config = tmp_path / "run.yaml"
    config.write_text('sample_prompt: "Once upon"\n')
    assert parse_command("pretrain", ["--config", str(config)])[0].sample_prompts == ["Once upon"]


def test_an_interrupted_swap_is_undone_by_the_next_check(tmp_path):
    from scratch_gpt.io_utils import atomic_directory, check_output

    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "weights").write_text("old")
    (tmp_path / "out").rename(tmp_path / ".old-out-12345")  # what a kill between the two renames leaves
    check_output(tmp_path / "out")
    assert (tmp_path / "out" / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------------------------
# Only bad input is "bad input": a library's error is a bug, with its traceback and exit status 1.


def test_the_error_policy_maps_bad_input_to_2_a_failed_run_to_1_and_keeps_everything_else(capsys):
    from scratch_gpt.cli import run_reporting
    from scratch_gpt.errors import BadInput, MissingFile, RunFailed

    def raising(error):
        raise error

    assert run_reporting("scratch-gpt x", raising, BadInput("The file 'a' is empty; add text.")) == 2
    assert capsys.readouterr().err == "scratch-gpt x: error: The file 'a' is empty; add text.\n"
    assert run_reporting("scratch-gpt x", raising, MissingFile("The file 'b' does not exist; check the path.")) == 2
    assert run_reporting("scratch-gpt x", raising, RunFailed("the upload failed: 403.")) == 1
    assert capsys.readouterr().err.endswith("scratch-gpt x: the upload failed: 403.\n")
    for error in (ValueError("Unsupported device type 'meta'."), OSError("disk on fire"), KeyError("x")):
        with pytest.raises(type(error)):
            run_reporting("scratch-gpt x", raising, error)
    assert isinstance(MissingFile("m"), FileNotFoundError)  # code that catches the OSError kinds keeps working


@pytest.mark.parametrize("command", ["pretrain", "finetune-classifier"])
def test_a_library_value_error_while_loading_keeps_its_traceback(world, capsys, monkeypatch, command):
    """What happened under transformers 5.25: `kernels` raised a ValueError inside `from_pretrained`
    and the user saw `error: Unsupported device type 'meta'` with exit status 2, as if a flag were wrong."""
    from transformers import PreTrainedModel

    def kernelize_fails(*args, **kwargs):
        raise ValueError("Unsupported device type 'meta'. Supported device types are: cpu, cuda")

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", kernelize_fails)
    argv = {
        "pretrain": ["pretrain", "--data", "corpus", "--init-from", "base", "--output-dir", "run", "--max-steps", "1", "--batch-size", "2",
                     "--block-size", "16", "--report-to", "none", "--no-progress"],
        "finetune-classifier": ["finetune-classifier", "--model", "base", "--data", "data.csv", "--output-dir", "run", *FT],
    }[command]  # fmt: skip
    with pytest.raises(ValueError, match="Unsupported device type 'meta'"):
        main(argv)
    assert "error:" not in capsys.readouterr().err


def test_reading_a_folder_never_asks_the_kernels_library(world):
    """ScratchGPT has no layer `kernels` swaps; our loads pass use_kernels=False, so the meta device
    (FSDP reads a folder there on every process but the first) is never checked by it."""
    from accelerate import init_empty_weights

    from scratch_gpt import ScratchGPTForCausalLM

    with init_empty_weights():
        model = ScratchGPTForCausalLM.from_pretrained("base")
    assert model.device.type == "meta" and not model.use_kernels


def test_trust_remote_code_lets_the_folders_own_code_run(world):
    """The other side of the refusals above: with the flag, the folder's tokenizer class is used."""
    from scratch_gpt.inference.generation import load_for_chat

    _, tokenizer, _ = load_for_chat("remote_tokenizer", trust_remote_code=True)
    assert type(tokenizer).__name__ == "OwnTokenizer" and (world / "the_folder_code_ran.txt").is_file()


# ----------------------------------------------------------------------------------------------
# A full disk: refused before any work when the need is known, one sentence when a write fails.


def test_a_run_that_would_fill_the_disk_is_refused_before_any_work(world, capsys, monkeypatch):
    import shutil as shutil_module

    argv = ["pretrain", "--data", "corpus", "--output-dir", "run", *PT]
    assert main(argv) == 0  # a previous run: its model, metrics.jsonl, ...
    capsys.readouterr()
    before = tree_hashes(world)
    usage = shutil_module.disk_usage(world)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=50_000))
    assert main([*argv, "--save-every", "1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"scratch-gpt pretrain: error: The output folder 'run' is on a disk with 0\.1 MB free, but this run will write about [\d.]+ MB there; .*\.", last), last
    assert tree_hashes(world) == before  # the previous run's metrics.jsonl and model are whole


@pytest.mark.parametrize("command", ["export-gpt2", "pretrain", "checkpoint"])
def test_a_disk_that_fills_up_while_saving_is_one_sentence_and_keeps_the_previous_output(world, capsys, monkeypatch, command):
    """ENOSPC injected where safetensors writes (it reports a full disk as its own SafetensorError):
    the model folder, and a checkpoint (accelerate writes it the same way)."""
    import accelerate.checkpointing
    import transformers.modeling_utils

    argv = {
        "export-gpt2": ["export-gpt2", "base", "gpt2"],
        "pretrain": ["pretrain", "--data", "corpus", "--output-dir", "run", *PT],
        "checkpoint": ["pretrain", "--data", "corpus", "--output-dir", "run", *PT, "--save-every", "1", "--max-steps", "2"],
    }[command]
    assert main(argv) == 0
    capsys.readouterr()
    folder = world / ("gpt2" if command == "export-gpt2" else "run/model")
    before = tree_hashes(folder)

    def disk_full(*args, **kwargs):
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    if command == "checkpoint":
        monkeypatch.setattr(accelerate.checkpointing, "save", disk_full)
        argv = [*argv, "--resume", "--max-steps", "3"]  # one more step, whose checkpoint cannot be written
        folder = world / "run" / "checkpoints"
        before = tree_hashes(folder)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"scratch-gpt {argv[0]}: the disk is full: writing " in err and "free some space" in err
    assert tree_hashes(folder) == before and not list(folder.parent.glob(".tmp-*"))


def test_an_output_file_of_ours_is_replaced_whole_and_a_users_file_only_with_overwrite(tmp_path):
    from scratch_gpt.io_utils import check_output_file, write_atomically

    results = tmp_path / "results.json"
    check_output_file(results)
    write_atomically(results, json.dumps({"written_by": "scratch-gpt evaluate", "results": {}}))
    check_output_file(results)  # an earlier results file of ours: replaced
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    with pytest.raises(FileExistsError, match="was not written by scratch-gpt"):
        check_output_file(notes)
    check_output_file(notes, overwrite=True)
    write_atomically(notes, "{}")
    assert notes.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.json", "results.json"]


# ----------------------------------------------------------------------------------------------
# Every path a command writes, taken from the declarations (`writes=`), never lands on the user's
# files: pointed at each path the command reads, into a model folder, at a user's folder or file,
# into a folder of ours the user added to, and (a folder) at a training run's folder.

# The inputs each command needs to start, by option name (a new command that writes must add a row).
STARTS = {
    "train-tokenizer": {"data": ["corpus"], "vocab_size": 300},
    "pretrain": {"data": "corpus", "tokenizer": "base"},
    "prepare-data": {"data": "corpus", "tokenizer": "base"},
    "quickstart": {},
    "finetune-classifier": {"model": "base", "data": "data.csv"},
    "finetune-instruct": {"model": "base", "data": "instr.jsonl"},
    "finetune-dpo": {"model": "base", "data": "prefs.json"},
    "import-book": {"checkpoint": "book.pth", "num_heads": 2},
    "export": {"model_dir": "base", "to": "gpt2"},
    "export-gpt2": {"model_dir": "base"},
    "evaluate": {"model": "base", "tasks": ["scratch_perplexity"], "data": "corpus/a.txt", "include_path": ["corpus"]},
    "inspect": {"model": "base", "prompt": "the fox"},
}


def argv_for(command: str, values: dict) -> list[str]:
    """`scratch-gpt COMMAND` with these option values, spelled as the declarations say (positionals in order)."""
    from scratch_gpt.args import declared, flag_of
    from scratch_gpt.cli import COMMANDS

    positional, flags = [], []
    for f in declared(COMMANDS[command].options):
        if f.name not in values:
            continue
        value = values[f.name]
        if f.metadata["positional"]:
            positional.append(str(value))
        elif f.metadata["repeat"]:
            flags += [part for item in value for part in (flag_of(f), str(item))]
        else:
            flags += [flag_of(f), *map(str, value if isinstance(value, list) else [value])]
    return [command, *positional, *flags]


def output_cases() -> list[tuple[str, str, str]]:
    """(command, output option, target) for every declared output of every command."""
    from scratch_gpt.args import declared
    from scratch_gpt.cli import COMMANDS

    cases = []
    for command, spec in COMMANDS.items():
        for f in declared(spec.options):
            kind = f.metadata["writes"]
            if not kind:
                continue
            inputs = [v for name, value in STARTS[command].items() for v in (value if isinstance(value, list) else [value])
                      if any(g.name == name and g.metadata["reads"] for g in declared(spec.options))]
            targets = [*inputs, "base/config.json", "ours/notes.txt" if kind == "file" else "ours"]
            targets += ["mine/notes.txt", "data.csv"] if kind == "file" else ["mine", "run_with_notes"]
            cases += [(command, f.name, target) for target in dict.fromkeys(targets)]
    return cases


@pytest.mark.parametrize("command, name, target", output_cases(), ids=lambda v: str(v))
def test_every_declared_output_is_checked_before_any_work(world, capsys, command, name, target):
    before = tree_hashes(world)
    code = main(argv_for(command, {**STARTS[command], name: target}))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"scratch-gpt {command}: error: \S.*[.)]", last), last
    assert target.split("/")[0] in last, last  # the refusal is about the output, and names it
    assert tree_hashes(world) == before


def test_the_output_cases_come_from_every_command_that_writes():
    from scratch_gpt.args import declared
    from scratch_gpt.cli import COMMANDS

    writers = {name for name, spec in COMMANDS.items() if any(f.metadata["writes"] for f in declared(spec.options))}
    assert writers == set(STARTS) and writers == {case[0] for case in output_cases()}
    assert {"chat", "push"} == set(COMMANDS) - writers  # they read only
    assert len(output_cases()) >= 5 * len(writers)
