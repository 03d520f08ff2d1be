"""Argument checks shared by every method: bad input fails early with the field and value named.

Part of :mod:`hf_dynamic.core` (docs/core.md, "Validation"). Configs call these in ``__post_init__`` and algorithms
before any work, so a typo in a choice field is a ``ValueError`` naming the field, the value and the valid choices.
"""


def check_choice(name, value, choices):
    """Raise ``ValueError("<name> must be one of <choices>, got <value>")`` unless ``value`` is in ``choices``.

    ``choices`` is any iterable (read once, so a generator works too).
    """
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_number(name, value, integer=False):
    """Raise ``ValueError("<name> must be a number, got <value>")`` unless ``value`` is an int or a float (an int
    when ``integer``); a bool or a numeric string (``"0.5"``) is not a number."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r} "
                         f"({type(value).__name__})")
