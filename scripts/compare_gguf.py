"""The GGUF export against transformers on real text: `python scripts/compare_gguf.py MODEL_DIR --text FILE`.

Exports MODEL_DIR with `scratch-gpt export --to gguf` in f32, f16 and q8_0, runs each file in llama.cpp
(llama-cpp-python, `pip install 'scratch_gpt[llama-cpp]'`) and our model in transformers on the last
`--chars` characters of FILE, cut into windows of the model's context (each window read from its
start by both), and prints one table: the file's size; the largest difference of the log-probability
of the actual next token and of any token of the vocabulary (log-softmax, float64); the largest
relative error of the next token's log-probability; the perplexity each computes; and whether
greedy decoding gives the same 20 tokens after the slice's first 32. llama.cpp keeps its KV cache in
f32 (`--kv-cache f16` is its default, which adds its own rounding).
"""

import argparse
import contextlib
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from llama_cpp import Llama
from transformers import AutoTokenizer

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.cli import main
from scratch_gpt.tokenizer import truncates_itself

KV_TYPES = {"f32": 0, "f16": 1}  # ggml's type numbers


def windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[start : start + size] for start in range(0, len(ids) - 1, size) if len(ids[start : start + size]) > 1]


def log_softmax(logits) -> np.ndarray:
    return torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=-1).numpy()


def greedy(step, prompt: list[int], count: int = 20) -> list[int]:
    ids = list(prompt)
    for _ in range(count):
        ids.append(int(np.argmax(step(ids))))
    return ids[len(prompt) :]


def compare(model, llm, ids: list[int], context: int) -> dict:
    next_diff, any_diff, relative, nll_ours, nll_theirs, count = 0.0, 0.0, 0.0, 0.0, 0.0, 0
    for window in windows(ids, context):
        with torch.no_grad():
            ours = log_softmax(model(input_ids=torch.tensor([window])).logits[0])
        llm.reset()
        llm.eval(window)
        theirs = log_softmax(llm.scores[: len(window)])
        positions, targets = np.arange(len(window) - 1), window[1:]
        ours_next, theirs_next = ours[positions, targets], theirs[positions, targets]
        next_diff = max(next_diff, float(np.max(np.abs(theirs_next - ours_next))))
        relative = max(relative, float(np.max(np.abs(theirs_next - ours_next) / np.abs(ours_next))))
        any_diff = max(any_diff, float(np.max(np.abs(theirs - ours))))
        nll_ours, nll_theirs, count = nll_ours - ours_next.sum(), nll_theirs - theirs_next.sum(), count + len(targets)

    def llama_step(prefix):
        llm.reset()
        llm.eval(prefix)
        return llm.scores[len(prefix) - 1]

    prompt = ids[:32]
    with torch.no_grad():
        expected = greedy(lambda prefix: model(input_ids=torch.tensor([prefix])).logits[0, -1].numpy(), prompt)
    same = greedy(llama_step, prompt) == expected
    return dict(next=next_diff, relative=relative, any=any_diff, ppl_ours=math.exp(nll_ours / count),
                ppl_theirs=math.exp(nll_theirs / count), tokens=count, greedy=same)  # fmt: skip


def run(model_dir: str, text_file: str, chars: int, kv_cache: str) -> None:
    tokenizer = truncates_itself(AutoTokenizer.from_pretrained(model_dir))  # the windows are cut here
    model = ScratchGPTForCausalLM.from_pretrained(model_dir).eval()
    context = model.config.max_position_embeddings
    ids = tokenizer(Path(text_file).read_text(encoding="utf-8")[-chars:])["input_ids"]
    print(f"{model_dir}: {sum(p.numel() for p in model.parameters()):,} parameters, context {context}; "
          f"the last {chars:,} characters of {text_file} ({len(ids)} tokens, windows of {context}); {kv_cache} KV cache\n")  # fmt: skip
    print("| GGUF | size | max diff, next token's log-prob | max relative error, next token | max diff, any log-prob "
          "| perplexity, transformers | perplexity, llama.cpp | greedy 20 tokens |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in ("f32", "f16", "q8_0"):
            out = Path(tmp) / outtype
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(["export", model_dir, str(out), "--to", "gguf", "--outtype", outtype]) == 0
            path = out / "model.gguf"
            kv = KV_TYPES[kv_cache]
            with contextlib.closing(Llama(model_path=str(path), n_ctx=context, logits_all=True, verbose=False, type_k=kv, type_v=kv)) as llm:
                r = compare(model, llm, ids, context)
            print(f"| {outtype} | {path.stat().st_size / 1e6:.2f} MB | {r['next']:.2e} | {r['relative']:.2e} | {r['any']:.2e} "
                  f"| {r['ppl_ours']:.3f} | {r['ppl_theirs']:.3f} | {'identical' if r['greedy'] else 'different'} |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--text", required=True, help="a text file; its end is the held-out slice")
    parser.add_argument("--chars", type=int, default=2000, help="how many characters from the end")
    parser.add_argument("--kv-cache", choices=KV_TYPES, default="f32", help="llama.cpp's KV cache type (its default: f16)")
    arguments = parser.parse_args()
    run(arguments.model_dir, arguments.text, arguments.chars, arguments.kv_cache)
