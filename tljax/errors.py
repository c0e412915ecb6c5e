"""The one exception type for bad user input.

The CLI turns a ``UserError`` into a single line on stderr and exit code 2; anything else
is a bug in tljax and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from a user: a name, value, file or config that cannot be used."""


def env_whole_number(name: str, least: int, unit: str = "") -> int | None:
    """Returns environment variable ``name`` as an int, None where it is not set; raises
    ``UserError`` naming it unless it is an ASCII whole number >= ``least`` (``unit``, if
    given, says what it counts)."""
    import os

    value = os.environ.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and int(value) >= least):
        raise UserError(f"{name} must be a whole number{' of ' + unit if unit else ''} "
                        f">= {least}, got {value!r}")
    return int(value)


def unknown(kind: str, value, known) -> UserError:
    """Returns the error for an unknown name, listing the valid ones.

    >>> str(unknown("strategy", "bitfti", ["bitfit", "full_ft"]))
    "unknown strategy 'bitfti'; known: bitfit, full_ft"
    """
    return UserError(f"unknown {kind} {value!r}; known: {', '.join(sorted(map(str, known)))}")
