"""The one reader behind every `--data`: what a data source names, and how its files are read.

Every command takes its data the same way, so `--data X` means the same thing everywhere:

    >>> read_texts("notes/")             # stages 1-2: a Dataset with one column, "text"
    >>> read_records("spam.csv")          # fine-tuning: a Dataset of records, columns as in the file

1. *Where is the data?* `resolve` turns a source into local files and Hub datasets:
   - "builtin": the docstrings of the Python standard library (`builtin_corpus`), no download;
   - a file; a folder (every supported file inside, recursively, in sorted order, skipping hidden
     files and folders); a glob pattern ("notes/**/*.md"); a list of any of these, kept in order;
   - "hub:NAME", or a bare NAME that is no local path, for a dataset on the Hugging Face Hub
     (loaded with `datasets.load_dataset`: this needs network, or the dataset in the local cache);
     "hub:NAME:CONFIG" picks one of its configurations ("hub:HuggingFaceFW/fineweb-edu:sample-10BT").
2. *How is a file read?* By its suffix (SUFFIXES): a .txt or .md file is ONE document, the whole
   file, line endings kept; .jsonl (one object per line), .json (an array of objects), .csv, .tsv
   and .parquet files hold one row per line or record.
3. *One policy for every file and command:*
   - text files are decoded with `encoding` (default UTF-8; pass e.g. "cp1252" for Windows files);
     an undecodable byte is an error naming the file and the line, unless `errors="replace"`
     turns it into U+FFFD;
   - texts: a row whose text is null, empty or only whitespace is skipped; a text that is not a
     string (a number, a list, an object) is an error naming the file and the row;
   - records are returned as they are: a missing or null value is None, the commands check their
     own columns. CSV cells are kept as written ("NA" stays the string "NA").

Texts from local files are written by `datasets` into its Arrow cache (read again only when a file
changes), so a corpus larger than memory is memory-mapped; `streaming=True` reads them lazily, writing nothing.
"""

import codecs
import contextlib
import glob
import importlib
import importlib.util
import inspect
import io
import itertools
import json
import os
import pkgutil
import sys
import warnings
from pathlib import Path

import datasets

from scratch_gpt.errors import BadInput, MissingFile
from scratch_gpt.io_utils import MARKER

BUILTIN = "builtin"
# Suffix -> how the file is read, in the order messages list them (".parquet, .csv, .tsv, .json or .jsonl").
SUFFIXES = {
    ".txt": "text",
    ".md": "text",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
}
RECORD_SUFFIXES = {suffix: kind for suffix, kind in SUFFIXES.items() if kind != "text"}
TEXT_FEATURES = datasets.Features({"text": datasets.Value("string")})
ROWS_PER_BATCH = 1000  # rows read from a CSV or Parquet file at a time

# Standard-library modules that do something on import (open a browser, print, start a GUI or a
# REPL, touch the terminal, write cache files), then tests and platform tools: not documentation.
SKIPPED_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "readline", "rlcompleter"}
SKIPPED_MODULES |= {"lib2to3", "ensurepip", "distutils", "test", "tests", "encodings"}


# --- 1. Where the data is -------------------------------------------------------------------------


