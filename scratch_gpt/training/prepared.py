"""Token shards: a corpus tokenised once (`scratch-gpt prepare-data`), trained on many times.

    scratch-gpt prepare-data --data corpus/ --tokenizer tok/ --output-dir prepared/ --num-proc 4
    scratch-gpt pretrain --data prepared/ ...          # no tokenisation: blocks are read off the disk

`prepare_data` reads `--data` as every command does (`sources.read_texts`), splits its documents
into training and validation the way `pretrain` does (`data.train_val_split`, same fraction and
seed), tokenises them with `--num-proc` processes (`datasets.map`) and writes each split as one
stream of token ids, each document followed by EOS (as `data.pack_dataset`), cut into shard files of
raw little-endian integers: uint16 when every id fits, else uint32 (like nanoGPT's and llm.c's .bin
files, without a header). `index.json` says how to read them:

    {"format": "scratch_gpt token shards", "dtype": "uint16", "tokenizer_digest": "...",
     "splits": {"train": {"tokens": N, "documents": D, "shards": [{"file": "train-00000.bin",
     "tokens": n, "sha256": "..."}]}, "validation": {...}}, "bytes_per_token": ..., ...}

with the tokenizer itself in `tokenizer/`. The digest (`run_config.tokenizer_digest`) lets
`pretrain` refuse a tokenizer other than the one the shards were made with; the shards' SHA-256 in
the index make `inputs.json` (which hashes only `index.json` here) notice other data on `--resume`.

`TokenBlocks` is the map-style dataset of one split: block `i` is the ids `[i*stride, i*stride +
block_size)` of the split's stream, read from memory-mapped shards (it may span two). Reading a block
costs the same wherever it lies, so each process reads only the blocks of its own batches, and a
resumed run seeks to its position without reading what comes before it.
"""

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from scratch_gpt.data import INDEX, is_prepared  # noqa: F401  (the index's name, and how a folder is told)
from scratch_gpt.errors import BadInput

FORMAT = "scratch_gpt token shards"
TOKENIZER_FOLDER = "tokenizer"
SPLITS = ("train", "validation")


def token_dtype(vocabulary: int) -> np.dtype:
    """uint16 when every id of a `vocabulary`-token tokenizer fits in it (GPT-2's 50,257 does), else uint32."""
    return np.dtype(np.uint16 if vocabulary <= 2**16 else np.uint32)


# ----------------------------------------------------------------------------------------------
# Writing: `scratch-gpt prepare-data`


class ShardWriter:
    """Appends token ids to `PREFIX-00000.bin`, `PREFIX-00001.bin`, ..., `shard_tokens` ids each."""

    def __init__(self, folder: Path, prefix: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.prefix, self.dtype, self.shard_tokens = folder, prefix, dtype, shard_tokens
        self.shards: list[dict] = []
        self.file = self.digest = None

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype).astype("<" + self.dtype.str[1:], copy=False)  # little-endian on disk
        while len(ids):
            if self.file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self.open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            data = part.tobytes()
            self.file.write(data)
            self.digest.update(data)
            self.shards[-1]["tokens"] += len(part)

    def open_next(self) -> None:
        self.close()
        name = f"{self.prefix}-{len(self.shards):05d}.bin"
        self.file, self.digest = open(self.folder / name, "wb"), hashlib.sha256()
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.shards[-1]["sha256"] = self.digest.hexdigest()
            self.file = None


def token_batches(docs, tokenizer, num_proc: int | None):
    """The ids of the documents, EOS after each, as arrays of a batch of documents each: tokenized in
    this process (the Rust tokenizer already uses every core), or with `num_proc` processes by
    `datasets.map` (which writes them to its cache and reads them back)."""
    import pyarrow.compute

    from scratch_gpt.data import _tokenize_batch
    from scratch_gpt.tokenizer import encode_batch

    if num_proc and num_proc > 1:
        options = dict(batched=True, fn_kwargs={"tokenizer": tokenizer}, remove_columns=["text"], num_proc=num_proc)
        tokenized = docs.map(_tokenize_batch, desc="Tokenizing", **options)
        for batch in tokenized.with_format("arrow").iter(batch_size=10_000):
            yield pyarrow.compute.list_flatten(batch["input_ids"]).to_numpy()
        return
    eos = [tokenizer.eos_token_id]
    for batch in docs.iter(batch_size=1000):
        ids = encode_batch(tokenizer, batch["text"])
        yield np.fromiter(itertools.chain.from_iterable(doc + eos for doc in ids), np.int64, sum(map(len, ids)) + len(ids))


def write_split(docs, tokenizer, num_proc, folder: Path, prefix: str, dtype: np.dtype, shard_tokens: int) -> tuple[dict, np.ndarray]:
    """The documents of one split tokenized and written as shards; returns the split's entry of the
    index and (training split) the count of each id."""
    writer, counts = ShardWriter(folder, prefix, dtype, shard_tokens), np.zeros(0, dtype=np.int64)
    for ids in token_batches(docs, tokenizer, num_proc):
        writer.write(ids)
        if prefix == "train":  # token frequencies, for the unigram entropy
            found = np.bincount(ids)
            counts = np.pad(counts, (0, max(0, len(found) - len(counts))))
            counts[: len(found)] += found
    writer.close()
    entry = {"tokens": sum(s["tokens"] for s in writer.shards), "documents": len(docs), "shards": writer.shards}
    return entry, counts


