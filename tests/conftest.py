"""Shared test setup: offline, tiny, deterministic."""

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def tiny_config():
    from scratch_gpt import ScratchGPTConfig

    return ScratchGPTConfig.from_preset("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    from scratch_gpt import ScratchGPTForCausalLM

    torch.manual_seed(0)
    return ScratchGPTForCausalLM(tiny_config).eval()


TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "Attention lets every position look at the earlier positions.",
    "def add(a, b):\n    return a + b\n",
    "Hello, world! Tokens, embeddings, attention, blocks, logits.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 392-token byte-level BPE trained on a few sentences, all they hold (ids 0/1 = end-of-text/pad)."""
    from scratch_gpt.tokenizer import train_tokenizer

    return train_tokenizer(TINY_CORPUS, vocab_size=392, show_progress=False)


ISOLATION_PRELUDE = """
import sys
sys.modules["scratch_gpt"] = None  # `import scratch_gpt` now raises ImportError, as on a machine without it
try:
    import scratch_gpt
except ImportError:
    pass
else:
    raise SystemExit("scratch_gpt is importable; the isolation failed")
"""


@pytest.fixture
def run_without_scratch_gpt(tmp_path):
    """Run Python code in a fresh process where `scratch_gpt` cannot be imported; return its stdout."""
    def run(code: str, env: dict | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-c", ISOLATION_PRELUDE + code],
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    return run


@pytest.fixture
def make_base_dir(tmp_path, tiny_tokenizer):
    """Factory: a tiny causal-LM folder (random weights) with the project's tokenizer."""
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from scratch_gpt.tokenizer import config_kwargs

    def make(max_position_embeddings: int = 64, hidden_size: int = 32):
        config = ScratchGPTConfig.from_preset(
            "tiny",
            hidden_size=hidden_size,
            max_position_embeddings=max_position_embeddings,
            **config_kwargs(tiny_tokenizer),
        )
        torch.manual_seed(0)
        path = tmp_path / "base"
        ScratchGPTForCausalLM(config).save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
        return path

    return make


ROOT = Path(__file__).resolve().parents[1]


def launch_env() -> dict:
    """The environment of an `accelerate launch` in a test: CPU processes (gloo), one thread each, this checkout."""
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def launch_processes(argv, *, cwd, processes: int = 2, config_file: str | None = None, timeout: int = 600) -> str:
    """`accelerate launch` of `python ARGV` (a script, or `-m module ...`) on CPU processes (gloo);
    returns stdout, and fails the test when the launch fails.

    Every process writes its stderr to a file of its own (torchrun's `--log_dir` with `--tee 2`,
    which also passes it on to the console). On a failure the message holds each process' own
    stderr: the error of the process that broke, not only the other processes' reaction to it
    (gloo's "Connection closed by peer") at the end of the launcher's output.
    """
    env = launch_env()
    with tempfile.TemporaryDirectory() as logs:
        if config_file:
            launcher = ["--config_file", str(ROOT / "scripts" / config_file)]
        else:
            launcher = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
        command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--log_dir", logs, "--tee", "2"]
        done = subprocess.run([*command, *map(str, argv)], env=env, capture_output=True, text=True, cwd=cwd, timeout=timeout)
        if done.returncode != 0:
            stderrs = sorted(Path(logs).rglob("stderr.log"), key=lambda path: int(path.parent.name))
            parts = [f"--- process {path.parent.name}'s stderr:\n{path.read_text()[-4000:]}" for path in stderrs]
            parts = parts or [f"--- stderr:\n{done.stderr[-4000:]}"]  # one process: no torchrun, no log files
            pytest.fail(f"accelerate launch exited with status {done.returncode}\n" + "\n".join(parts), pytrace=False)
    return done.stdout


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (a dataset, a metric, a task index) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the test tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


SENTENCE_WORDS = "the a model token learns reads writes returns each every small large list value key name file".split()


def sentences(count: int = 200, seed: int = 0) -> list[str]:
    """`count` short documents of three random sentences each, the same for a seed."""
    import random

    rng = random.Random(seed)
    words = lambda: " ".join(rng.choice(SENTENCE_WORDS) for _ in range(rng.randint(4, 9)))  # noqa: E731
    return [". ".join(words() for _ in range(3)) + "." for _ in range(count)]
