"""The project's errors, and what a command does with each (the policy runs in `scratch_gpt.cli`).

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
