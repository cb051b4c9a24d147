"""bnfold's error types: each maps to one exit code of the command line (docs/user-guide.md)."""

from __future__ import annotations


class BnfoldError(Exception):
    """Base class of every error bnfold raises on purpose; its message is one line for the user."""

    exit_code = 5


class InputError(BnfoldError):
    """The input cannot be read or is not a model (exit code 3)."""

    exit_code = 3


class UsageError(BnfoldError):
    """The arguments do not make sense together (exit code 2)."""

    exit_code = 2


class CheckFailedError(BnfoldError):
    """The folded model does not compute the same function as the original (exit code 1).

    ``result`` holds the fold log and the failed check, so a caller can show what differed.
    """

    exit_code = 1

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class OutputError(BnfoldError):
    """The output cannot be written (exit code 4)."""

    exit_code = 4
