"""Benchmark: the project's tokenizer against the `tokenizers` library called directly.

    python scripts/bench_tokenizer.py [--mb 16] [--vocab-size 8192] [--repeats 5]

The corpus is the docstrings of Python's standard library (offline, English prose with some
code), repeated until it has `--mb` megabytes. Each row times the same work both ways, in turns,
best of `--repeats` runs, and prints throughput in MB of UTF-8 text per second:

  train (texts)   scratch_gpt.tokenizer.train_tokenizer(list)  vs  Tokenizer.train_from_iterator(list)
  train (file)    train_tokenizer(path)                        vs  Tokenizer.train([path])
  call (short)    tokenizer(texts)["input_ids"]                vs  [e.ids for e in backend.encode_batch(texts)]
  call (4 KB)     the same on 4 KB pieces of text (how files are read)
  bulk (short)    scratch_gpt.tokenizer.encode_batch(texts)    vs  [e.ids for e in backend.encode_batch_fast(texts)]
  bulk (4 KB)     the same on 4 KB pieces
  call (1 doc)    tokenizer(document)["input_ids"]             vs  backend.encode(document).ids

`backend` is the wrapper's own `backend_tokenizer`, so both sides encode with the same vocabulary
and must return the same ids. In "train (file)" the two read the file differently (the library
feeds each line to the trainer, the project 4 KB pieces cut at line ends), so the work differs a
little and so may the vocabulary.

The wrapper's overhead (1 - ours/direct) should stay under 10%.
"""

import argparse
import ast
import gc
import sysconfig
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from scratch_gpt.tokenizer import SPECIAL_TOKENS, encode_batch, train_tokenizer


def stdlib_docstrings() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for file in sorted(root.glob("**/*.py")):
        if "site-packages" in file.parts:
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if doc := ast.get_docstring(node):
                    docs.append(doc + "\n\n")
    return docs


def corpus(megabytes: float) -> list[str]:
    docs, texts, size = stdlib_docstrings(), [], 0
    while size < megabytes * 1e6:
        doc = docs[len(texts) % len(docs)]
        texts.append(doc)
        size += len(doc.encode("utf-8"))
    return texts


def direct_tokenizer(vocab_size: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """The same byte-level BPE, set up with the `tokenizers` library alone."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tokenizer, trainer


def race(ours, direct, repeats: int) -> tuple[float, object, float, object]:
    """Best time and result of each function, run in turns so that both see the same machine load."""
    best, results = [float("inf"), float("inf")], [None, None]
    for _ in range(repeats):
        for i, function in enumerate((ours, direct)):
            results[i] = None  # free the previous result before the clock starts
            gc.collect()
            start = time.perf_counter()
            results[i] = function()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], results[0], best[1], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=16.0, help="corpus size in megabytes")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    texts = corpus(args.mb)
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
    document = "".join(texts[: max(1, len(texts) // 16)])
    document_mb = len(document.encode("utf-8")) / 1e6
    print(f"corpus: {len(texts):,} stdlib docstrings, {megabytes:.1f} MB; vocab size {args.vocab_size}")

    def train_direct_texts():
        tokenizer, trainer = direct_tokenizer(args.vocab_size)
        tokenizer.train_from_iterator(texts, trainer)
        return tokenizer

    def train_direct_file(path):
        tokenizer, trainer = direct_tokenizer(args.vocab_size)
        tokenizer.train([str(path)], trainer)
        return tokenizer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text("".join(texts), encoding="utf-8")
        ours_t, ours, direct_t, direct = race(
            lambda: train_tokenizer(texts, args.vocab_size, show_progress=False), train_direct_texts, args.repeats
        )
        rows.append(("train (texts)", megabytes, ours_t, direct_t, f"vocab {len(ours)} / {direct.get_vocab_size()}"))
        ours_t, ours_file, direct_t, direct_file = race(
            lambda: train_tokenizer(path, args.vocab_size, show_progress=False),
            lambda: train_direct_file(path),
            args.repeats,
        )
        rows.append(
            ("train (file)", megabytes, ours_t, direct_t, f"vocab {len(ours_file)} / {direct_file.get_vocab_size()}")
        )

    # Encoding: the same trained vocabulary, through the wrapper and through its backend. Calling
    # the tokenizer pays a per-text cost in transformers (a dict and an attention mask per text);
    # `encode_batch` is the project's bulk path that skips it.
    backend = ours.backend_tokenizer
    pieces = [document[i : i + 4096] for i in range(0, len(document), 4096)] * 16  # the 4 KB pieces files are read in
    encode_cases = [
        ("call (short)", texts, lambda batch: ours(batch)["input_ids"], backend.encode_batch, "docstrings"),
        ("call (4 KB)", pieces, lambda batch: ours(batch)["input_ids"], backend.encode_batch, "4 KB pieces"),
        ("bulk (short)", texts, lambda batch: encode_batch(ours, batch), backend.encode_batch_fast, "docstrings"),
        ("bulk (4 KB)", pieces, lambda batch: encode_batch(ours, batch), backend.encode_batch_fast, "4 KB pieces"),
    ]
    for task, batch, ours_encode, direct_encode, note in encode_cases:
        ours_t, ours_ids, direct_t, direct_ids = race(
            lambda: ours_encode(batch),
            lambda: [e.ids for e in direct_encode(batch, add_special_tokens=False)],
            args.repeats,
        )
        assert ours_ids == direct_ids, "the wrapper and the backend disagree"
        batch_mb = sum(len(text.encode("utf-8")) for text in batch) / 1e6
        n_tokens = sum(map(len, ours_ids))
        rows.append((task, batch_mb, ours_t, direct_t, f"{note}, {batch_mb * 1e6 / n_tokens:.2f} bytes/token"))
    ours_t, ours_doc, direct_t, direct_doc = race(
        lambda: ours(document)["input_ids"],
        lambda: backend.encode(document, add_special_tokens=False).ids,
        args.repeats,
    )
    assert ours_doc == direct_doc, "the wrapper and the backend disagree"
    rows.append(("call (1 doc)", document_mb, ours_t, direct_t, f"one text, {len(ours_doc):,} tokens"))

    print(f"\n{'task':<16}{'MB':>7}{'ours MB/s':>12}{'direct MB/s':>13}{'ours/direct':>13}{'overhead':>10}  note")
    for task, mb, ours_t, direct_t, note in rows:
        ratio = direct_t / ours_t  # throughput ratio
        print(
            f"{task:<16}{mb:>7.1f}{mb / ours_t:>12.2f}{mb / direct_t:>13.2f}{ratio:>13.3f}{1 - ratio:>10.1%}  {note}"
        )


if __name__ == "__main__":
    main()
