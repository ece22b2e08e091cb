"""Stage 2: corpora, packing with a stride, splits and the numbers that put a loss in context."""

import json
import math
import subprocess
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from scratch_gpt.data import (
    builtin_corpus,
    bytes_per_token,
    input_target_pairs,
    PackedStream,
    load_text_corpus,
    pack_dataset,
    train_val_split,
    unigram_entropy,
)

EOS = 0


@pytest.fixture(autouse=True)
def datasets_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Keep the Arrow files `datasets` writes out of the user's cache (and out of the corpus folders)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))


@pytest.fixture(scope="module")
def word_tokenizer():
    """Whitespace words w0..w29 with ids 2..31, so expected ids can be written by hand."""
    vocab = {"<|endoftext|>": 0, "<|pad|>": 1} | {f"w{i}": i + 2 for i in range(30)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")


def words(*numbers):
    return " ".join(f"w{n}" for n in numbers)


def ids(*numbers):
    return [n + 2 for n in numbers]


def write_jsonl(path, texts, column="text"):
    path.write_text("".join(json.dumps({column: text, "id": i}) + "\n" for i, text in enumerate(texts)))


def rows(dataset):
    return [example["input_ids"] for example in dataset]


# --- loading -------------------------------------------------------------------------------------


def test_txt_file_is_one_document(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph\n")
    corpus = load_text_corpus(tmp_path / "a.txt")
    assert corpus.column_names == ["text"]
    assert corpus["text"][:] == ["first paragraph\n\nsecond paragraph\n"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_row_files_give_one_document_per_row_from_the_text_column(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    records = [{"body": "one", "id": 0}, {"body": "two", "id": 1}]
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    corpus = load_text_corpus(str(path), text_column="body")
    assert corpus.column_names == ["text"]
    assert corpus["text"][:] == ["one", "two"]


def test_folder_reads_supported_visible_files_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("from b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("from sub/c")
    write_jsonl(tmp_path / "a.jsonl", ["from a 1", "from a 2"])
    (tmp_path / "notes.rst").write_text("not a corpus file")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "skipped.txt").write_text("hidden files are skipped")
    corpus = load_text_corpus(tmp_path)
    assert corpus["text"][:] == ["from a 1", "from a 2", "from b", "from sub/c"]


def test_glob_and_list_of_files(tmp_path):
    for name in ["b", "a", "c"]:
        (tmp_path / f"{name}.txt").write_text(f"doc {name}")
    assert load_text_corpus(str(tmp_path / "*.txt"))["text"][:] == ["doc a", "doc b", "doc c"]
    in_given_order = [tmp_path / "c.txt", str(tmp_path / "a.txt")]
    assert load_text_corpus(in_given_order)["text"][:] == ["doc c", "doc a"]


def test_streaming_gives_the_same_documents(tmp_path):
    (tmp_path / "b.txt").write_text("text file")
    write_jsonl(tmp_path / "a.jsonl", ["row 1", "row 2"])
    streamed = load_text_corpus(tmp_path, streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [example["text"] for example in streamed] == load_text_corpus(tmp_path)["text"][:]


def test_hub_names_go_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        return datasets.Dataset.from_dict({"body": ["hub text"], "label": [1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = load_text_corpus("someone/some-corpus", text_column="body", split="validation")
    assert calls == [("someone/some-corpus", "validation", False)]
    assert corpus["text"][:] == ["hub text"]


def test_unreachable_hub_name_is_one_clear_error(monkeypatch):
    def offline(name, split, streaming):
        raise ConnectionError(f"Couldn't reach {name!r} on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="no local file, folder or glob.*check the path or the dataset name"):
        load_text_corpus("not-here")


def test_bad_sources_fail_with_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_corpus(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_corpus(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="matches no"):
        load_text_corpus(str(tmp_path / "*.txt"))
    with pytest.raises(FileNotFoundError, match="holds no"):
        load_text_corpus(tmp_path)
    (tmp_path / "table.xlsx").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="files ending in '.xlsx' are not read here; use a .txt, .md"):
        load_text_corpus(tmp_path / "table.xlsx")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_text_corpus(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt' is not UTF-8 text .*on line 1.*--encoding"):
        load_text_corpus(tmp_path / "latin1.txt")
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(ValueError, match="Cannot parse .*broken.jsonl': line 2 is not valid JSON"):
        load_text_corpus(tmp_path / "broken.jsonl")
    write_jsonl(tmp_path / "other.jsonl", ["hello"], column="content")
    with pytest.raises(ValueError, match="no column 'text'.*text_column="):
        load_text_corpus(tmp_path / "other.jsonl")


# --- the built-in corpus -------------------------------------------------------------------------


def test_builtin_corpus_is_python_documentation_deterministic_and_unique():
    corpus = builtin_corpus()
    texts = corpus["text"][:]
    assert sum(len(text.encode()) for text in texts) > 1_000_000
    assert len(set(texts)) == len(texts) and all(text.strip() for text in texts)
    assert any("JSON" in text for text in texts)  # the json module is in there
    assert builtin_corpus()["text"][:] == texts
    assert builtin_corpus(max_documents=50)["text"][:] == texts[:50]


def test_builtin_corpus_is_the_same_in_a_fresh_process():
    """A resumed run rebuilds the corpus in a new process (other imports, another hash seed)."""
    code = "import json; from scratch_gpt.data import builtin_corpus; print(json.dumps(builtin_corpus()['text'][:]))"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(fresh) == builtin_corpus()["text"][:]


def test_builtin_source_and_streaming():
    corpus = load_text_corpus("builtin")
    streamed = load_text_corpus("builtin", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [example["text"] for example in streamed.take(20)] == corpus["text"][:20]


def test_builtin_corpus_packs_with_a_byte_level_tokenizer(tiny_tokenizer):
    corpus = builtin_corpus(max_documents=100)
    blocks = pack_dataset(corpus, tiny_tokenizer, block_size=64)
    encoded = tiny_tokenizer(corpus["text"][:], add_special_tokens=False)["input_ids"]
    stream = [token for document in encoded for token in document + [tiny_tokenizer.eos_token_id]]
    assert len(blocks) == len(stream) // 64 > 10
    assert rows(blocks) == [stream[start : start + 64] for start in range(0, len(stream) - 63, 64)]


# --- packing -------------------------------------------------------------------------------------


@pytest.fixture
def three_documents(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl", [words(0, 1, 2), words(3, 4), words(5)])
    return tmp_path / "docs.jsonl"  # stream: 0 1 2 EOS 3 4 EOS 5 EOS (9 tokens)


def test_documents_are_separated_by_eos_and_disjoint_blocks_drop_the_tail(three_documents, word_tokenizer):
    blocks = pack_dataset(load_text_corpus(three_documents), word_tokenizer, block_size=4)
    assert blocks.column_names == ["input_ids", "labels"]
    assert rows(blocks) == [ids(0, 1, 2) + [EOS], ids(3, 4) + [EOS] + ids(5)]
    assert blocks["labels"][:] == blocks["input_ids"][:]


def test_packing_follows_a_selection_of_documents(three_documents, word_tokenizer):
    corpus = load_text_corpus(three_documents).select([2, 0])
    assert rows(pack_dataset(corpus, word_tokenizer, block_size=3)) == [ids(5) + [EOS] + ids(0), ids(1, 2) + [EOS]]


def test_smaller_stride_gives_overlapping_windows(three_documents, word_tokenizer):
    corpus = load_text_corpus(three_documents)
    assert rows(pack_dataset(corpus, word_tokenizer, block_size=4, stride=2)) == [
        ids(0, 1, 2) + [EOS],
        ids(2) + [EOS] + ids(3, 4),
        ids(3, 4) + [EOS] + ids(5),
    ]
    assert len(pack_dataset(corpus, word_tokenizer, block_size=4, stride=1)) == 9 - 4 + 1


@pytest.mark.parametrize("stride", [1, 3, 5])
def test_streaming_packs_the_same_blocks(tmp_path, word_tokenizer, stride):
    write_jsonl(tmp_path / "a.jsonl", [words(*range(n, n + 3)) for n in range(0, 24, 3)])
    (tmp_path / "b.txt").write_text(words(7, 8, 9))
    packed = pack_dataset(load_text_corpus(tmp_path), word_tokenizer, block_size=5, stride=stride)
    streamed = pack_dataset(load_text_corpus(tmp_path, streaming=True), word_tokenizer, block_size=5, stride=stride)
    assert isinstance(streamed, PackedStream)
    assert list(streamed) == list(packed)


def test_several_processes_pack_the_same_blocks(tmp_path, word_tokenizer):
    write_jsonl(tmp_path / "a.jsonl", [words(n % 30, (n * 7) % 30) for n in range(40)])
    corpus = load_text_corpus(tmp_path / "a.jsonl")
    one = pack_dataset(corpus, word_tokenizer, block_size=8, num_proc=1)
    two = pack_dataset(corpus, word_tokenizer, block_size=8, num_proc=2)
    assert rows(two) == rows(one) and len(one) == 40 * 3 // 8


def test_too_few_tokens_says_how_many_and_what_to_do(three_documents, word_tokenizer):
    message = r"9 tokens, fewer than one block of 10; lower --block-size or add data"
    with pytest.raises(ValueError, match=message):
        pack_dataset(load_text_corpus(three_documents), word_tokenizer, block_size=10)
    streamed = pack_dataset(load_text_corpus(three_documents, streaming=True), word_tokenizer, block_size=10)
    with pytest.raises(ValueError, match=message):
        list(streamed)


def test_bad_packing_arguments(three_documents, word_tokenizer):
    corpus = load_text_corpus(three_documents)
    for stride in (0, 5):
        with pytest.raises(ValueError, match="stride must be between 1 and block_size"):
            pack_dataset(corpus, word_tokenizer, block_size=4, stride=stride)
    with pytest.raises(ValueError, match="needs a 'text' column"):
        pack_dataset(datasets.Dataset.from_dict({"body": ["w1"]}), word_tokenizer, block_size=1)
    no_eos = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no EOS token"):
        pack_dataset(corpus, no_eos, block_size=4)


def test_input_target_pairs_are_the_window_shifted_by_one():
    inputs, targets = input_target_pairs(list(range(10)), block_size=4, stride=3)
    assert inputs.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert targets.tolist() == [[1, 2, 3, 4], [4, 5, 6, 7]]
    assert torch.equal(input_target_pairs(torch.arange(9), 4, 4)[1], torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))
    with pytest.raises(ValueError, match="fewer than one block"):
        input_target_pairs([1, 2, 3, 4], block_size=4, stride=4)


# --- splitting and statistics --------------------------------------------------------------------


def test_split_is_a_deterministic_partition():
    dataset = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(100)]})
    train, val = train_val_split(dataset, 0.1, seed=0)
    assert (len(train), len(val)) == (90, 10)
    assert sorted(train["text"][:] + val["text"][:]) == sorted(dataset["text"][:])
    again_train, again_val = train_val_split(dataset, 0.1, seed=0)
    assert (again_train["text"][:], again_val["text"][:]) == (train["text"][:], val["text"][:])
    assert train_val_split(dataset, 0.1, seed=1)[1]["text"][:] != val["text"][:]
    assert len(train_val_split(dataset.select(range(5)), 0.01, seed=0)[1]) == 1  # never an empty validation set


def test_streaming_split_is_a_deterministic_partition():
    texts = [f"doc {i}" for i in range(200)]
    stream = datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()
    train, val = train_val_split(stream, 0.25, seed=0)
    train_texts, val_texts = [e["text"] for e in train], [e["text"] for e in val]
    assert sorted(train_texts + val_texts) == sorted(texts)
    assert 25 < len(val_texts) < 75
    assert [e["text"] for e in train_val_split(stream, 0.25, seed=0)[1]] == val_texts
    assert [e["text"] for e in train_val_split(stream, 0.25, seed=1)[1]] != val_texts


def test_bad_split_fractions():
    dataset = datasets.Dataset.from_dict({"text": ["a", "b"]})
    for fraction in (0, 1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            train_val_split(dataset, fraction, seed=0)
    with pytest.raises(ValueError, match="leaves one side empty"):
        train_val_split(datasets.Dataset.from_dict({"text": ["a", "b", "c"]}), 0.9, seed=0)
    with pytest.raises(ValueError, match="too short to split"):
        train_val_split(dataset.select([0]), 0.5, seed=0)


def test_a_single_document_is_split_by_characters_like_the_book():
    text = "".join(f"line {i}\n" for i in range(100))
    train, val = train_val_split(datasets.Dataset.from_dict({"text": [text]}), 0.1, seed=0)
    cut = int(len(text) * 0.9)
    assert (train["text"], val["text"]) == ([text[:cut]], [text[cut:]])


def test_bytes_per_token(word_tokenizer):
    assert bytes_per_token([words(1, 2), words(10)], word_tokenizer) == (5 + 3) / 3
    with pytest.raises(ValueError, match="no text"):
        bytes_per_token(["", ""], word_tokenizer)


def test_unigram_entropy_is_the_entropy_of_token_frequencies():
    uniform = datasets.Dataset.from_dict({"input_ids": [[0, 1], [2, 3]] * 3})
    assert unigram_entropy(uniform) == pytest.approx(math.log(4))
    assert unigram_entropy(uniform.to_iterable_dataset()) == pytest.approx(math.log(4))
    skewed = datasets.Dataset.from_dict({"input_ids": [[7, 7, 7, 900]]})
    assert unigram_entropy(skewed) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert unigram_entropy(datasets.Dataset.from_dict({"input_ids": [[5, 5]]})) == 0.0