def resolve(source, suffixes=SUFFIXES) -> list:
    """The data `source` names, in order: local files (as Paths), "hub:NAME" and "builtin".

    A string that exists on disk, contains a glob character or ends with a known suffix is local
    (so a typo in a file name fails here, not on the Hub); anything else is a Hub dataset name.
    Only files with one of `suffixes` are taken from folders and globs, and none from a folder that
    scratch-gpt wrote (it has the `.scratch_gpt` marker): a run's output is never data, even inside `--data`.
    """
    if isinstance(source, (list, tuple)):
        return [item for one in source for item in resolve(one, suffixes)]
    text = os.fspath(source)
    if text == BUILTIN or text.startswith("hub:"):
        return [text]
    path = Path(text)
    if path.is_dir():
        files = [file for file in sorted(path.rglob("*")) if _is_visible(file, path) and _is_known(file, suffixes)]
        if not files:
            raise MissingFile(f"The folder {text!r} holds no {_names(suffixes)} file; add one or pass another --data.")
        files = [file for file in files if not _in_our_output(file, path)]
        if not files:
            raise MissingFile(
                f"The folder {text!r} holds no {_names(suffixes)} file outside the folders scratch-gpt wrote "
                "(outputs are never data); add one or pass another --data."
            )
        return files
    if path.is_file():
        if not _is_known(path, suffixes):
            raise BadInput(
                f"Cannot read {text!r}: files ending in {path.suffix or 'no suffix'!r} are not read here; "
                f"use a {_names(suffixes)} file, or a Hub dataset name."
            )
        return [path]
    if glob.has_magic(text):
        top = Path(os.path.dirname(text[: min(text.find(c) for c in "*?[" if c in text)]) or ".")
        files = sorted(file for file in map(Path, glob.glob(text, recursive=True)) if _is_known(file, suffixes))
        files = [file for file in files if not _in_our_output(file, top)]
        if not files:
            raise MissingFile(f"The pattern {text!r} matches no {_names(suffixes)} file; check the pattern.")
        return files
    if _is_known(path, SUFFIXES) or isinstance(source, os.PathLike):
        raise MissingFile(f"The file {text!r} does not exist; check the path.")
    return [f"hub:{text}"]


def _in_our_output(file: Path, top: Path) -> bool:
    """Whether `file` lies in a folder scratch-gpt wrote, at or below `top` (the folder or glob given)."""
    top = top.resolve()
    below_top = [folder for folder in file.resolve().parents if folder == top or top in folder.parents]
    return any((folder / MARKER).is_file() for folder in below_top)


def _is_known(file: Path, suffixes) -> bool:
    return file.suffix.lower() in suffixes


def _is_visible(file: Path, folder: Path) -> bool:
    return file.is_file() and not any(part.startswith(".") for part in file.relative_to(folder).parts)


def _names(suffixes) -> str:
    """".txt, .md or .json": the suffixes for a message."""
    names = list(suffixes)
    return ", ".join(names[:-1]) + " or " + names[-1]


def _load_hub(source: str, split: str, **options):
    """The `split` of a Hub dataset ("hub:NAME" or "hub:NAME:CONFIG"), or one clear error."""
    name, _, config = source.removeprefix("hub:").partition(":")
    try:
        return datasets.load_dataset(name, *([config] if config else []), split=split, **options)
    except Exception as error:  # not found, offline, no such split: all mean "cannot load this name"
        raise MissingFile(
            f"{name!r} is no local file, folder or glob, and could not be loaded as a Hub dataset (split {split!r}): "
            f"{error}; check the path or the dataset name (a Hub dataset needs network or the local cache)."
        ) from error


# --- 2. Texts, for the tokenizer (stage 1) and pre-training (stage 2) -----------------------------


def read_texts(source, *, text_column="text", split="train", encoding="utf-8", errors="strict", streaming=False):
    """A Dataset (an IterableDataset when `streaming`) with one column, "text", one document per row.

    `source` is what `resolve` takes (a file, folder, glob, "hub:NAME" or NAME, "builtin", or a
    list of them), a `datasets` Dataset or IterableDataset (its `text_column`), or any other
    iterable of strings (the texts themselves; a list or tuple is a list of sources). Tables and
    Hub datasets give one document per row from `text_column`; a Hub dataset is read at `split`.
    `encoding` and `errors` ("strict" or "replace") decode every text-based file.
    """
    _check_decoding(encoding, errors)
    if is_dataset(source):
        parts = [_texts_of_dataset(_stream(source) if streaming else source, text_column, "the dataset")]
    elif not isinstance(source, (str, os.PathLike, list, tuple)):  # the texts themselves
        texts = datasets.Dataset.from_dict({"text": list(checked_texts(source))}, features=TEXT_FEATURES)
        parts = [_stream(texts) if streaming else texts]
    else:
        parts = []
        for is_file, group in itertools.groupby(resolve(source), key=lambda item: isinstance(item, Path)):
            if is_file:
                parts.append(_texts_of_files(list(group), text_column, encoding, errors, streaming))
            else:
                parts.extend(_texts_of_name(name, text_column, split, streaming) for name in group)
    if len(parts) == 1:
        corpus = parts[0]
    else:
        # A Hub dataset may store its text as large_string; the parts must agree to be joined.
        parts = [part if part.features == TEXT_FEATURES else part.cast(TEXT_FEATURES) for part in parts]
        corpus = datasets.concatenate_datasets(parts)
    if not streaming and len(corpus) == 0:
        where = repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "you passed"
        raise BadInput(
            f"The corpus {where} is empty: it holds no text (empty files and blank rows are skipped); "
            "check --data and --text-column."
        )
    return corpus


