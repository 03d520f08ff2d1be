"""Argument checks shared by every method: bad input fails early with the field and value named.

Part of :mod:`hf_dynamic.core` (docs/core.md, "## Validation"). Configs call these in ``__post_init__`` and
algorithms before any work, so a typo in a choice field, a string where a number belongs, a NaN or an out-of-range
value is a ``ValueError`` naming the field, the value and what is allowed.

- :func:`check_choice`: one of a fixed set of values;
- :func:`check_number`: a real number (``int`` / ``float``, never a ``bool`` or a numeric string), finite unless
  ``finite=False``, optionally an integer and optionally bounded (``gt`` / ``ge`` / ``lt`` / ``le``, as in
  pydantic's field constraints);
- :func:`check_bool`: a real ``bool`` (``"no"`` or ``1`` is not one: a truthy string would silently act as True).
"""

import math
import operator


def check_choice(name, value, choices):
    """Raise ``ValueError("<name> must be one of <choices>, got <value>")`` unless ``value`` is in ``choices``.

    ``choices`` is any iterable (read once, so a generator works too).
    """
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_number(name, value, integer=False, *, gt=None, ge=None, lt=None, le=None, finite=True):
    """Raise a ``ValueError`` naming ``name`` and ``value`` unless ``value`` is a real number that fits.

    - the type: an ``int`` or a ``float`` (an ``int`` when ``integer``); a ``bool``, a numeric string (``"0.5"``),
      ``None`` or a tensor is refused: ``"<name> must be a number, got '0.5' (str)"``;
    - finiteness: NaN is always refused (it passes no comparison and would surface later as a NaN loss); ``±inf``
      is refused unless ``finite=False``;
    - the bounds: ``value > gt``, ``value >= ge``, ``value < lt``, ``value <= le`` for each one given, e.g.
      ``check_number("ratio", r, gt=0, le=1)`` accepts r in (0, 1]:
      ``"ratio must be a number > 0 and <= 1, got 2"``.
    """
    noun = "integer" if integer else "number"
    if isinstance(value, bool) or not isinstance(value, (int,) if integer else (int, float)):
        raise ValueError(f"{name} must be {'an' if integer else 'a'} {noun}, got {value!r} ({type(value).__name__})")
    bounds = [(symbol, bound, holds) for symbol, bound, holds in
              ((">", gt, operator.gt), (">=", ge, operator.ge), ("<", lt, operator.lt), ("<=", le, operator.le))
              if bound is not None]
    limits = " and".join(f" {symbol} {bound}" for symbol, bound, _ in bounds)
    if isinstance(value, float) and (math.isnan(value) or (finite and math.isinf(value))):
        raise ValueError(f"{name} must be a {'finite' if finite else 'non-NaN'} {noun}{limits}, got {value!r}")
    if not all(holds(value, bound) for _, bound, holds in bounds):
        raise ValueError(f"{name} must be {'an' if integer else 'a'} {noun}{limits}, got {value!r}")


def check_bool(name, value):
    """Raise ``ValueError("<name> must be a bool (True or False), got <value> (<type>)")`` unless ``value`` is a
    ``bool``: ``"no"``, ``"yes"``, ``0`` or ``1`` are refused rather than read by their truth value."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False), got {value!r} ({type(value).__name__})")


# Keywords a transformers config takes besides its dataclass fields (consumed by ``PretrainedConfig.__post_init__``,
# or, for the legacy ``gradient_checkpointing``, by ``PreTrainedModel.post_init``); ``num_labels`` is a property.
CONFIG_KEYWORDS = ("num_labels", "output_attentions", "attn_implementation", "experts_implementation",
                   "gradient_checkpointing", "torch_dtype")


def check_config_overrides(config_class, overrides: dict, method: str) -> None:
    """``TypeError`` naming every key of ``overrides`` that ``config_class`` has no field for (a config would keep a
    misspelt keyword as a stray attribute, so ``from_static(..., num_kernal=8)`` would silently build the default);
    ``method`` names the caller in the message."""
    known = set(config_class.__dataclass_fields__) | set(config_class.attribute_map) | set(CONFIG_KEYWORDS)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{method}() got unknown keyword argument(s) {unknown}: not fields of "
                        f"{config_class.__name__}")
