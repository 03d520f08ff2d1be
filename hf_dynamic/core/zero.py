"""DeepSpeed ZeRO-3 helpers (docs/pad.md, "## Resume and distributed training").

Under ZeRO-3 a parameter's ``.data`` is a shard (often empty) outside the forward of its module, so code that reads
weights outside a forward (e.g. to test whether experts are still copies of the static weight) gathers them first.
Nothing here imports DeepSpeed unless a parameter is actually partitioned.
"""

from __future__ import annotations

import contextlib


def is_zero3_partitioned(params) -> bool:
    """True when any of ``params`` is a DeepSpeed ZeRO-3 partitioned parameter."""
    return any(hasattr(p, "ds_id") for p in params)


def gathered(params, modifier_rank=None):
    """A context in which ``params`` are whole (``deepspeed.zero.GatheredParameters``) when ZeRO-3 partitions them,
    a no-op otherwise. With ``modifier_rank`` the changes that rank makes are kept (and broadcast)."""
    params = list(params)
    if not is_zero3_partitioned(params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
