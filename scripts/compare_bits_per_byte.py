"""Bits per byte of a model on held-out text: lm-eval's, and ours two ways.

    python scripts/compare_bits_per_byte.py runs/quickstart/model --data the-verdict.txt --val-fraction 0.1

1. lm-eval: `scratch-gpt evaluate MODEL --tasks scratch_perplexity` on the held-out documents
   (each document alone, BOS/EOS in front, disjoint windows of the model's context).
2. ours on the same windows: `scratch_gpt.evaluation.loop_bits_per_byte`, the training loop's
   formula (mean loss per token / ln 2 / bytes_per_token) on lm-eval's windows.
3. ours as the training loop runs: the held-out documents packed by `pack_dataset` (each followed
   by EOS, cut into disjoint blocks of the context length, the tail dropped) and scored by
   `measure` from training/loop.py, with `bytes_per_token` as pretrain computes it.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

import scratch_gpt  # noqa: F401  (registers the Auto classes)
from scratch_gpt.cli import main as scratch_gpt_main
from scratch_gpt.data import bytes_per_token, pack_dataset, train_val_split
from scratch_gpt.evaluation import loop_bits_per_byte
from scratch_gpt.sources import read_texts
from scratch_gpt.training.loop import TrainingConfig, measure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    block_size = model.config.max_position_embeddings
    texts = list(train_val_split(read_texts(args.data), args.val_fraction, args.seed)[1]["text"])

    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "results.json"
        flags = ["--data", args.data, "--val-fraction", str(args.val_fraction), "--seed", str(args.seed), "--output", str(output)]
        if scratch_gpt_main(["evaluate", args.model, "--tasks", "scratch_perplexity", *flags]) != 0:
            return 1
        lm_eval_bpb = json.loads(output.read_text())["results"]["scratch_perplexity"]["bits_per_byte,none"]

    same_windows = loop_bits_per_byte(model, tokenizer, texts, block_size)

    blocks = pack_dataset(datasets.Dataset.from_dict({"text": texts}), tokenizer, block_size=block_size).with_format("torch")
    loader = torch.utils.data.DataLoader(blocks, batch_size=8)
    config = TrainingConfig(bytes_per_token=bytes_per_token(texts, tokenizer), loss_chunk_size=None)
    packed = measure(model, loader, Accelerator(cpu=True), config, None)

    num_tokens = sum(len(tokenizer(text).input_ids) for text in texts)
    print(f"\nheld-out text: {len(texts)} document(s), {sum(len(t.encode()) for t in texts)} bytes, {num_tokens} tokens; "
          f"windows of {block_size} tokens")
    print(f"lm-eval bits_per_byte:                  {lm_eval_bpb:.4f}")
    for name, ours in (("ours, lm-eval's windows", same_windows), (f"ours, packed ({len(blocks)} blocks)", packed)):
        print(f"{name + ' bits_per_byte:':<40}{ours['bits_per_byte']:.4f}  ({ours['bits_per_byte'] / lm_eval_bpb - 1:+.2%} vs lm-eval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
