"""Stage 2, data sampling: corpus -> token ids -> fixed-length blocks with a stride.

The pipeline, top to bottom:

1. `scratch_gpt.sources.read_texts(source)` (also importable here as `load_text_corpus`) turns
   files, folders, globs, a Hub dataset or "builtin" into a `datasets` Dataset (an IterableDataset
   with `streaming=True`) whose only column is "text", one document per row.
2. `pack_dataset(corpus, tokenizer, block_size=..., stride=...)` tokenizes the documents into one
   stream of token ids, EOS after each, and cuts a block of `block_size` ids every `stride` ids:
   the book's sliding window (disjoint blocks when `stride == block_size`, overlapping below).
3. `train_val_split` makes a deterministic split; `unigram_entropy` (the loss of a model that
   ignores context) and the tokenizer's `bytes_per_token` (for bits per byte) put a loss in context.

`input_target_pairs` shows step 2 the way the book draws it, as (input, target) tensors.
"""

import itertools
import random
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute
import torch

from scratch_gpt.errors import BadInput
from scratch_gpt.sources import builtin_corpus, read_texts
from scratch_gpt.tokenizer import bytes_per_token, encode_batch

INDEX = "index.json"  # a `prepare-data` folder (scratch_gpt.training.prepared) is told by its index


def is_prepared(source) -> bool:
    """Whether `--data` names a folder of token shards written by `scratch-gpt prepare-data`."""
    return isinstance(source, (str, Path)) and (Path(source) / INDEX).is_file()

# The corpus reader and the tokenizer's compression live in their own modules; these names stay
# importable from here for stage-2 code written against them.
load_text_corpus = read_texts
__all__ = ["pack_dataset", "input_target_pairs", "train_val_split", "unigram_entropy"]
__all__ += ["load_text_corpus", "builtin_corpus", "bytes_per_token"]  # from those modules

# --- 2. Tokenizing and packing into blocks --------------------------------------------------------


def pack_dataset(dataset, tokenizer, *, block_size, stride=None, num_proc=None):
    """Tokenize `dataset` ("text" column) and cut the token stream into blocks of `block_size`.

    Documents are joined into one stream, each followed by `tokenizer.eos_token_id`. A block
    starts every `stride` tokens (default `block_size`: disjoint blocks; smaller: overlapping
    windows, as in the book's sliding window); the tail shorter than a block is dropped. Returns
    a Dataset (an IterableDataset, packed lazily, when given one) with `input_ids` and `labels`,
    both `block_size` long and equal: the model shifts the labels by one inside.

    Tokenization is a batched `datasets.map` over `num_proc` processes (default one); for a corpus
    loaded from files, `datasets` caches its result, so a second run skips it. A streaming corpus is
    packed while training reads it (`PackedStream`, which can resume where it was) and counted then:
    "too few tokens" is raised at the end of the stream instead of here.
    """
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise BadInput(
            f"stride must be between 1 and block_size ({block_size}), got {stride}; a larger stride would skip tokens."
        )
    if tokenizer.eos_token_id is None:
        raise BadInput(
            "The tokenizer has no EOS token to separate documents; set tokenizer.eos_token (e.g. '<|endoftext|>')."
        )
    if dataset.column_names is not None and "text" not in dataset.column_names:
        raise BadInput(
            f"pack_dataset needs a 'text' column, the dataset has {dataset.column_names}; "
            "use read_texts(..., text_column=...)."
        )
    if isinstance(dataset, datasets.IterableDataset):
        return PackedStream(dataset, tokenizer, block_size, stride)
    map_options = dict(batched=True, fn_kwargs={"tokenizer": tokenizer}, remove_columns=dataset.column_names)
    tokenized = dataset.map(_tokenize_batch, num_proc=num_proc, desc="Tokenizing", **map_options)
    block = datasets.List(datasets.Value("int64"), length=block_size)
    features = datasets.Features({"input_ids": block, "labels": block})
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