def _texts_of_files(files, text_column, encoding, errors, streaming):
    """Local files as a "text" Dataset, built by `datasets` from `_rows_of_files` (or streamed)."""
    stamps = [(file.stat().st_size, file.stat().st_mtime_ns) for file in files]
    names = [str(file) for file in files]
    options = dict(files=names, stamps=stamps, text_column=text_column, encoding=encoding, errors=errors)
    if streaming:
        return datasets.IterableDataset.from_generator(_rows_of_files, features=TEXT_FEATURES, gen_kwargs=options)
    try:
        return datasets.Dataset.from_generator(_rows_of_files, features=TEXT_FEATURES, gen_kwargs=options)
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, (ValueError, OSError)):  # our own message, naming file and row
            raise error.__cause__ from None
        raise
    except ValueError as error:  # no row was kept: `datasets` builds no Dataset of 0 rows from a generator
        if "corresponds to no data" not in str(error):
            raise
        return datasets.Dataset.from_dict({"text": []}, features=TEXT_FEATURES)


def _rows_of_files(files, stamps, text_column, encoding, errors):
    """The {"text": ...} rows of local files, in order, after the null/empty policy.

    `stamps` (each file's size and modification time) is not read here: it is part of the cache
    key `datasets` derives from these arguments, so a file that changed is read again.
    """
    for file in map(Path, files):
        where = f"the file {str(file)!r} (column {text_column!r})"
        for row, text in enumerate(_texts_of_file(file, text_column, encoding, errors)):
            if _is_text(text, where, row):
                yield {"text": text}


def _texts_of_file(path: Path, text_column, encoding, errors):
    """The raw texts of one file: the whole file, or the `text_column` of every row."""
    kind = SUFFIXES[path.suffix.lower()]
    where = f"the file {str(path)!r}"
    if kind == "text":
        with _reading(path, encoding), open(path, encoding=encoding, errors=errors, newline="") as file:
            yield file.read()
    elif kind == "json":
        for row, record in enumerate(_json_records(path, encoding, errors)):
            if row == 0:  # the first record names the columns
                _check_column(list(record), text_column, where)
            yield record.get(text_column)
    elif kind == "csv":
        for frame in _csv_frames(path, encoding, errors, dtype=str, chunksize=ROWS_PER_BATCH):
            _check_column(list(frame.columns), text_column, where)
            yield from frame[text_column]
    else:
        import pyarrow.parquet

        with _reading(path):
            table = pyarrow.parquet.ParquetFile(path)
            _check_column(table.schema_arrow.names, text_column, where)
            for batch in table.iter_batches(batch_size=ROWS_PER_BATCH, columns=[text_column]):
                yield from batch.column(0).to_pylist()


def _texts_of_name(name, text_column, split, streaming):
    """The built-in corpus, or a Hub dataset's `text_column`."""
    if name == BUILTIN:
        corpus = builtin_corpus()
        return _stream(corpus) if streaming else corpus
    return _texts_of_dataset(_load_hub(name, split, streaming=streaming), text_column, f"the Hub dataset {name!r}")


