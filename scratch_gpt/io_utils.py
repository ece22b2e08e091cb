"""Small file-system helpers shared by every command that writes an artifact.

Two rules keep the user's files safe:

- `check_output(output, inputs=[...], overwrite=...)`, called by every command before any work,
  refuses an output folder that is one of the command's inputs or contains one, and an existing
  folder that this package did not write (unless `--overwrite`).
- `atomic_directory(folder)` writes a new folder beside the old one and swaps it in by renaming,
  so a crash or a kill leaves the previous folder or none, never a half-written one. Every folder
  it writes carries the marker file `.scratch_gpt`, which is how `check_output` knows it is ours.
"""

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from scratch_gpt.errors import BadInput, NotAFolder, NotWritable, OutputExists

MARKER = ".scratch_gpt"  # in every folder this package writes: a later run may replace it
KILL_ENV = "SCRATCH_GPT_KILL_AT"  # tests: SIGKILL this process at the named point (see `kill_point`)


def kill_point(name: str) -> None:
    """If `SCRATCH_GPT_KILL_AT` names this point, die here as a power cut would (tests of kill safety)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def mark_output(folder: str | os.PathLike, files: list[str] | None = None, run: bool = False) -> None:
    """Create `folder` (if needed) and mark it as an output of this package; `files`, when given,
    are all the files it wrote there (a later replacement must not delete any other); `run`: it is a
    training run's folder, added to by later runs and never replaced by another command."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"written_by": "scratch_gpt", "files": None if files is None else sorted(files), "run": run or None}
    record = {key: value for key, value in record.items() if value is not None}  # only what applies
    (folder / MARKER).write_text(json.dumps(record) + "\n")