class PackedStream(torch.utils.data.IterableDataset):
    """The blocks of a stream of documents, cut as the non-streaming path cuts them, while the
    documents flow; a training loop can save where it is and resume there (`state_dict`,
    `load_state_dict`, as a `datasets.IterableDataset`).

    The place is the documents' stream state after the last document read into the buffer (for
    local files: which file, and how many rows into it; `datasets` resumes by re-reading that file
    up to the row, and no file before it) and the tokens of the buffer not yet cut. Documents are
    tokenized `TOKENIZE_BATCH` at a time, the state taken after each one."""

    TOKENIZE_BATCH = 64

    def __init__(self, documents: datasets.IterableDataset, tokenizer, block_size: int, stride: int):
        self.documents, self.tokenizer, self.block_size, self.stride = documents, tokenizer, block_size, stride
        self.place = self.start = None  # (documents' state, buffer, its length, tokens seen) at the last block

    def set_epoch(self, epoch: int) -> None:
        self.documents.set_epoch(epoch)  # the documents' state belongs to an epoch (`datasets`)

    def state_dict(self) -> dict:
        """Where the blocks yielded so far end (JSON-serialisable)."""
        if self.place is None:
            return None
        documents_state, buffer, length, seen = self.place
        # Since that block the buffer has at most grown at its end (the next block cuts it before it is yielded),
        # so its first `length` tokens are the ones not yet cut then. Copied here, once, not at every block.
        return {"documents": documents_state, "buffer": buffer[:length], "tokens": seen}

    def load_state_dict(self, state: dict) -> None:
        """The next pass over the blocks continues after the ones `state` was taken after."""
        self.documents.load_state_dict(state["documents"])
        self.start = state

    def __iter__(self):
        start, self.start = self.start or {"buffer": [], "tokens": 0}, None
        buffer, seen = list(start["buffer"]), start["tokens"]
        size, stride = self.block_size, self.stride
        for ids, documents_state in self._documents():
            buffer.extend(ids)
            seen += len(ids)
            while len(buffer) >= size:
                block = buffer[:size]
                del buffer[:stride]
                self.place = (documents_state, buffer, len(buffer), seen)
                yield {"input_ids": block, "labels": block}
        _check_enough_tokens(seen, size)

    def _documents(self):
        """(token ids followed by EOS, the documents' state after it) of each document in turn."""
        rows = iter(self.documents)
        while batch := [(row["text"], self.documents.state_dict()) for row in itertools.islice(rows, self.TOKENIZE_BATCH)]:
            texts, states = zip(*batch)
            for ids, state in zip(encode_batch(self.tokenizer, list(texts)), states):
                yield ids + [self.tokenizer.eos_token_id], state


def _check_enough_tokens(num_tokens, block_size):
    if num_tokens < block_size:
        raise BadInput(
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


# --- 3. Splitting and the numbers that put a loss in context --------------------------------------


def train_val_split(dataset, val_fraction, seed):
    """Split into (train, validation), the same way for the same dataset, fraction and seed.

    A Dataset is shuffled with `seed` and `round(len * val_fraction)` rows (at least one) go to
    validation; a Dataset of one document (a single text file) is cut at `1 - val_fraction` of its
    characters instead, validation getting the end. An IterableDataset sends a document to
    validation when a random number seeded by (seed, its text) falls below `val_fraction`. Split documents before
    `pack_dataset` when blocks overlap (stride < block_size): no validation token is then trained on.
    """
    if not 0 < val_fraction < 1:
        raise BadInput(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    if isinstance(dataset, datasets.IterableDataset):
        def in_validation(example):  # by its text, not its place: the same for a process reading a share of the stream
            return random.Random(f"{seed}-{example['text']}").random() < val_fraction

        return dataset.filter(lambda example: not in_validation(example)), dataset.filter(in_validation)
    if len(dataset) == 1:  # one document (a single text file): split its text, as the book does
        text = dataset[0]["text"]
        cut = int(len(text) * (1 - val_fraction))
        if not 0 < cut < len(text):
            raise BadInput(f"The corpus is one document of {len(text)} characters, too short to split; add data.")
        return datasets.Dataset.from_dict({"text": [text[:cut]]}), datasets.Dataset.from_dict({"text": [text[cut:]]})
    num_val = max(1, round(len(dataset) * val_fraction))
    if num_val >= len(dataset):
        raise BadInput(
            f"A validation fraction of {val_fraction} of {len(dataset)} rows leaves one side empty; "
            "change val_fraction or add data."
        )
    parts = dataset.train_test_split(test_size=num_val, seed=seed)
    return parts["train"], parts["test"]


def unigram_entropy(dataset):
    """Entropy, in nats per token, of the token frequencies in `dataset`'s `input_ids`.

    The loss of the best model that ignores context (it predicts these frequencies); a trained one ends well below.
    """
    counts = np.zeros(0, dtype=np.int64)
    for batch in dataset.iter(batch_size=1024):
        batch_counts = np.bincount(np.ravel(batch["input_ids"]))
        counts = np.pad(counts, (0, max(0, len(batch_counts) - len(counts))))
        counts[: len(batch_counts)] += batch_counts
    total = counts.sum()
    if total == 0:
        raise BadInput("unigram_entropy got a dataset without tokens; pack some text first.")
    probabilities = counts[counts > 0] / total
    return float(-(probabilities * np.log(probabilities)).sum())
