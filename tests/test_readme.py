"""The README runs as written.

Every fenced block of README.md is counted. A `bash` or `python` block runs, in README order, in one
working folder, unless SKIPPED names it with its reason: it needs the network, a GPU, or an extra
install (named). `text` blocks are output or a file listing, not code. The test changes a block in
two ways only: it appends the flags of SMALL to our commands (step counts and sizes), and the data
files the README names (`the-verdict.txt`, `sms.csv`, ...) are small ones made here. In a command
chain, `pip install ...` is the installation this test runs in, and is not repeated.

A Python block runs on its own, or after the previous block when its first line says
"# continues the previous block". A shell command of ours (`scratch-gpt ...`) runs in-process
through `scratch_gpt.cli.main`, its words expanded by bash as a shell would; any other runs in bash.
A command for each of several machines (`$NODE_RANK`) runs twice at once, ranks 0 and 1, with this
machine's loopback as the main machine's address (`MAIN_NODE_IP`).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_checkpoints import BookGPT

from scratch_gpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Blocks not run, named by a piece of their text, with why: ("network" | "gpu" | "extra", reason).
SKIPPED = {
    "pip install -c .ci/constraints.txt": ("network", "the test command itself: a new venv, apt-get and pip"),
    'from_pretrained("openai-community/gpt2")': ("network", "OpenAI's weights from the Hub"),
    "from trl import": ("extra", "trl (pip install trl)"),
    "transformers serve": ("extra", "transformers[serving] and curl"),
    "--model openai-community/gpt2-medium": ("network", "GPT-2 355M from the Hub"),
    "--model HuggingFaceTB/SmolLM2-135M": ("network", "SmolLM2 from the Hub"),
    "--mixed-precision bf16": ("gpu", "bf16 and 20,000 steps of GPT-2 small"),
    "--preset gpt2-xl": ("gpu", "8 and 16 GPUs"),
    "scripts/recipes/gpt2-124m-fineweb.yaml": ("gpu", "8 and 16 GPUs for 10B tokens; FineWeb-Edu, GPT-2's tokenizer and HellaSwag from the Hub"),
    "--tasks hellaswag,arc_easy": ("network", "lm-eval's HellaSwag and ARC data from the Hub"),
    'pip install -e ".[web]"': ("extra", "web (Gradio); the page never returns, tests/test_web.py drives it"),
    "--data the-verdict.txt             # GPT-2's tokenizer from the Hub": ("network", "GPT-2's tokenizer from the Hub"),
    "ch06.yaml --data SMSSpamCollection.tsv   # GPT-2 124M": ("network", "GPT-2 124M from the Hub"),
    "ch07.yaml --data instruction-data.json     # GPT-2 355M": ("network", "GPT-2 355M from the Hub"),
    "scratch-gpt push": ("network", "uploads to the Hub"),
    'from_pretrained("you/my-gpt"': ("network", "downloads from the Hub"),
    "llama-completion -m": ("extra", "llama.cpp's command-line programs (the Python block after it runs the same file in llama.cpp)"),
    "ollama create": ("extra", "Ollama"),
}
REASONS = {"network", "gpu", "extra"}

TRAIN = ["--max-steps", "2", "--batch-size", "2", "--eval-batches", "1", "--no-progress"]
MODEL = ["--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--block-size", "128", "--stride", "128", "--vocab-size", "512"]
# What is appended to each command of ours (and to scripts/pretrain.py and the chapter-5 ablation).
SMALL = {
    "quickstart": TRAIN + MODEL,
    "pretrain": TRAIN + MODEL,
    "finetune-classifier": TRAIN,
    "finetune-instruct": TRAIN + ["--max-answers", "2"],
    "finetune-dpo": TRAIN,
    "evaluate": ["--limit", "4", "--bootstrap-iters", "0"],
    "chat": ["--max-new-tokens", "4"],
    "lm_eval": ["--limit", "4"],
}
SCRIPTS_THAT_PRETRAIN = ("scripts/pretrain.py", "scripts/book/ch05_ablation.py")


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of README.md, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.M | re.S)


def skip_reason(text: str):
    named = [key for key in SKIPPED if key in text]
    assert len(named) <= 1, f"two SKIPPED names match one block: {named}"
    return SKIPPED[named[0]] if named else None


def test_every_block_is_counted_and_each_skip_names_one_block_and_a_reason():
    blocks = readme_blocks()
    assert len(blocks) >= 30 and {language for language, _ in blocks} <= {"bash", "python", "text"}
    for key, (kind, reason) in SKIPPED.items():
        assert kind in REASONS and reason, key
        assert sum(key in text for language, text in blocks if language != "text") == 1, f"{key!r} names no single block"
    run = [text for language, text in blocks if language != "text" and skip_reason(text) is None]
    assert len(run) >= 15  # most of the README runs


# ----------------------------------------------------------------------------------------------
# The files the README names, made small


def make_the_readmes_files(work: Path, tokenizer) -> None:
    shutil.copytree(ROOT / "scripts", work / "scripts", ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    shutil.copytree(ROOT / "scratch_gpt" / "eval_tasks", work / "scratch_gpt" / "eval_tasks")
    words = "the model reads a story and then it writes the next word of the story again".split()
    story = " ".join(words[(i * 7) % len(words)] for i in range(900))
    (work / "the-verdict.txt").write_text(story)
    for folder in ("corpus", "my_corpus"):
        (work / folder).mkdir()
        for i in range(3):
            (work / folder / f"part{i}.txt").write_text(story[i * 1000 : (i + 1) * 1000 + 2000])
    (work / "big").mkdir()
    for i in range(2):
        (work / "big" / f"shard{i}.jsonl").write_text("".join(json.dumps({"text": story[j : j + 400]}) + "\n" for j in range(0, 4000, 200)))
    (work / "held_out.jsonl").write_text("".join(json.dumps({"text": story[j : j + 300]}) + "\n" for j in range(0, 1200, 300)))
    questions = [{"question": f"Which word comes after {w}?", "choices": ["story", "model"], "answer": i % 2} for i, w in enumerate(words[:6])]
    (work / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    task = (ROOT / "scratch_gpt" / "eval_tasks" / "scratch_perplexity.yaml").read_text()
    (work / "my_tasks").mkdir()
    (work / "my_tasks" / "my_task.yaml").write_text(task.replace("task: scratch_perplexity", "task: my_task"))
    texts = [("WIN CASH NOW call this number", "spam"), ("see you at lunch tomorrow", "ham")] * 20
    (work / "sms.csv").write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in texts))
    (work / "SMSSpamCollection.tsv").write_text("Label\tSMS\n" + "".join(f"{label}\t{t}\n" for t, label in texts))
    records = [{"instruction": f"Repeat the word {w}.", "input": "", "output": w} for w in words * 2]
    for name in ("alpaca.json", "instruction-data.json"):
        (work / name).write_text(json.dumps(records))
    pairs = [{**r, "chosen": r["output"], "rejected": r["output"].upper()} for r in records]
    pairs.append({"instruction": "Say a.", "input": "", "chosen": "a", "rejected": "a"})  # as the book's data: identical
    (work / "instruction-data-with-preference.json").write_text(json.dumps(pairs))
    (work / "run.yaml").write_text("data: my_corpus/\noutput-dir: runs/from-yaml\nsave-every: 1\n")
    tokenizer.save_pretrained(work / "gpt2-tokenizer")
    torch.manual_seed(0)  # the book's GPTModel (tests/test_checkpoints.py), 12 heads as the README's command says
    torch.save(BookGPT(vocab=len(tokenizer), context=32, dim=48, layers=1, heads=12).state_dict(), work / "model.pth")


# ----------------------------------------------------------------------------------------------
# Running a block


def commands(text: str) -> list[str]:
    """The commands of a bash block: continued lines joined, comments and `pip install` steps left out."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    steps = [step.strip() for line in lines if line and not line.startswith("#") for step in line.split("&&")]
    return [step for step in steps if not step.startswith("pip install")]