def _texts_of_dataset(dataset, text_column, where):
    """Keep only `text_column`, renamed to "text", and only the rows the text policy keeps."""
    if dataset.column_names is not None:
        _check_column(dataset.column_names, text_column, where)
    dataset = dataset.select_columns([text_column])
    if text_column != "text":
        dataset = dataset.rename_column(text_column, "text")
    where = f"{where} (column {text_column!r})"
    return dataset.filter(_keep_rows, batched=True, with_indices=True, fn_kwargs={"where": where})


def _stream(dataset):
    """A Dataset as an IterableDataset (an empty one stays as it is: `datasets` cannot stream 0 rows)."""
    return dataset.to_iterable_dataset() if isinstance(dataset, datasets.Dataset) and len(dataset) else dataset


def checked_texts(texts, where="the given texts"):
    """The texts of an iterable of strings that the text policy keeps, lazily (see `_is_text`)."""
    return (text for row, text in enumerate(texts) if _is_text(text, where, row))


def _keep_rows(batch, indices, where):
    return [_is_text(text, where, row) for text, row in zip(batch["text"], indices)]


def _is_text(value, where, row) -> bool:
    """The one policy for a text: a string with a non-blank character is kept; None, "" and
    whitespace are skipped; anything else (a number, a list, an object) is an error."""
    if value is None or isinstance(value, str):
        return bool(value) and not value.isspace()
    raise BadInput(
        f"Row {row} of {where} is not text (it holds the {type(value).__name__} {value!r:.40}); "
        "fix the data, or name the column that holds the text with --text-column."
    )


def _check_column(columns, text_column, where):
    if text_column not in columns:
        raise BadInput(
            f"There is no column {text_column!r} in {where} (it has {', '.join(map(str, columns)) or 'none'}); "
            "pass text_column= (CLI: --text-column) naming the column that holds the text."
        )


def is_dataset(data) -> bool:
    return isinstance(data, (datasets.Dataset, datasets.IterableDataset))


# --- 3. Records, for fine-tuning ------------------------------------------------------------------


def read_records(source, *, split="train", encoding="utf-8", errors="strict") -> datasets.Dataset:
    """The records of .parquet, .csv, .tsv, .json (an array of objects) or .jsonl files, or of a
    Hub dataset (`NAME` or `hub:NAME`, at `split`), as a Dataset with the columns of the data.

    Rows are returned as they are: a record that lacks a column, or holds null, has None there;
    a column with values of several types (5 and "five") keeps each value as it was.
    """
    _check_decoding(encoding, errors)
    parts = [_records_of(item, split, encoding, errors) for item in resolve(source, RECORD_SUFFIXES)]
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as error:
        raise BadInput(
            f"The files of {source!r} do not hold the same columns ({error}); give every file the same columns."
        ) from error


def _records_of(item, split, encoding, errors) -> datasets.Dataset:
    if item == BUILTIN:
        raise BadInput("'builtin' is a text corpus, not records; pass a file of records or a Hub dataset name.")
    if isinstance(item, str):
        return _load_hub(item, split)
    kind = SUFFIXES[item.suffix.lower()]
    if kind == "csv":
        frame = next(_csv_frames(item, encoding, errors, chunksize=None))
        return datasets.Dataset.from_pandas(frame, preserve_index=False)
    if kind == "json":
        records = list(_json_records(item, encoding, errors))
        columns = list(dict.fromkeys(column for record in records for column in record))  # every column, in order
        rows = [{column: record.get(column) for column in columns} for record in records]
        return datasets.Dataset.from_list(rows, on_mixed_types="use_json")
    import pyarrow.parquet

    with _reading(item):
        return datasets.Dataset(pyarrow.parquet.read_table(item))


# --- 4. File formats, encodings and the errors they raise -----------------------------------------


