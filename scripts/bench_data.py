"""Benchmark: token shards, written by `scratch-gpt prepare-data` and read by `pretrain`.

    python scripts/bench_data.py --data the-verdict.txt --repeat 400 --tokenizer gpt2-tokenizer/ [--num-proc 2]

The corpus is `--data`'s texts (a .txt file is one text; a .json or .jsonl file of records gives
the `--text-column` of each, joined with their `--extra-columns`) repeated `--repeat` times, one
document per text. It prints, as medians of `--repeats` runs:

  prepare-data       tokens/s of `scratch-gpt prepare-data` (read, split, tokenize, write the shards)
                     against `encode_batch_fast` of the same `tokenizers` backend called directly on
                     every text in one call (tokenizing alone: no reading, no writing)
  loader             tokens/s one process reads from the shards: `TokenBlocks` in the training loop's
                     shuffled order, through a DataLoader, batches stacked (must reach 1M tokens/s)
  training step      tokens/s of a training step (forward, backward, AdamW) of a quickstart-sized
                     model (vocabulary 2048, hidden 128, 4 layers, 4 heads, block 128, batch 16) on this machine

The loader must be far faster than the step: then reading the data costs nothing in training.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scratch_gpt.cli import main as cli
from scratch_gpt.training.prepared import TokenBlocks, read_index, stack_blocks
from scratch_gpt.training.loop import EpochShuffleSampler, make_loader


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help=".txt file (one text), or .json/.jsonl records")
    parser.add_argument("--text-column", default="instruction")
    parser.add_argument("--extra-columns", default="input,output", help="joined to the text column, comma-separated")
    parser.add_argument("--repeat", type=int, default=400, help="copies of the texts in the corpus")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder")
    parser.add_argument("--num-proc", type=int, default=1, help="prepare-data's --num-proc")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def read_texts(args) -> list[str]:
    path = Path(args.data)
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    text = path.read_text(encoding="utf-8")
    records = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line.strip()]
    columns = [args.text_column, *filter(None, args.extra_columns.split(","))]
    return ["\n\n".join(str(r[c]) for c in columns if r.get(c)) for r in records]


def time_prepare(texts, args, work: Path, run: int) -> tuple[float, int]:
    """Seconds and training + validation tokens of one `prepare-data` run on a new corpus file
    (new, so that no cache of an earlier run is reused)."""
    corpus = work / f"corpus-{run}.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    out = work / f"prepared-{run}"
    argv = ["prepare-data", "--data", str(corpus), "--tokenizer", args.tokenizer, "--output-dir", str(out), "--num-proc", str(args.num_proc)]
    start = time.perf_counter()
    assert cli(argv) == 0
    seconds = time.perf_counter() - start
    splits = read_index(out)["splits"]
    return seconds, splits["train"]["tokens"] + splits["validation"]["tokens"]


def time_direct(texts, tokenizer) -> tuple[float, int]:
    start = time.perf_counter()
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    return seconds, sum(len(e.ids) for e in encodings) + len(texts)  # + one EOS per text, as the shards hold


def time_loader(folder: Path, args) -> float:
    """Tokens per second of one pass of the training loader over the shards."""
    blocks = TokenBlocks(folder, "train", args.block_size)
    loader = make_loader(blocks, args.batch_size, stack_blocks, EpochShuffleSampler(len(blocks), seed=0), drop_last=True)
    start, tokens = time.perf_counter(), 0
    for batch in loader:
        tokens += batch["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def time_training_step(args, vocab: int, steps: int = 10) -> float:
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    config = ScratchGPTConfig.from_preset(
        "tiny", hidden_size=128, num_hidden_layers=4, num_attention_heads=4, vocab_size=vocab, max_position_embeddings=args.block_size
    )
    model = ScratchGPTForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, vocab, (args.batch_size, args.block_size))
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch, loss_chunk_size=256).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch.numel() / (time.perf_counter() - start)


def main():
    from transformers import AutoTokenizer

    args = parse_args()
    texts = read_texts(args) * args.repeat
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: {len(texts):,} texts, {megabytes:.1f} MB; tokenizer {len(tokenizer):,} tokens; torch threads {torch.get_num_threads()}")
    prepare, direct, loader = [], [], []
    with tempfile.TemporaryDirectory() as work:
        for run in range(args.repeats):
            seconds, tokens = time_prepare(texts, args, Path(work), run)
            prepare.append(tokens / seconds)
            seconds, direct_tokens = time_direct(texts, tokenizer)
            direct.append(direct_tokens / seconds)
            loader.append(time_loader(Path(work) / f"prepared-{run}", args))
    step = statistics.median(time_training_step(args, vocab=2048) for _ in range(args.repeats))  # quickstart's vocabulary
    rows = [
        (f"prepare-data (--num-proc {args.num_proc})", statistics.median(prepare)),
        ("tokenizers encode_batch_fast, direct", statistics.median(direct)),
        ("loader, one process (TokenBlocks)", statistics.median(loader)),
        ("training step, quickstart-sized model", step),
    ]
    print(f"\n{'':42} {'tokens/s':>14}")
    for name, rate in rows:
        print(f"{name:42} {rate:>14,.0f}")
    print(f"\nprepare-data reaches {rows[0][1] / rows[1][1]:.0%} of the direct tokenizer; the loader is {rows[2][1] / step:,.0f}x the training step.")
    print("loader >= 1M tokens/s per process:", "yes" if rows[2][1] >= 1e6 else "NO")


if __name__ == "__main__":
    main()
