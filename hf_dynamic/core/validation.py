"""Argument checks shared by every method: bad input fails early with the field and value named."""


def check_choice(name, value, choices):
    """Raise ``ValueError("<name> must be one of <choices>, got <value>")`` unless ``value`` is in ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