def _json_records(path: Path, encoding, errors):
    """The objects of a .jsonl file (one per line, blank lines skipped) or a .json file (an array)."""
    with _reading(path, encoding), open(path, encoding=encoding, errors=errors) as file:
        if path.suffix.lower() == ".jsonl":
            lines = ((number, line.strip()) for number, line in enumerate(file, start=1))
            records = (_parse_json(line, path, number) for number, line in lines if line)
        else:
            records = _parse_json(file.read(), path, 1)
            if not isinstance(records, list):
                raise BadInput(
                    f"{str(path)!r} must hold a list of records (a JSON array of objects); "
                    "wrap the objects in [...], or write one object per line in a .jsonl file."
                )
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise BadInput(
                    f"Record {index} of {str(path)!r} is not an object (it is the {type(record).__name__} "
                    f"{record!r:.40}); fix the file."
                )
            yield record


def _parse_json(text: str, path: Path, first_line: int):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = first_line + error.lineno - 1
        message = f"Cannot parse {str(path)!r}: line {line} is not valid JSON ({error.msg}); fix the file."
        raise BadInput(message) from None


def _csv_frames(path: Path, encoding, errors, *, chunksize, **options):
    """A .csv or .tsv file as pandas DataFrames (one, or one per `chunksize` rows); cells are kept
    as written, without guessing missing values ("NA", "null" and "" stay strings)."""
    import pandas as pd  # datasets depends on pandas; imported here to keep `--help` fast

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    # index_col=False: a row with one cell too many is an error, not a first column silently taken as the index
    options = dict(sep=sep, keep_default_na=False, index_col=False, encoding=encoding, encoding_errors=errors) | options
    parse_errors = (pd.errors.ParserError, pd.errors.EmptyDataError)
    with _reading(path, encoding, parse_errors=parse_errors), warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)  # pandas only warns of a row with a cell too many
        try:
            if chunksize is None:
                yield pd.read_csv(path, **options)
            else:
                with pd.read_csv(path, chunksize=chunksize, **options) as frames:
                    yield from frames
        except pd.errors.ParserWarning:
            raise BadInput(
                f"Cannot parse {str(path)!r}: a row has more cells than the header; quote the cells that contain "
                f"the separator {sep!r} (as csv writers do) or fix the file."
            ) from None


@contextlib.contextmanager
def _reading(path: Path, encoding="utf-8", parse_errors=()):
    """Turn a decoding or parsing failure while reading `path` into one ValueError: what, where, what to do."""
    import pyarrow

    try:
        yield
    except UnicodeDecodeError:
        raise BadInput(
            f"The file {str(path)!r} is not {encoding.upper()} text (an undecodable byte on line "
            f"{_first_undecodable_line(path, encoding)}); pass its encoding with --encoding (e.g. cp1252 or latin-1), "
            "or --encoding-errors replace to replace undecodable bytes with U+FFFD."
        ) from None
    except (pyarrow.ArrowInvalid, *parse_errors) as error:
        raise BadInput(f"Cannot parse {str(path)!r}: {error}; fix the file or leave it out.") from None


def _first_undecodable_line(path: Path, encoding) -> int:
    """The number of the first line of `path` that does not decode with `encoding`."""
    decoder = codecs.getincrementaldecoder(encoding)()
    number = 0
    with open(path, "rb") as file:
        try:
            for number, line in enumerate(file, start=1):
                decoder.decode(line)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return number
    return number


def _check_decoding(encoding, errors):
    if errors not in ("strict", "replace"):
        raise BadInput(f"errors must be 'strict' or 'replace' (CLI: --encoding-errors), got {errors!r}.")
    try:
        codecs.lookup(encoding)
    except LookupError:
        message = f"Unknown encoding {encoding!r}; pass --encoding a Python codec name, e.g. utf-8 or cp1252."
        raise BadInput(message) from None


# --- 5. The built-in corpus: Python's own documentation, gathered at run time ---------------------


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
    return datasets.Dataset.from_dict({"text": documents}, features=TEXT_FEATURES)


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
