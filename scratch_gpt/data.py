"""Stage 2, data sampling: corpus -> token ids -> fixed-length blocks with a stride.

The pipeline, top to bottom:

1. `load_text_corpus(source)` turns local files, folders, globs, a Hub dataset name or the string
   "builtin" into a `datasets` Dataset (or, with `streaming=True`, an IterableDataset) whose only
   column is "text", one document per row.
2. `pack_dataset(corpus, tokenizer, block_size=..., stride=...)` tokenizes every document with a
   batched `datasets.map`, appends the tokenizer's EOS id after each document, reads the result
   as one long stream of token ids and cuts a block of `block_size` ids every `stride` ids: the
   book's sliding window. `stride == block_size` gives disjoint blocks, a smaller stride gives
   overlapping ones. Each row has `input_ids` and `labels` (equal: the model shifts the labels by
   one inside, so the targets of a block are the block shifted by one).
3. `train_val_split` makes a deterministic train/validation split; `bytes_per_token` and
   `unigram_entropy` give the two numbers that put a loss in context (bits per byte, and the loss
   of a model that ignores context).

`input_target_pairs` shows step 2 the way the book draws it, as (input, target) tensors.
"""

import contextlib
import glob
import importlib
import importlib.util
import inspect
import io
import itertools
import os
import pkgutil
import random
import sys
import warnings
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute
import torch

from scratch_gpt.tokenizer import encode_batch

# File suffix -> the `datasets` builder that reads it. A .txt file is ONE document (the whole file);
# JSON Lines, JSON and Parquet files hold one document per row.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

# Standard-library modules that do something on import (open a browser, print, start a GUI or a
# REPL, touch the terminal, write cache files) or are tests and platform tools, not documentation.
SKIPPED_MODULES = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "readline", "rlcompleter",
    "lib2to3", "ensurepip", "distutils", "test", "tests", "encodings",
}


# ---------------------------------------------------------------------------------------------
# 1. Loading a corpus
# ---------------------------------------------------------------------------------------------


def load_text_corpus(source, *, streaming=False, text_column="text", split="train"):
    """Load a corpus as a Dataset (or IterableDataset when `streaming`) with one column, "text".

    `source` is one of:
    - "builtin": the docstrings of the Python standard library (see `builtin_corpus`);
    - a local .txt file (the whole file is one document), .jsonl/.json or .parquet file (one
      document per row, read from `text_column`), a folder (every such file inside, recursively,
      in sorted order, skipping hidden files and folders), a glob pattern, or a list of any of
      these (kept in the given order);
    - otherwise the name of a dataset on the Hugging Face Hub, loaded with `datasets.load_dataset`
      (this needs network, or the dataset in the local cache).
    Files are read by `datasets`, which caches them as Arrow files; streaming reads them lazily,
    for corpora larger than memory.
    """
    if source == "builtin":
        corpus = builtin_corpus()
        return corpus.to_iterable_dataset() if streaming else corpus
    files = _local_files(source)
    if files is None:
        try:
            corpus = datasets.load_dataset(source, split=split, streaming=streaming)
        except (ConnectionError, FileNotFoundError) as error:
            raise FileNotFoundError(
                f"{source!r} is no local file, folder or glob, and loading it as a Hub dataset failed ({error}); "
                "check the path or the dataset name."
            ) from error
        return _text_only(corpus, text_column, source)
    for path in files:
        if path.stat().st_size == 0:
            raise ValueError(f"The corpus file {str(path)!r} is empty; add text to it or remove it.")
    # Consecutive files of the same type are read by one builder; the parts are concatenated in order.
    parts = []
    for builder, group in itertools.groupby(files, key=lambda path: BUILDERS[path.suffix.lower()]):
        options = {"sample_by": "document"} if builder == "text" else {}
        data_files = [str(path) for path in group]
        where = data_files[0] if len(data_files) == 1 else f"{data_files[0]} (and {len(data_files) - 1} more)"
        try:
            part = datasets.load_dataset(builder, data_files=data_files, split="train", streaming=streaming, **options)
        except datasets.exceptions.DatasetGenerationError as error:
            raise ValueError(
                f"Cannot read {where}: {error.__cause__}; "
                f"fix the file (UTF-8 text, valid {builder} rows) or leave it out."
            ) from error
        parts.append(_text_only(part, text_column, where))
    return datasets.concatenate_datasets(parts)