def small_flags(command: str) -> list[str]:
    words = command.split()
    if words[0] == "scratch-gpt":
        return SMALL.get(words[1], [])
    if words[0] == "lm_eval":
        return SMALL["lm_eval"]
    return SMALL["pretrain"] if any(script in command for script in SCRIPTS_THAT_PRETRAIN) else []


def run_command(command: str, work: Path, env: dict) -> None:
    extra = " ".join(small_flags(command))
    if command.startswith("scratch-gpt "):
        words = subprocess.run(["bash", "-c", f'printf "%s\\0" {command[len("scratch-gpt "):]} {extra}'], cwd=work,
                               env=env, capture_output=True, text=True, check=True).stdout.split("\0")[:-1]  # fmt: skip
        code = main(words)
        assert code == 0, f"README command failed (exit {code}): {command} {extra}"
        return
    if "$NODE_RANK" in command:  # a command for each of two machines: both here, the main one at 127.0.0.1
        logs = [work.parent / f"machine{rank}.log" for rank in (0, 1)]  # files: a full pipe would stall a machine
        machines = [subprocess.Popen(["bash", "-c", f"{command} {extra}"], cwd=work, env={**env, "NODE_RANK": str(rank),
                    "MAIN_NODE_IP": "127.0.0.1"}, stdout=log.open("w"), stderr=subprocess.STDOUT) for rank, log in enumerate(logs)]  # fmt: skip
        codes = [machine.wait(timeout=900) for machine in machines]
        assert codes == [0, 0], f"README command failed (exits {codes}): {command} {extra}\n{logs[codes[0] == 0].read_text()[-3000:]}"
        return
    done = subprocess.run(["bash", "-c", f"{command} {extra}"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README command failed (exit {done.returncode}): {command} {extra}\n{done.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.processes
def test_the_readme_runs_as_written(tmp_path, monkeypatch, tiny_tokenizer, capsys):
    work = tmp_path / "clone"
    work.mkdir()
    make_the_readmes_files(work, tiny_tokenizer)
    monkeypatch.chdir(work)
    # PYTHONSAFEPATH: `python -c` here must import the installed package, never the copied scratch_gpt/eval_tasks
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONSAFEPATH": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    bin_dir = str(Path(sys.executable).parent)  # scratch-gpt, accelerate and lm_eval of this environment
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    namespace, ran = {}, 0
    for number, (language, text) in enumerate(readme_blocks(), start=1):
        if language == "text" or skip_reason(text):
            continue
        if language == "python":
            if not text.startswith("# continues the previous block"):
                namespace = {"__name__": f"readme_block_{number}"}
            exec(compile(text, f"README.md block {number}", "exec"), namespace)
        else:
            for command in commands(text):
                run_command(command, work, env)
        ran += 1
    capsys.readouterr()
    assert ran == sum(1 for language, text in readme_blocks() if language != "text" and not skip_reason(text))
    assert (work / "runs" / "quickstart" / "model" / "model.safetensors").is_file()
    assert (work / "runs" / "dpo" / "adapter_config.json").is_file() or (work / "runs" / "dpo" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------
# A newcomer's first hour is quiet: what the libraries say about what we do on purpose is not shown,
# what matters is said in our words, and the slow phases have a bar.

NOISE = (
    "LOAD REPORT",  # the classifier's new head, added on purpose
    "Token indices sequence length is longer",  # every command cuts or packs to the context itself
    "is_gradient_checkpointing",  # peft reading a deprecated transformers property
    "not a git repository",  # lm-eval's `git describe`
    "kwarg is not of type",  # lm-eval on a model object, passed on purpose
    "already-initialized model",
    "Removed shared tensor",  # accelerate on tied weights, which are meant to be shared
    "Loading weights",  # transformers' bars for a model folder of a few MB
    "Writing model shards",
    "\x1b[1m",  # raw terminal colours in a log file (a bar's cursor moves are fine)
    "\x1b[0m",
)
RUN_ALL = """
import sys
from scratch_gpt.cli import main
commands = [
    ["finetune-classifier", "--model", "base", "--data", "sms.csv", "--output-dir", "spam"],
    ["finetune-instruct", "--model", "base", "--data", "alpaca.json", "--output-dir", "instruct", "--lora",
     "--max-answers", "4", "--eval-every", "1"],
    ["finetune-dpo", "--model", "instruct", "--data", "prefs.json", "--output-dir", "dpo", "--skip-identical"],
    ["evaluate", "base", "--tasks", "scratch_perplexity", "--data", "story.txt", "--bootstrap-iters", "0", "--limit", "2"],
    ["pretrain", "--data", "story.txt", "--output-dir", "run", "--save-every", "1", "--vocab-size", "2000",
     "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--block-size", "16"],
]
for argv in commands:
    print("$", *argv[:1], file=sys.stderr, flush=True)
    code = main(argv + (["--max-steps", "2", "--batch-size", "2"] if argv[0] != "evaluate" else []))
    if code:
        sys.exit(code)
"""


@pytest.mark.slow
def test_a_newcomers_commands_say_what_matters_and_nothing_else(make_base_dir, tmp_path):
    make_base_dir(max_position_embeddings=128)
    story = " ".join(["the model reads a story and writes the next word"] * 60)
    (tmp_path / "story.txt").write_text(story)
    texts = [("WIN CASH NOW call", "spam"), ("see you at lunch", "ham")] * 10
    (tmp_path / "sms.csv").write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in texts))
    records = [{"instruction": f"Repeat {word} " * (40 if i % 5 == 0 else 1), "output": word} for i, word in enumerate(story.split()[:20])]
    (tmp_path / "alpaca.json").write_text(json.dumps(records))
    prefs = [{**r, "chosen": r["output"], "rejected": r["output"].upper()} for r in records]
    (tmp_path / "prefs.json").write_text(json.dumps(prefs + [{"instruction": "a", "chosen": "b", "rejected": "b"}]))
    done = subprocess.run([sys.executable, "-c", RUN_ALL], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert [noise for noise in NOISE if noise in said] == [], said[-3000:]
    assert "A new classification head (2 classes) starts from random weights." in said
    assert "were truncated" in said  # the long records, in our words
    assert re.search(r"answering \d+ held-out instructions", said) and "evaluating" in said  # the slow phases have bars
    assert "Skipped 1 records whose chosen and rejected answers are the same" in said
    assert "The tokenizer has" in said and "not the 2,000 asked for" in said  # a small corpus, said once
