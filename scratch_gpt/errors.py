"""The project's one error policy: what a command does with an exception.

- `BadInput`: something the user gave (a flag, a file, a folder, a missing extra) cannot be used.
  Only our own checks raise it, with a message of one sentence: what is wrong, where, what to do.
  The command prints that sentence and exits with status 2, before any work is lost.
- `RunFailed`: a run that stopped for a reason we can name (the loss diverged, the Hub refused the
  upload). The command prints the reason and exits with status 1.
- A full disk (ENOSPC) is named in one sentence, exit status 1; a command also checks the free space
  it needs before it starts (`io_utils.check_free_space`).
- Anything else is a bug, ours or a library's: its traceback is kept and Python exits with status 1.
  A library's `ValueError` is not the user's fault, so it is never reported as bad input.

The kinds of `BadInput` that concern files are also the matching `OSError`s (`MissingFile` is a
`FileNotFoundError`), so code that catches those keeps working. This module imports nothing heavy.
"""

import errno
import sys


class BadInput(ValueError):
    """The user's input cannot be used; the message says what, where and what to do."""


class MissingFile(BadInput, FileNotFoundError):
    """A file or folder the user named is not there (or not what the command reads)."""


class NotAFolder(BadInput, NotADirectoryError):
    """A path that must be a folder is a file, or lies inside one."""


class OutputExists(BadInput, FileExistsError):
    """The output path holds something the command may not replace."""


class NotWritable(BadInput, PermissionError):
    """The output path cannot be written."""


class RunFailed(RuntimeError):
    """A run stopped for a reason the message names (not bad input, not a bug)."""


_AT_COMMAND_END = []  # callables run when a command ends; io_utils adds the release of its output locks


def at_command_end(callback) -> None:
    """Run `callback()` whenever a command run by `run_reporting` ends (so this module imports no other)."""
    if callback not in _AT_COMMAND_END:
        _AT_COMMAND_END.append(callback)


def run_reporting(prog: str, body, *args) -> int:
    """Run `body(*args)` under the policy above; returns the exit status (0 when it went well). The
    outputs the command locked are let go when it ends (see `io_utils.lock_output`)."""
    try:
        body(*args)
    except SystemExit as exit_:  # argparse: --help (0), or a bad flag (2, already explained on stderr)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except BadInput as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(
            f"{prog}: the disk is full: writing {error.filename or 'the output'} failed ({error.strerror}); free some "
            "space and run again (what was saved before is kept: every folder is swapped in whole).",
            file=sys.stderr,
        )
        return 1
    finally:
        for callback in _AT_COMMAND_END:
            callback()
    return 0
