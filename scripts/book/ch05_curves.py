"""Chapter 5's curves: the book's settings against scratch_gpt's defaults, on the same data.

    python scripts/book/ch05_curves.py BOOK_RUN OURS_RUN [--out scripts/book/ch05_curves.png] [--title TEXT]

BOOK_RUN and OURS_RUN are output folders of `scratch-gpt pretrain` (their metrics.jsonl), e.g. the
`book` and `ours` runs of ch05_ablation.py. Solid: training loss (eval mode, first 5 training
batches); dashed: validation loss. The crosses are the book's published figures.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BOOK_FIGURES = {"train": [(0, 9.82), (85, 0.57)], "validation": [(0, 9.92), (50, 6.12), (85, 6.37)]}


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "train": [(r["step"], r["train_eval_loss"]) for r in records if "train_eval_loss" in r],
        "validation": [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("book_run", type=Path)
    parser.add_argument("ours_run", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ch05_curves.png"))
    parser.add_argument("--title", default="Chapter 5 on The Verdict: the book's settings vs scratch_gpt's defaults")
    args = parser.parse_args()
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for run, label, color in ((args.book_run, "book settings", "tab:blue"), (args.ours_run, "our defaults", "tab:orange")):
        for split, style in (("train", "-"), ("validation", "--")):
            points = curves(run)[split]
            axis.plot(*zip(*points), style, color=color, marker=".", label=f"{label}: {split}")
    for split, marker in (("train", "x"), ("validation", "+")):
        axis.scatter(*zip(*BOOK_FIGURES[split]), color="black", marker=marker, s=60, zorder=3, label=f"the book's figures: {split}")
    axis.set_xlabel("optimizer step (batch 2 x 256 tokens)")
    axis.set_ylabel("loss (nats/token)")
    axis.set_title(args.title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