def is_our_output(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


def is_run_folder(folder: str | os.PathLike) -> bool:
    """A training run's folder: marked as one when the run started (`mark_output(..., run=True)`)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("run", False) is True
    except (OSError, ValueError, AttributeError):
        return False


def files_written(folder: str | os.PathLike) -> list[str] | None:
    """The files a folder `atomic_directory` wrote lists in its marker; None for other folders."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None


def files_added_since(folder: str | os.PathLike) -> list[str]:
    """Files of the user's in a folder `atomic_directory` wrote, which replacing the folder would delete."""
    written = files_written(folder)
    if written is None:  # a run folder, marked when its run started: it is added to, never replaced
        return []
    return sorted(set(_files_in(Path(folder))) - set(written) - {MARKER})


def _files_in(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]


def recover(path: str | os.PathLike) -> None:
    """Undo what a kill inside `atomic_directory` left beside `path`: a previous folder moved aside
    is moved back if nothing replaced it; our half-written temporary folders are removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    moved_aside = sorted(path.parent.glob(f".old-{glob.escape(path.name)}-*"))
    if moved_aside and not path.exists() and is_our_output(moved_aside[-1]):
        os.replace(moved_aside.pop(), path)
    for leftover in [*moved_aside, *path.parent.glob(f".tmp-{glob.escape(path.name)}-*")]:
        if leftover.is_dir() and is_our_output(leftover):  # only folders we marked: never a user's
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary sibling folder (already marked); on success it replaces `path` by renaming.

    A crash or kill inside the block leaves a previous `path` untouched (the temporary folder is removed
    on an exception, or by the next call after a SIGKILL). A kill between the two renames leaves the
    previous folder beside `path`; the next call (or `check_output`) moves it back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    umask = os.umask(0)  # mkdtemp makes the folder owner-only; give it the usual permissions
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    mark_output(tmp)
    try:
        yield tmp
    except BaseException as error:
        full = disk_full(error)
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if full else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if full:  # one OSError that names the folder, whoever reported it (safetensors has its own)
            raise OSError(errno.ENOSPC, f"No space left on device after writing {megabytes(written)} of it", str(path)) from None
        raise
    mark_output(tmp, files=_files_in(tmp))  # what it holds now is ours; anything added later is not
    kill_point("written")  # the new folder is complete, the old one still in place
    if path.exists():
        # Two renames: the old folder is moved aside, the new one moved in, then the old one removed.
        old = path.with_name(f".old-{path.name}-{os.getpid()}")
        os.replace(path, old)
        kill_point("swapped")  # the old folder aside, the new one not yet in place
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


_HELD_LOCKS: dict[Path, int] = {}  # output path -> the open lock file this process holds


def lock_output(path: str | os.PathLike) -> None:
    """Refuse a second process writing the same output: this process takes an exclusive `flock` on a
    lock file named after the folder's absolute path (in the system's temporary folder, not the user's
    tree) and holds it until it exits. The kernel drops the lock however the process ends, so a killed
    run never leaves the folder locked. Only the main process (RANK 0) writes, so only it locks."""
    path = Path(path).resolve()
    if path in _HELD_LOCKS or int(os.environ.get("RANK", "0")) != 0:
        return
    locks = Path(tempfile.gettempdir()) / "scratch_gpt-locks"
    lock = locks / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".lock")
    try:
        locks.mkdir(exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # no lock folder of ours can be made here (another user's): a safety net, not a gate
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutputExists(
            f"The output folder {str(path)!r} is being written by another run (process {holder}); "
            "wait for it to end or choose another output folder."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_LOCKS[path] = fd


def release_output_locks() -> None:
    """Let go of every output this process locked (a command that ran in-process has ended)."""
    for fd in _HELD_LOCKS.values():
        os.close(fd)  # closing the file drops its flock
    _HELD_LOCKS.clear()


def check_writable(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail early, with one sentence, if `path` cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotAFolder(f"The {what} {str(path)!r} is a file; pass a folder path instead.")
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotAFolder(f"The {what} {str(path)!r} lies inside the file {str(parent)!r}; choose a path in a folder.")
    if not os.access(parent, os.W_OK):
        raise NotWritable(f"The {what} {str(path)!r} is not writable; choose another path with write permission.")
    return path


def _local_paths(source) -> list[Path]:
    """The existing local files or folders an input names (a glob: its matches); none for a Hub id."""
    if source is None:
        return []
    if isinstance(source, (list, tuple)):
        return [path for item in source for path in _local_paths(item)]
    text = os.fspath(source)
    if glob.has_magic(text):
        return [Path(match) for match in glob.glob(text, recursive=True)]
    return [Path(text)] if Path(text).exists() else []


def check_not_an_input(path: Path, inputs, what: str, flag: str) -> None:
    """`path` is none of `inputs` (files, folders, globs; Hub ids are skipped) and holds none of them."""
    target = path.resolve()
    for source in _local_paths(inputs):
        source = source.resolve()
        if source == target or target in source.parents:
            relation = "is" if source == target else "contains"
            raise BadInput(
                f"The {what} {str(path)!r} {relation} the input {str(source)!r}, which writing it would delete; "
                f"choose another {flag} (a new folder, e.g. inside the input, is fine)."
            )


def check_output(
    output, *, inputs=(), overwrite: bool = False, what="output folder", flag="--output-dir", replaces: bool = True
) -> Path:
    """The one check of an output folder, before any work: one clear error instead of lost files.

    - `output` must not be or contain one of `inputs` (local files, folders, globs): replacing it would delete them.
    - An existing, non-empty `output` must be an earlier output of this package (it holds the
      `.scratch_gpt` marker) unless `overwrite` (the command's `--overwrite`).
    - A command that replaces its output (`replaces`) must not replace a training run's folder (its
      checkpoints, logs and model are added to over runs), and a training run (not `replaces`) must not
      write into a saved folder (marked with its file list), unless `overwrite`.
    - It must be writable, and no other process may be writing it (see `lock_output`).
    """
    path = Path(output)
    lock_output(path)
    recover(path)
    check_not_an_input(path, inputs, what, flag)
    check_writable(path, what)
    if path.is_dir() and any(path.iterdir()) and not is_our_output(path) and not overwrite:
        raise OutputExists(
            f"The {what} {str(path)!r} already exists and was not written by scratch-gpt; choose another {flag}, "
            "or pass --overwrite to replace it."
        )
    if not replaces and not overwrite and is_our_output(path) and files_written(path) is not None:
        raise OutputExists(
            f"The {what} {str(path)!r} holds a saved model or tokenizer, not a training run, and a run would write "
            f"into it file by file; choose another {flag} (a new folder), or pass --overwrite to use it anyway."
        )
    if replaces and not overwrite and is_run_folder(path):
        raise OutputExists(
            f"The {what} {str(path)!r} is a training run's folder (its checkpoints, logs and model, and any file of "
            f"yours), which replacing it would delete; choose another {flag}, or pass --overwrite to replace it anyway."
        )
    for folder in [path, *(p.parent for p in path.glob(f"*/{MARKER}"))]:  # it, and folders of ours inside it
        added = [] if overwrite else files_added_since(folder)
        if added:
            raise OutputExists(
                f"The folder {str(folder)!r} was written by scratch-gpt but now also holds files it did not write "
                f"({', '.join(added[:3])}{', ...' if len(added) > 3 else ''}), which replacing it would delete; "
                "move them out, or pass --overwrite to replace it anyway."
            )
    return path


def check_model_folder(folder: str | os.PathLike) -> None:
    """Before a library reads a model or tokenizer folder: one sentence that names a damaged file.

    Every JSON file must parse (config, tokenizer, generation config, adapter config), every
    safetensors file must have a whole header (a truncated or overwritten file does not), and the
    weights must be safetensors: a pickled `pytorch_model.bin` alone is refused, with how to convert it.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:  # not JSON, or not UTF-8
            raise BadInput(
                f"{str(path)!r} is damaged: it is not valid JSON ({error}); restore it from a copy or save the model again."
            ) from None
    weights = sorted(folder.glob("*.safetensors"))
    for path in weights:
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise BadInput(
                f"{str(path)!r} is damaged: it is not a whole safetensors file ({error}); "
                "restore it from a copy or save the model again."
            ) from None
    pickled = sorted(p.name for p in folder.glob("pytorch_model*.bin"))
    if pickled and not weights:
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        classifier = any("SequenceClassification" in a for a in config.get("architectures") or [])
        head = "ForSequenceClassification" if classifier else "ForCausalLM"
        raise BadInput(
            f"{str(folder)!r} holds its weights only as pickled {pickled[0]}, and scratch-gpt reads safetensors only "
            "(a pickle can run code); convert it once, if you trust the file: python -c \"import scratch_gpt as s; "
            f"s.ScratchGPT{head}.from_pretrained('{folder}', use_safetensors=False).save_pretrained('{folder}')\"."
        )