def _local_files(source):
    """The sorted list of supported files that `source` names, or None if it names no local path.

    A string that exists on disk, contains a glob character or ends with a supported suffix is
    local (so a typo in a file name fails here, not on the Hub); anything else is a Hub name.
    """
    if isinstance(source, (list, tuple)):
        return [path for item in source for path in _local_files(Path(item))]
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        visible = (p for p in path.rglob("*") if not any(part.startswith(".") for part in p.relative_to(path).parts))
        files = sorted(p for p in visible if p.is_file() and p.suffix.lower() in BUILDERS)
        if not files:
            raise FileNotFoundError(f"The folder {text!r} holds no {_suffixes()} file; add one or pass another folder.")
        return files
    if path.is_file():
        if path.suffix.lower() not in BUILDERS:
            raise ValueError(f"Cannot read {text!r}: unsupported file type; use a {_suffixes()} file.")
        return [path]
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in BUILDERS)
        if not files:
            raise FileNotFoundError(f"The pattern {text!r} matches no {_suffixes()} file; check the pattern.")
        return files
    if path.suffix.lower() in BUILDERS or isinstance(source, os.PathLike):
        raise FileNotFoundError(f"The corpus file {text!r} does not exist; check the path.")
    return None


def _suffixes():
    return "/".join(BUILDERS)


def _text_only(corpus, text_column, where):
    """Keep only `text_column`, renamed to "text"; refuse a missing column or an empty corpus."""
    columns = corpus.column_names
    if columns is not None and text_column not in columns:
        raise ValueError(
            f"The corpus {where!r} has no column {text_column!r} (it has {columns}); pass text_column= one of them."
        )
    corpus = corpus.select_columns([text_column])
    if text_column != "text":
        corpus = corpus.rename_column(text_column, "text")
    if isinstance(corpus, datasets.Dataset) and len(corpus) == 0:
        raise ValueError(f"The corpus {where!r} is empty; add some text.")
    return corpus


# ---------------------------------------------------------------------------------------------
# The built-in corpus: Python's own documentation, gathered at run time
# ---------------------------------------------------------------------------------------------


