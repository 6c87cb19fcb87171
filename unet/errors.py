"""One family for the user's mistakes, so they can be told from bugs.

A ``UserError`` says what the user has to fix (a params value, a raw file, credentials, a stage
to run first); entry points print its message alone and exit 1. Anything else is a bug or an
environment fault (a CUDA out-of-memory, a shape error) and keeps its traceback.

Each kind also derives from the builtin exception it used to be, so ``except ValueError`` and
``pytest.raises(ValueError)`` keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message names the file or key, the value and the fix."""


class InputError(UserError, ValueError):
    """A bad value or file given by the user (a checkpoint that is not one, a scan it cannot read)."""


class MissingInputError(UserError, FileNotFoundError, ValueError):
    """A stage's input is not there: the message names the stage to run first."""


class EnvironmentMismatch(UserError, RuntimeError):
    """The machine lacks what the params ask for (a CUDA device, an optional package)."""


def missing_input(path: object, stage: str, what: str = "missing") -> MissingInputError:
    """``<path>: missing; run the <stage> stage first (dvc repro <stage>)``: one wording everywhere."""
    return MissingInputError(f"{path}: {what}; run the {stage} stage first (dvc repro {stage})")