def disk_full(error: BaseException) -> bool:
    """A write that failed because the disk is full (safetensors reports it in its own exception)."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse, before any work, to write about `needed` bytes into `folder` on a disk without them."""
    place = Path(folder).resolve()
    while not place.exists():
        place = place.parent
    free = shutil.disk_usage(place).free
    if free < needed:
        raise BadInput(
            f"The {what} {str(folder)!r} is on a disk with {megabytes(free)} free, but this run will write about "
            f"{megabytes(needed)} there; free some space or choose a folder on another disk."
        )


RESULTS_MARK = "written_by"  # the key a JSON results file of ours carries: a later run may replace it


def check_output_file(output, *, inputs=(), overwrite: bool = False, flag: str = "--output") -> Path:
    """The check of an output file, before any work: not an input nor inside one, not inside a folder
    scratch-gpt wrote (a model or run folder keeps only its own files), and an existing file only
    when it is an earlier results file of ours or with `overwrite`. Write it with `write_atomically`."""
    path = Path(output)
    target = path.resolve()
    for source in _local_paths(inputs):
        source = source.resolve()
        if source == target or source in target.parents:
            raise BadInput(
                f"{flag} {str(path)!r} {'is' if source == target else 'lies inside'} the input {str(source)!r}, which "
                f"writing it would change; choose a path outside the inputs."
            )
    ours = next((folder for folder in target.parents if (folder / MARKER).is_file()), None)
    if ours is not None:
        raise BadInput(
            f"{flag} {str(path)!r} lies inside {str(ours)!r}, a folder scratch-gpt wrote, whose files it replaces as a "
            "whole; choose a path outside it."
        )
    if path.is_dir():
        raise NotAFolder(f"{flag} {str(path)!r} is a folder; pass a file path.")
    if path.exists() and not overwrite and not _is_our_results(path):
        raise OutputExists(f"{flag} {str(path)!r} already exists and was not written by scratch-gpt; choose another path, or pass --overwrite.")
    check_writable(path.parent, "folder of " + flag)
    return path


def _is_our_results(path: Path) -> bool:
    try:
        return RESULTS_MARK in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it: a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