def entropy_of(counts: np.ndarray) -> float:
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def prepare_data(args) -> None:
    """`scratch-gpt prepare-data`: tokenise `--data` once into token shards in `--output-dir` (see the module docstring)."""
    from scratch_gpt.data import train_val_split
    from scratch_gpt.io_utils import atomic_directory
    from scratch_gpt.sources import read_texts
    from scratch_gpt.tokenizer import bytes_per_token
    from scratch_gpt.training.finetune import load_base_tokenizer
    from scratch_gpt.training.run_config import tokenizer_digest

    tokenizer = load_base_tokenizer(args.tokenizer, args.trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise BadInput(f"The tokenizer {args.tokenizer!r} has no EOS token to separate documents; pass one that has (e.g. '<|endoftext|>').")
    corpus = read_texts(args.data, text_column=args.text_column, encoding=args.encoding, errors=args.encoding_errors)
    train_docs, val_docs = train_val_split(corpus, args.val_fraction, args.seed)
    dtype = token_dtype(len(tokenizer))
    index = {"format": FORMAT, "dtype": dtype.name, "tokenizer_digest": tokenizer_digest(tokenizer)}
    index |= {"eos_token_id": tokenizer.eos_token_id, "vocabulary": len(tokenizer), "val_fraction": args.val_fraction, "seed": args.seed}
    with atomic_directory(args.output_dir) as tmp:
        splits = {}
        for name, docs in zip(SPLITS, (train_docs, val_docs)):
            splits[name], counts = write_split(docs, tokenizer, args.num_proc, tmp, name, dtype, args.shard_tokens)
            if name == "train":
                index["unigram_entropy"] = entropy_of(counts)
        index["splits"] = splits
        val_texts = val_docs.select(range(min(500, len(val_docs))))["text"]
        index["bytes_per_token"] = bytes_per_token(val_texts, tokenizer)
        tokenizer.save_pretrained(tmp / TOKENIZER_FOLDER)
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    train = splits["train"]
    print(
        f"{train['tokens']:,} training tokens ({train['documents']:,} documents) in {len(train['shards'])} shard(s) and "
        f"{splits['validation']['tokens']:,} validation tokens, as {dtype.name}, in {args.output_dir}"
    )


# ----------------------------------------------------------------------------------------------
# Reading: `pretrain --data PREPARED`


def read_index(folder) -> dict:
    """The index of a prepared folder; one sentence when it is damaged or a shard is missing."""
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        shards = [shard for split in SPLITS for shard in index["splits"][split]["shards"]]
        itemsize = np.dtype(index["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(f"{str(folder / INDEX)!r} is damaged; run scratch-gpt prepare-data again.") from None
    for shard in shards:
        path = folder / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["tokens"] * itemsize:
            raise BadInput(f"The shard {str(path)!r} is missing or has the wrong size; run scratch-gpt prepare-data again.")
    return index


def check_tokenizer(folder, index: dict, tokenizer, named: str) -> None:
    """The tokenizer a run trains with must be the one the shards were made with (same ids for the same text)."""
    from scratch_gpt.training.run_config import tokenizer_digest

    if tokenizer_digest(tokenizer) != index["tokenizer_digest"]:
        raise BadInput(
            f"The prepared data in {str(folder)!r} was tokenized with another tokenizer than {named} (their "
            f"vocabularies or merges differ); prepare it again with that tokenizer, or leave {named.split()[0]} out "
            "to train with the one in the folder."
        )


class TokenBlocks(torch.utils.data.Dataset):
    """The blocks of one split of a prepared folder, as `pack_dataset` cuts them from the same stream:
    a block of `block_size` ids every `stride` ids (the tail shorter than a block is dropped). Rows
    are {"input_ids", "labels"} (equal: the model shifts); `stack_blocks` batches them."""

    def __init__(self, folder, split: str, block_size: int, stride: int | None = None, index: dict | None = None):
        folder, index = Path(folder), index or read_index(folder)
        self.split, self.block_size, self.stride = split, block_size, stride or block_size
        shards = [shard for shard in index["splits"][split]["shards"] if shard["tokens"]]
        dtype = np.dtype(index["dtype"]).newbyteorder("<")
        self.shards = [np.memmap(folder / shard["file"], dtype=dtype, mode="r") for shard in shards]
        self.starts = np.cumsum([0] + [len(shard) for shard in self.shards])  # where each shard begins in the stream
        self.tokens = int(self.starts[-1])
        self.length = max(0, (self.tokens - block_size) // self.stride + 1)

    def __len__(self) -> int:
        return self.length

    def ids(self, start: int, stop: int) -> np.ndarray:
        """The ids `[start, stop)` of the split's stream, from the one or more shards that hold them."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        while start < stop:
            offset = start - self.starts[first]
            part = self.shards[first][offset : offset + stop - start]
            parts.append(part)
            start, first = start + len(part), first + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        block = torch.from_numpy(self.ids(i * self.stride, i * self.stride + self.block_size).astype(np.int64))
        return {"input_ids": block, "labels": block}


def stack_blocks(rows: list[dict]) -> dict[str, torch.Tensor]:
    """A batch of `TokenBlocks` rows: one (rows, block_size) tensor per column (the model shifts the labels)."""
    input_ids = torch.stack([row["input_ids"] for row in rows])
    return {"input_ids": input_ids, "labels": input_ids}


__all__ = ["TokenBlocks", "is_prepared", "prepare_data", "read_index", "stack_blocks", "token_dtype"]
