#!/usr/bin/env python
"""Dynamic convolution speed on the CPU: the per-sample mixture as one grouped convolution against a Python loop
over samples, im2col + batched matmul, the static convolution, and PAD-Net's finalised partially dynamic
convolutions (``docs/pad.md``, "## Partially dynamic convolution").

One 3×3 convolution layer (ResNet sizes), forward without gradients and forward+backward, timed round-robin (so
machine load affects every variant alike), as ratios to the static ``nn.Conv2d``:

- ``static``: ``nn.Conv2d``;
- ``dy_grouped`` / ``dy_unfold`` / ``dy_loop``: :class:`~hf_dynamic.pad.conv.DynamicConv2d` (K kernels, softmax
  attention) with ``aggregation`` = ``"grouped"`` (the default), ``"unfold"`` (the export path) or ``"loop"``;
- ``pad_element`` / ``pad_filter``: :class:`~hf_dynamic.pad.conv.PartialDynamicConv2d`, finalised at κ with a random
  mask (grouped aggregation; filter mode runs the static filters as one ordinary convolution).

    python bench/dynamic_conv.py --machine cpu          # writes bench/results/dynamic_conv_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _layers import machine_name, make_step, time_interleaved  # noqa: E402
from _results import write_results  # noqa: E402
from hf_dynamic.pad.conv import DynamicConv2d, PartialDynamicConv2d  # noqa: E402

# (name, channels, spatial size)
SHAPES = {"c64-32px": (64, 32), "c128-16px": (128, 16), "c256-8px": (256, 8)}


def finalised_pad(channels, num_kernels, kappa, granularity, seed=0):
    layer = PartialDynamicConv2d(channels, channels, 3, padding=1, num_kernels=num_kernels, granularity=granularity)
    g = torch.Generator().manual_seed(seed)
    layer.set_partition_mask(torch.rand(layer.num_partition_entries, generator=g) < kappa)
    layer.finalize_()
    return layer


def bench(args):
    rows = []
    for shape in args.shapes:
        channels, size = SHAPES[shape]
        for batch in args.batches:
            torch.manual_seed(0)
            layers = {"static": nn.Conv2d(channels, channels, 3, padding=1, bias=False)}
            for aggregation in ("grouped", "unfold", "loop"):
                layers[f"dy_{aggregation}"] = DynamicConv2d(channels, channels, 3, padding=1,
                                                            num_kernels=args.num_kernels, aggregation=aggregation)
            for granularity in ("element", "filter"):
                layers[f"pad_{granularity}"] = finalised_pad(channels, args.num_kernels, args.dynamic_ratio,
                                                             granularity)
            x = torch.randn(batch, channels, size, size, requires_grad=True)
            grad = torch.randn(batch, channels, size, size)
            fwd = time_interleaved({n: make_step(m, x, grad, False) for n, m in layers.items()}, args.repeats)
            fwdbwd = time_interleaved({n: make_step(m, x, grad, True) for n, m in layers.items()}, args.repeats)
            for name in layers:
                print(f"{shape} batch {batch} {name}: fwd {fwd[name] * 1e3:.2f} ms, "
                      f"fwd+bwd {fwdbwd[name] * 1e3:.2f} ms", flush=True)
                rows.append({"shape": shape, "channels": channels, "size": size, "batch": batch, "layer": name,
                             "fwd_ms": fwd[name] * 1e3, "fwdbwd_ms": fwdbwd[name] * 1e3,
                             "fwd_vs_static": fwd[name] / fwd["static"],
                             "fwdbwd_vs_static": fwdbwd[name] / fwdbwd["static"],
                             "fwd_vs_loop": fwd[name] / fwd["dy_loop"],
                             "fwdbwd_vs_loop": fwdbwd[name] / fwdbwd["dy_loop"]})
    return rows


def markdown(result) -> str:
    args = result["args"]
    lines = [f"# Dynamic convolution benchmark ({result['machine']})", "",
             f"Command: `{result['command']}` (torch {result['torch']})", "",
             f"One 3×3 convolution, C_in = C_out, K = {args['num_kernels']} kernels, softmax attention; PAD layers "
             f"finalised at κ = {args['dynamic_ratio']} with a random mask. Median of {args['repeats']} round-robin "
             "repeats; ratios within one run. On a shared, loaded machine single rows are noisy (a row whose fwd "
             "exceeds its fwd+bwd is noise); read the pattern across shapes, not one number.", "",
             "| shape | batch | layer | fwd ms | fwd+bwd ms | fwd vs static | fwd+bwd vs static | fwd vs loop | "
             "fwd+bwd vs loop |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['batch']} | {r['layer']} | {r['fwd_ms']:.2f} | {r['fwdbwd_ms']:.2f} | "
                     f"{r['fwd_vs_static']:.2f} | {r['fwdbwd_vs_static']:.2f} | {r['fwd_vs_loop']:.2f} | "
                     f"{r['fwdbwd_vs_loop']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--num_kernels", type=int, default=4)
    parser.add_argument("--dynamic_ratio", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--machine", default="cpu", help="results file label")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"benchmark": "dynamic_conv", "machine": machine_name(torch.device("cpu")), "torch": torch.__version__,
              "command": "python bench/dynamic_conv.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "args": vars(args), "rows": bench(args)}
    write_results("dynamic_conv", args.machine, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