def builtin_corpus(max_documents=None):
    """The docstrings of the Python standard library as a Dataset, one docstring per row.

    Nothing is downloaded or stored: every public standard-library module (and subpackage) is
    imported, and the docstrings of the module, its functions, its classes and their methods are
    collected in sorted order, without duplicates, followed by the language help topics that
    ship with Python (`pydoc_data`). About 1.6 MB of English prose with code in it, the same on
    every run of the same Python. `max_documents` stops early (for quick tests).
    """
    # Imports may print or warn; neither should reach the user's terminal.
    with (
        warnings.catch_warnings(action="ignore"),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        documents = list(itertools.islice(_unique(_stdlib_docstrings()), max_documents))
    return datasets.Dataset.from_dict({"text": documents})


def _unique(texts):
    seen = set()
    for text in texts:
        text = inspect.cleandoc(text) if isinstance(text, str) else ""
        if text and text not in seen:
            seen.add(text)
            yield text


def _stdlib_docstrings():
    for name in _stdlib_module_names():
        try:
            module = importlib.import_module(name)
        except Exception:  # modules for another platform, or missing optional C libraries
            continue
        yield from _docstrings_of(module)
    from pydoc_data.topics import topics

    yield from (topics[key] for key in sorted(topics))


def _stdlib_module_names():
    """Public standard-library modules and their subpackages, sorted, minus SKIPPED_MODULES."""

    def wanted(name):
        return not any(part.startswith("_") or part in SKIPPED_MODULES for part in name.split("."))

    names = set()
    for name in filter(wanted, sys.stdlib_module_names):
        names.add(name)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found = pkgutil.walk_packages(spec.submodule_search_locations, f"{name}.", onerror=lambda _: None)
            names.update(info.name for info in found if wanted(info.name))
    return sorted(names)


def _docstrings_of(module):
    """Docstrings of a module and of the public functions, classes and methods it defines.

    Only the module docstring of `sys`: its members are hooks that shells and test runners
    replace, and the corpus must not depend on who imported it.
    """
    yield module.__doc__
    members = {} if module is sys else vars(module)
    for name, obj in sorted(members.items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isroutine(obj):
            yield obj.__doc__
        if inspect.isclass(obj):
            yield obj.__doc__
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("_") and (inspect.isroutine(member) or isinstance(member, property)):
                    yield member.__doc__


# ---------------------------------------------------------------------------------------------
# 2. Tokenizing and packing into blocks
# ---------------------------------------------------------------------------------------------


def pack_dataset(dataset, tokenizer, *, block_size, stride=None, num_proc=None):
    """Tokenize `dataset` ("text" column) and cut the token stream into blocks of `block_size`.

    Documents are joined into one stream, each followed by `tokenizer.eos_token_id`. A block
    starts every `stride` tokens (default `block_size`: disjoint blocks; smaller: overlapping
    windows, as in the book's sliding window); the tail shorter than a block is dropped. Returns
    a Dataset (an IterableDataset, packed lazily, when given one) with `input_ids` and `labels`,
    both `block_size` long and equal: the model shifts the labels by one inside.

    Tokenization is a batched `datasets.map` over `num_proc` processes (default one); for a
    corpus loaded from files, `datasets` caches its result, so a second run skips it. With a
    streaming corpus the tokens are counted while training reads them, so "too few tokens" is
    raised at the first batch instead of here.
    """
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise ValueError(
            f"stride must be between 1 and block_size ({block_size}), got {stride}; a larger stride would skip tokens."
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no EOS token to separate documents; set tokenizer.eos_token (e.g. '<|endoftext|>')."
        )
    if dataset.column_names is not None and "text" not in dataset.column_names:
        raise ValueError(
            f"pack_dataset needs a 'text' column, the dataset has {dataset.column_names}; "
            "use load_text_corpus(..., text_column=...)."
        )
    map_options = {} if isinstance(dataset, datasets.IterableDataset) else {"num_proc": num_proc, "desc": "Tokenizing"}
    tokenized = dataset.map(
        _tokenize_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer},
        remove_columns=dataset.column_names,
        **map_options,
    )
    features = datasets.Features(
        {name: datasets.List(datasets.Value("int64"), length=block_size) for name in ("input_ids", "labels")}
    )
    if isinstance(tokenized, datasets.IterableDataset):
        arguments = {"tokenized": tokenized, "block_size": block_size, "stride": stride}
        return datasets.IterableDataset.from_generator(_stream_blocks, features=features, gen_kwargs=arguments)
    ids = _flat_token_ids(tokenized)
    _check_enough_tokens(len(ids), block_size)
    blocks = np.lib.stride_tricks.sliding_window_view(ids, block_size)[::stride]
    return datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks}, features=features)


def _tokenize_batch(batch, tokenizer):
    """One `datasets.map` step: token ids of each document, followed by EOS."""
    ids = encode_batch(tokenizer, batch["text"])  # ids only: a third faster than tokenizer(...) on short texts
    return {"input_ids": [doc + [tokenizer.eos_token_id] for doc in ids]}


def _flat_token_ids(tokenized):
    """All token ids of a tokenized Dataset as one int64 array, read straight from Arrow."""
    column = tokenized.with_format("arrow")["input_ids"]  # respects a selection of rows, unlike .data
    return np.asarray(pyarrow.compute.list_flatten(column).to_numpy(), dtype=np.int64)


def _stream_blocks(tokenized, block_size, stride):
    """The same windows as the non-streaming path, cut from a buffer while the stream flows."""
    buffer, seen = [], 0
    for example in tokenized:
        buffer.extend(example["input_ids"])
        seen += len(example["input_ids"])
        while len(buffer) >= block_size:
            block = buffer[:block_size]
            yield {"input_ids": block, "labels": block}
            del buffer[:stride]
    _check_enough_tokens(seen, block_size)


