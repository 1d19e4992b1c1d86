"""Named exit codes of the ``pfm`` CLI (sysexits where one fits)."""

from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
NOT_FOUND = 3
MISMATCH = 4  # a check found missing or different records
EXISTS = 5  # the object exists already (use --ensure for an idempotent add)
CONFLICT = 6  # the change contradicts the directory's state (alias loop, domain not empty)
INVALID = 65  # EX_DATAERR: a value that can't be stored (bad address, size, window ...)
UNAVAILABLE = 69  # EX_UNAVAILABLE: a daemon or store did not answer
TEMPFAIL = 75  # EX_TEMPFAIL: the directory backend is unreachable or busy; try again
CONFIG = 78  # EX_CONFIG
BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (pfm ... | head)


class CliError(Exception):
    """An error the CLI reports as one line and an exit code."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code
