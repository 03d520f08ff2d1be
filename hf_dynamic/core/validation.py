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
