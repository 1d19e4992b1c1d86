"""Named exit codes of the ``pfm`` CLI (sysexits where one fits)."""

from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
NOT_FOUND = 3
UNAVAILABLE = 69  # EX_UNAVAILABLE: a daemon or store did not answer
CONFIG = 78  # EX_CONFIG


class CliError(Exception):
    """An error the CLI reports as one line and an exit code."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code
