"""Which of the book's choices matter for chapter 5? Change one at a time back to scratch_gpt's default.

    python scripts/book/ch05_ablation.py --data the-verdict.txt --tokenizer gpt2-tokenizer --out runs/ablation \
        [--jobs 2] [any pretrain flag, e.g. --hidden-size 128 --num-layers 4 --num-heads 4]

Each variant is `scripts/book/ch05.yaml` with one key changed; the last one changes them all (our
defaults). Prints a Markdown table of the final training loss (the book's measure: eval mode, first
5 training batches) and the best validation loss. Runs already finished in --out are not repeated.
"""

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

RECIPE = Path(__file__).with_name("ch05.yaml")

# name -> (what changes from the book's setting, the keys that say so)
VARIANTS = {
    "book": ("all of the book's settings", {}),
    "tied-head": ("head tied to the token embedding", {"untied-head": False}),
    "qkv-bias": ("bias in the qkv projection", {"no-qkv-bias": False}),
    "gpt2-init": ("GPT-2 init N(0, 0.02)", {"init-style": "gpt2"}),
    "clip": ("gradients clipped at 1.0", {"max-grad-norm": 1.0}),
    "decay-some": ("no decay on biases, norms, embeddings", {"weight-decay-all": False}),
    "schedule": ("100 warmup steps + cosine to 0.1 (pretrain's default)", {"warmup-steps": 100, "min-lr-ratio": 0.1}),
    "betas": ("AdamW betas (0.9, 0.95)", {"adam-betas": [0.9, 0.95]}),
}
VARIANTS["ours"] = ("all of scratch_gpt's defaults", {k: v for _, keys in VARIANTS.values() for k, v in keys.items()})


def run_variant(name: str, args, extra: list[str]) -> dict:
    out = Path(args.out) / name
    metrics = out / "metrics.jsonl"
    if not (out / "model").is_dir():
        recipe = yaml.safe_load(RECIPE.read_text()) | VARIANTS[name][1]
        recipe.pop("book-figures")
        config = Path(args.out) / f"{name}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(recipe))
        command = [sys.executable, "-m", "scratch_gpt.cli", "pretrain", "--config", str(config), "--data", args.data,
                   "--tokenizer", args.tokenizer, "--output-dir", str(out), "--overwrite", "--no-progress", *extra]  # fmt: skip
        with open(Path(args.out) / f"{name}.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    return {"train": evals[-1]["train_eval_loss"], "best_val": min(r["eval_loss"] for r in evals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", default="runs/book-ch05-ablation")
    parser.add_argument("--jobs", type=int, default=1, help="variants run at once")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    args, extra = parser.parse_known_args()
    names = args.only or list(VARIANTS)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(names, pool.map(lambda name: run_variant(name, args, extra), names)))
    print("| run | changed from the book | train loss | best val loss |\n|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {VARIANTS[name][0]} | {result['train']:.2f} | {result['best_val']:.2f} |")


if __name__ == "__main__":
    main()