def _check_enough_tokens(num_tokens, block_size):
    if num_tokens < block_size:
        raise ValueError(
            f"The corpus has {num_tokens} tokens, fewer than one block of {block_size}; lower --block-size or add data."
        )


def input_target_pairs(token_ids, block_size, stride):
    """The book's sliding window as tensors: inputs x[i] = ids[s:s+L], targets y[i] = ids[s+1:s+L+1].

    `s` runs over 0, stride, 2*stride, ... while a whole target fits. (pack_dataset keeps only x,
    as `input_ids` and `labels`, because the model does the shift by one itself.)
    """
    ids = torch.as_tensor(token_ids)
    _check_enough_tokens(len(ids) - 1, block_size)
    windows = ids.unfold(0, block_size + 1, stride)  # (num_blocks, block_size + 1)
    return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------------------------------------
# 3. Splitting and the numbers that put a loss in context
# ---------------------------------------------------------------------------------------------


def train_val_split(dataset, val_fraction, seed):
    """Split into (train, validation), the same way for the same dataset, fraction and seed.

    A Dataset is shuffled with `seed` and `round(len * val_fraction)` rows (at least one) go to
    validation; a Dataset of one document (a single text file) is cut at `1 - val_fraction` of its
    characters instead, the validation text being the end. An IterableDataset sends row i to
    validation when a random number seeded by (seed, i) falls below `val_fraction`. Split documents
    before `pack_dataset` when blocks overlap (stride < block_size), so no validation token also
    appears in a training block.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    if isinstance(dataset, datasets.IterableDataset):
        def in_validation(_, index):
            return random.Random(f"{seed}-{index}").random() < val_fraction

        def in_train(example, index):
            return not in_validation(example, index)

        return dataset.filter(in_train, with_indices=True), dataset.filter(in_validation, with_indices=True)
    if len(dataset) == 1:  # one document (a single text file): split its text, as the book does
        text = dataset[0]["text"]
        cut = int(len(text) * (1 - val_fraction))
        if not 0 < cut < len(text):
            raise ValueError(f"The corpus is one document of {len(text)} characters, too short to split; add data.")
        return datasets.Dataset.from_dict({"text": [text[:cut]]}), datasets.Dataset.from_dict({"text": [text[cut:]]})
    num_val = max(1, round(len(dataset) * val_fraction))
    if num_val >= len(dataset):
        raise ValueError(
            f"A validation fraction of {val_fraction} of {len(dataset)} rows leaves one side empty; "
            "change val_fraction or add data."
        )
    parts = dataset.train_test_split(test_size=num_val, seed=seed)
    return parts["train"], parts["test"]


def bytes_per_token(texts, tokenizer):
    """UTF-8 bytes per token over `texts` (an iterable of strings), without special tokens.

    Divide a loss in nats/token by ln(2) * bytes_per_token to get bits per byte, a number that
    compares models with different tokenizers.
    """
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError("bytes_per_token got no text to tokenize; pass a non-empty list of strings.")
    num_bytes = sum(len(text.encode("utf-8")) for text in texts)
    num_tokens = sum(len(ids) for ids in encode_batch(tokenizer, texts))
    return num_bytes / num_tokens


def unigram_entropy(dataset):
    """Entropy, in nats per token, of the token frequencies in `dataset`'s `input_ids`.

    It is the loss of the best model that ignores context (it always predicts these
    frequencies): a trained model's loss should end clearly below it.
    """
    counts = np.zeros(0, dtype=np.int64)
    for batch in dataset.iter(batch_size=1024):
        batch_counts = np.bincount(np.ravel(batch["input_ids"]))
        counts = np.pad(counts, (0, max(0, len(batch_counts) - len(counts))))
        counts[: len(batch_counts)] += batch_counts
    total = counts.sum()
    if total == 0:
        raise ValueError("unigram_entropy got a dataset without tokens; pack some text first.")
    probabilities = counts[counts > 0] / total
    return float(-(probabilities * np.log(probabilities)).sum())
