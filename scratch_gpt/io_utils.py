"""Small file-system helpers shared by every command that writes an artifact."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary sibling folder; on success it replaces `path` in one rename.

    A crash or kill inside the block leaves any previous `path` untouched (the half-written
    temporary folder is removed on an exception; after a SIGKILL a `.tmp-*` sibling may remain,
    never a half-written `path`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    umask = os.umask(0)  # mkdtemp makes the folder owner-only; give it the usual permissions
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        # Two renames: the old folder is moved aside, the new one moved in, then the old one removed.
        old = path.with_name(f".old-{path.name}-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def check_writable(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail early, with one sentence, if `path` cannot be created or written."""
    path = Path(path)
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"The {what} {str(path)!r} is not writable; choose another path with write permission.")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"The {what} {str(path)!r} is a file; pass a folder path instead.")
    return path
