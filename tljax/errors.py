"""The one exception type for bad user input.

The CLI turns a ``UserError`` into a single line on stderr and exit code 2; anything else
is a bug in tljax and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from a user: a name, value, file or config that cannot be used."""


def unknown(kind: str, value, known) -> UserError:
    """Returns the error for an unknown name, listing the valid ones.

    >>> str(unknown("strategy", "bitfti", ["bitfit", "full_ft"]))
    "unknown strategy 'bitfti'; known: bitfit, full_ft"
    """
    return UserError(f"unknown {kind} {value!r}; known: {', '.join(sorted(map(str, known)))}")
