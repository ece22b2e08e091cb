"""The one reader behind every --data (scratch_gpt/sources.py): sources, suffixes, encodings, nulls."""

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scratch_gpt import sources
from scratch_gpt.data import load_text_corpus
from scratch_gpt.sources import SUFFIXES, read_records, read_texts
from scratch_gpt.tokenizer import iter_texts

ROWS = [{"text": "first row", "n": 1}, {"text": "second row", "n": 2}]


@pytest.fixture(autouse=True)
def datasets_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Keep the Arrow files `datasets` writes out of the user's cache (and out of the corpus folders)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))


def write_table(path, rows, encoding="utf-8"):
    """`rows` in the format the suffix of `path` names."""
    suffix = path.suffix
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding=encoding)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding=encoding)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        lines = [sep.join(rows[0])] + [sep.join(str(value) for value in row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def texts(corpus):
    return [row["text"] for row in corpus]


def fake_hub(monkeypatch, rows=({"body": "hub text"},)):
    """Replace `datasets.load_dataset`; returns the list of (name, split) it was called with."""
    calls = []

    def load_dataset(name, *config, split, **options):
        calls.append((name, *config, split))
        dataset = datasets.Dataset.from_list(list(rows))
        return dataset.to_iterable_dataset() if options.get("streaming") else dataset

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


# --- the suffix table ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".md"])
def test_a_text_file_is_one_document_with_its_line_endings(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_bytes(b"# Title\r\n\r\nA paragraph.\nLast line")
    assert read_texts(path)["text"][:] == ["# Title\r\n\r\nA paragraph.\nLast line"]
    assert texts(read_texts(path, streaming=True)) == ["# Title\r\n\r\nA paragraph.\nLast line"]
    with pytest.raises(ValueError, match=rf"files ending in '\{suffix}' are not read here; use a .parquet, .csv"):
        read_records(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".json", ".jsonl"])
def test_a_table_gives_one_text_per_row_and_its_records(tmp_path, suffix):
    assert set(SUFFIXES) == {".txt", ".md", ".parquet", ".csv", ".tsv", ".json", ".jsonl"}
    path = write_table(tmp_path / f"table{suffix}", ROWS)
    corpus = read_texts(path)
    assert corpus.column_names == ["text"] and corpus["text"][:] == ["first row", "second row"]
    assert texts(read_texts(str(path), streaming=True)) == ["first row", "second row"]
    assert read_records(path).to_list() == ROWS


def test_csv_records_keep_cells_as_written_and_json_records_keep_nulls_and_mixed_types(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nNA,spam\n,ham\nnull,ham\n")
    assert read_records(tmp_path / "d.csv")["text"] == ["NA", "", "null"]
    rows = [{"text": "a", "label": 1}, {"text": None, "label": "two"}, {"label": 3}]
    write_table(tmp_path / "d.jsonl", rows)
    assert read_records(tmp_path / "d.jsonl").to_list() == [
        {"text": "a", "label": 1}, {"text": None, "label": "two"}, {"text": None, "label": 3},
    ]  # fmt: skip


# --- where the data is: folders, globs, lists, the Hub, builtin ---------------------------------


def test_a_folder_is_read_recursively_in_sorted_order_without_hidden_or_unknown_files(tmp_path):
    (tmp_path / "b.md").write_text("from b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("from sub/c")
    write_table(tmp_path / "a.csv", [{"text": "from a 1"}, {"text": "from a 2"}])
    (tmp_path / "notes.rst").write_text("not a known suffix")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.txt").write_text("hidden folder")
    (tmp_path / ".draft.md").write_text("hidden file")
    expected = ["from a 1", "from a 2", "from b", "from sub/c"]
    assert read_texts(tmp_path)["text"][:] == expected
    assert texts(read_texts(str(tmp_path), streaming=True)) == expected


def test_globs_and_lists_of_sources(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.md", "a.md", "sub/c.md", "d.txt"]:
        (tmp_path / name).write_text(f"doc {name}")
    assert read_texts(str(tmp_path / "*.md"))["text"][:] == ["doc a.md", "doc b.md"]
    assert read_texts(str(tmp_path / "**" / "*.md"))["text"][:] == ["doc a.md", "doc b.md", "doc sub/c.md"]
    in_given_order = [tmp_path / "d.txt", str(tmp_path / "sub"), str(tmp_path / "a.md")]
    assert read_texts(in_given_order)["text"][:] == ["doc d.txt", "doc sub/c.md", "doc a.md"]


@pytest.mark.parametrize("source", ["someone/corpus", "hub:someone/corpus"])
def test_hub_names_with_or_without_prefix_reach_load_dataset_as_the_bare_name(monkeypatch, source):
    calls = fake_hub(monkeypatch)
    assert read_texts(source, text_column="body", split="validation")["text"][:] == ["hub text"]
    assert texts(read_texts(source, text_column="body", streaming=True)) == ["hub text"]
    assert read_records(source, split="test").to_list() == [{"body": "hub text"}]
    assert calls == [("someone/corpus", "validation"), ("someone/corpus", "train"), ("someone/corpus", "test")]


def test_a_hub_name_may_name_a_configuration(monkeypatch):
    calls = fake_hub(monkeypatch)
    assert read_texts("hub:someone/corpus:sample-10BT", text_column="body")["text"][:] == ["hub text"]
    assert calls == [("someone/corpus", "sample-10BT", "train")]


def test_a_list_may_mix_local_files_and_hub_datasets(monkeypatch, tmp_path):
    fake_hub(monkeypatch, rows=[{"text": "hub text"}])
    (tmp_path / "a.md").write_text("local text")
    assert read_texts([tmp_path / "a.md", "hub:someone/corpus"])["text"][:] == ["local text", "hub text"]
    streamed = read_texts(["hub:someone/corpus", tmp_path / "a.md"], streaming=True)
    assert texts(streamed) == ["hub text", "local text"]


def test_an_unreachable_hub_name_is_one_clear_error(monkeypatch):
    def offline(name, split, **options):
        raise ConnectionError(f"Couldn't reach {name!r} on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    for read in (read_texts, read_records):
        with pytest.raises(FileNotFoundError, match="'nobody/nothing' is no local file.*check the path or the dataset name"):
            read("hub:nobody/nothing")


def test_builtin_is_the_builtin_corpus_for_texts_and_no_records(monkeypatch):
    small = datasets.Dataset.from_dict({"text": ["a docstring", "another one"]})
    monkeypatch.setattr(sources, "builtin_corpus", lambda: small)
    assert read_texts("builtin")["text"][:] == ["a docstring", "another one"]
    assert texts(read_texts("builtin", streaming=True)) == ["a docstring", "another one"]
    with pytest.raises(ValueError, match="'builtin' is a text corpus, not records"):
        read_records("builtin")


def test_in_memory_datasets_and_plain_iterables_of_strings():
    table = datasets.Dataset.from_dict({"body": ["one", None, "  ", "two"], "id": [0, 1, 2, 3]})
    assert read_texts(table, text_column="body")["text"][:] == ["one", "two"]
    assert texts(read_texts(table, text_column="body", streaming=True)) == ["one", "two"]
    assert read_texts(iter(["one", "", "two"]))["text"][:] == ["one", "two"]
    assert texts(read_texts(text for text in ["one", None, "two"])) == ["one", "two"]


# --- encodings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_files_in_another_encoding_are_read_with_encoding(tmp_path, encoding):
    text = "Caf\u00e9 cr\u00e8me \u2013 na\u00efve" if encoding == "cp1252" else "Caf\u00e9 cr\u00e8me na\u00efve"
    (tmp_path / "a.txt").write_bytes(f"first line\n{text}\n".encode(encoding))
    write_table(tmp_path / "b.csv", [{"text": text, "label": "spam"}], encoding=encoding)
    write_table(tmp_path / "c.jsonl", [{"text": text}], encoding=encoding)
    corpus = read_texts(tmp_path, encoding=encoding)
    assert corpus["text"][:] == [f"first line\n{text}\n", text, text]
    assert read_records(tmp_path / "b.csv", encoding=encoding).to_list() == [{"text": text, "label": "spam"}]
    assert read_records(tmp_path / "c.jsonl", encoding=encoding).to_list() == [{"text": text}]


@pytest.mark.parametrize("name", ["a.txt", "b.csv", "c.jsonl", "d.json"])
def test_undecodable_bytes_fail_naming_file_and_line_or_are_replaced(tmp_path, name):
    path = tmp_path / name
    if path.suffix == ".txt":
        path.write_bytes(b"one\ntwo\ncaf\xe9\n")
    elif path.suffix == ".csv":
        path.write_bytes(b"text\ntwo\ncaf\xe9\n")
    elif path.suffix == ".jsonl":
        path.write_bytes(b'{"text": "one"}\n{"text": "two"}\n{"text": "caf\xe9"}\n')
    else:
        path.write_bytes(b'[{"text": "one"},\n {"text": "two"},\n {"text": "caf\xe9"}]')
    message = rf"The file '.*{name}' is not UTF-8 text \(an undecodable byte on line 3\); pass .*--encoding .*cp1252.*--encoding-errors replace"
    with pytest.raises(ValueError, match=message):
        read_texts(path)
    with pytest.raises(ValueError, match=message):
        list(read_texts(path, streaming=True))
    assert "caf\ufffd" in "".join(read_texts(path, errors="replace")["text"])
    if path.suffix != ".txt":
        with pytest.raises(ValueError, match=message):
            read_records(path)
        assert "caf\ufffd" in read_records(path, errors="replace")["text"]


def test_bad_decoding_options(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="errors must be 'strict' or 'replace'"):
        read_texts(tmp_path / "a.txt", errors="ignore")
    with pytest.raises(ValueError, match="Unknown encoding 'klingon'; pass --encoding"):
        read_records(tmp_path / "a.txt", encoding="klingon")


# --- nulls, blanks and values that are not text --------------------------------------------------


def test_null_empty_and_blank_texts_are_skipped(tmp_path):
    rows = [{"text": "kept 1"}, {"text": None}, {"text": ""}, {"text": " \n\t"}, {"other": "no text"}, {"text": "kept 2"}]
    write_table(tmp_path / "a.jsonl", rows)
    pq.write_table(pa.Table.from_pylist([{"text": None}, {"text": "kept 3"}]), tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("text,label\n,1\nkept 4,0\n")
    (tmp_path / "d.txt").write_text("")
    (tmp_path / "e.md").write_text("   \n")
    expected = ["kept 1", "kept 2", "kept 3", "kept 4"]
    assert read_texts(tmp_path)["text"][:] == expected
    assert texts(read_texts(tmp_path, streaming=True)) == expected


def test_a_text_that_is_not_a_string_fails_naming_file_and_row(tmp_path):
    write_table(tmp_path / "a.jsonl", [{"text": "fine"}, {"text": None}, {"text": 42}])
    message = r"Row 2 of the file '.*a.jsonl' \(column 'text'\) is not text \(it holds the int 42\)"
    with pytest.raises(ValueError, match=message):
        read_texts(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=message):
        list(read_texts(tmp_path / "a.jsonl", streaming=True))
    pq.write_table(pa.Table.from_pylist([{"text": ["a", "list"]}]), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"Row 0 of the file '.*b.parquet' \(column 'text'\) is not text .*list"):
        read_texts(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"Row 1 of the dataset \(column 'n'\) is not text"):
        read_texts(datasets.Dataset.from_dict({"n": [None, 7]}), text_column="n")


# --- one clear sentence for a bad source ---------------------------------------------------------


def test_bad_sources_are_one_sentence_what_where_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.rst").write_text("unknown suffix")
    with pytest.raises(FileNotFoundError, match=r"The folder '.*empty' holds no .txt, .md, .parquet, .csv, .tsv, .json or .jsonl file; add one or pass another --data\.$"):
        read_texts(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"The folder .* holds no .parquet, .csv, .tsv, .json or .jsonl file"):
        read_records(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"The file '.*missing.md' does not exist; check the path\.$"):
        read_texts(str(tmp_path / "missing.md"))
    with pytest.raises(FileNotFoundError, match=r"The pattern '.*\*.jsonl' matches no .* file; check the pattern\.$"):
        read_records(str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match=r"Cannot read '.*notes.rst': files ending in '.rst' are not read here; use a .txt, .md, .parquet, .csv, .tsv, .json or .jsonl file, or a Hub dataset name\.$"):
        read_texts(tmp_path / "empty" / "notes.rst")
    write_table(tmp_path / "a.jsonl", [{"body": "x"}])
    with pytest.raises(ValueError, match=r"There is no column 'text' in the file '.*a.jsonl' \(it has body\); pass text_column="):
        read_texts(tmp_path / "a.jsonl")
    (tmp_path / "blank.md").write_text("\n\n")
    with pytest.raises(ValueError, match=r"The corpus '.*blank.md' is empty: it holds no text .*; check --data and --text-column\.$"):
        read_texts(tmp_path / "blank.md")
    (tmp_path / "object.json").write_text('{"text": "not in a list"}')
    with pytest.raises(ValueError, match=r"'.*object.json' must hold a list of records \(a JSON array of objects\)"):
        read_records(tmp_path / "object.json")


# --- the same reader everywhere ------------------------------------------------------------------


def test_a_changed_file_is_read_again_not_taken_from_the_cache(tmp_path):
    (tmp_path / "a.md").write_text("old text")
    assert read_texts(tmp_path / "a.md")["text"][:] == ["old text"]
    (tmp_path / "a.md").write_text("new text, longer")
    assert read_texts(tmp_path / "a.md")["text"][:] == ["new text, longer"]


def test_the_tokenizer_and_pretraining_read_the_same_texts_from_a_folder_of_markdown(tmp_path):
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "docs" / "index.md").write_text("# Index\n\nSee the guide.\n")
    (tmp_path / "docs" / "guide" / "intro.md").write_text("# Intro\r\n\r\nHello, world.\r\n")
    (tmp_path / "docs" / "empty.md").write_text("")
    pretraining = load_text_corpus(tmp_path / "docs")["text"][:]  # what `pretrain --data docs` reads
    assert pretraining == ["# Intro\r\n\r\nHello, world.\r\n", "# Index\n\nSee the guide.\n"]
    assert list(iter_texts(tmp_path / "docs")) == pretraining  # what `train-tokenizer --data docs` reads
    assert list(iter_texts(str(tmp_path / "docs" / "**" / "*.md"))) == pretraining


def test_each_stage_imports_only_the_stages_before_it():
    """sources (reading) <- tokenizer (stage 1) <- data (stage 2): no import circle."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "scratch_gpt"

    def imported(module: str) -> set[str]:
        tree = ast.parse((package / f"{module}.py").read_text())
        names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        return {name.removeprefix("scratch_gpt.") for name in names if name.startswith("scratch_gpt.")}

    assert imported("sources") <= {"errors", "io_utils"}  # leaves: the error policy, the output marker
    assert imported("tokenizer") <= {"sources", "io_utils", "errors", "args"}  # args: the option declarations, a leaf
    assert "data" not in imported("tokenizer") and "tokenizer" in imported("data")


def test_a_csv_row_with_a_cell_too_many_is_an_error_not_a_shifted_row(tmp_path):
    """pandas would take the first column as an index and shift every cell of such a file by one."""
    path = tmp_path / "labels.csv"
    path.write_text("text,label\nhello, world,0\nbye now,1\n")
    with pytest.raises(ValueError, match="more cells than the header; quote"):
        read_records(path)


def test_a_folder_scratch_gpt_wrote_is_never_data(tmp_path, monkeypatch, capsys):
    """`pretrain --data corpus --output-dir corpus/run`, run twice: the second run must not read the
    first one's metrics.jsonl (or anything else in the run folder) as training text."""
    from scratch_gpt.cli import main
    from scratch_gpt.io_utils import mark_output

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    (corpus / "b.jsonl").write_text(json.dumps({"text": "hello world " * 50}) + "\n")
    run = corpus / "run"
    mark_output(run)
    (run / "metrics.jsonl").write_text(json.dumps({"text": "a line of our own metrics"}) + "\n")
    (run / "model").mkdir()
    (run / "model" / "notes.txt").write_text("ours too")
    assert sources.resolve(str(corpus)) == [corpus / "a.txt", corpus / "b.jsonl"]
    monkeypatch.chdir(tmp_path)
    assert sources.resolve("corpus/**/*.jsonl") == [Path("corpus/b.jsonl")]
    assert sources.resolve(str(run / "metrics.jsonl")) == [run / "metrics.jsonl"]  # a file named on purpose is read
    with pytest.raises(FileNotFoundError, match="outside the folders scratch-gpt wrote"):
        sources.resolve(str(run))

    flags = ["pretrain", "--data", "corpus", "--output-dir", "corpus/run2", "--max-steps", "1", "--batch-size", "2",
             "--vocab-size", "300", "--preset", "tiny", "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2",
             "--block-size", "16", "--report-to", "none", "--no-progress"]  # fmt: skip
    assert main(flags) == 0
    first = capsys.readouterr().out
    assert main(flags) == 0  # corpus/run2 now holds the first run's metrics.jsonl, tokenizer.json, ...
    second = capsys.readouterr().out
    counts = [line for line in first.splitlines() if "training" in line and "validation" in line]
    assert counts and counts == [line for line in second.splitlines() if "training" in line and "validation" in line]
