"""Dynamic convolution and PAD-Net's partially dynamic convolution on MNIST (8,000 / 2,000) and scikit-learn digits
(1,438 / 359), a small ResNet trained from scratch on the CPU (``docs/pad.md``, "## Partially dynamic convolution").

Resumable: one JSON per run under ``examples/vision/results/dynamic_conv/runs/`` (finished runs are skipped), then
``results/dynamic_conv/README.md`` (test accuracy mean ± std over seeds, parameters, FLOPs per image, CPU inference
images/s at batch 1 and 64) is regenerated from whatever runs exist (``--report`` does only that).

Rows (every convolution but the stem dynamic, K = 4 kernels):

- ``static``: transformers' ``ResNetForImageClassification``;
- ``dyconv``: Dynamic Convolution (softmax attention, temperature annealed 30 → 1 over the first third of the epochs);
- ``condconv``: CondConv (sigmoid routing);
- ``pad-element-0.3`` / ``pad-element-0.5`` / ``pad-filter-0.3``: PAD-Net on the DY-Conv model, κ = 0.3 / 0.5,
  Iterative Mode Partition on 10 training batches before training (T = 2, global scope; SNIP scores, the model being random),
  then the compact (finalised) model trained.

Network (one size for both datasets): ResNet basic blocks, stem 16 channels, stages 16-32-64, one block each.
Sizing: one CPU thread, batch 128, Adam lr 2e-3 with cosine decay; MNIST 6 epochs, digits 30 epochs. Inference
throughput is timed on one thread after training (median of 5 timed repeats), FLOPs counted with
``torch.utils.flop_counter`` on one image.

    nice -n 15 .venv/bin/python examples/vision/dynamic_conv_mnist.py             # all runs, resumable
    .venv/bin/python examples/vision/dynamic_conv_mnist.py --report               # regenerate the table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "dynamic_conv"
RUNS = RESULTS / "runs"
SEEDS = (0, 1, 2)
DATASETS = ("mnist", "digits")
ROWS = {
    "static": None,
    "dyconv": dict(routing="softmax"),
    "condconv": dict(routing="sigmoid"),
    "pad-element-0.3": dict(routing="softmax", dynamic_ratio=0.3, partition_granularity="element"),
    "pad-element-0.5": dict(routing="softmax", dynamic_ratio=0.5, partition_granularity="element"),
    "pad-filter-0.3": dict(routing="softmax", dynamic_ratio=0.3, partition_granularity="filter"),
}
EPOCHS = {"mnist": 6, "digits": 30}
NETWORK = dict(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic", num_labels=10,
               num_channels=1)
BATCH, LR, NUM_KERNELS, IMP_BATCHES = 128, 2e-3, 4, 10


def load_tensors(dataset: str) -> dict:
    import hf_dynamic

    data = hf_dynamic.load_mnist() if dataset == "mnist" else hf_dynamic.load_sklearn_digits()
    scale = 255.0 if dataset == "mnist" else 16.0
    out = {}
    for split in ("train", "test"):
        rows = data[split].with_format("torch")[:]
        out[split] = ((rows["image"].float().unsqueeze(1) / scale - 0.5) / 0.5, rows["label"].long())
    return out


def make_model(row: str, seed: int):
    from transformers import ResNetConfig, ResNetForImageClassification

    from hf_dynamic import DynamicResNetConfig, DynamicResNetForImageClassification

    torch.manual_seed(seed)
    if ROWS[row] is None:
        return ResNetForImageClassification(ResNetConfig(**NETWORK))
    return DynamicResNetForImageClassification(DynamicResNetConfig(**NETWORK, num_kernels=NUM_KERNELS, **ROWS[row]))


def batches(x, y, generator):
    order = torch.randperm(len(y), generator=generator)
    for start in range(0, len(y), BATCH):
        idx = order[start:start + BATCH]
        yield {"pixel_values": x[idx], "labels": y[idx]}


def train(model, data, epochs, seed) -> dict:
    from hf_dynamic import TemperatureAnnealingCallback, iterative_mode_partition

    x, y = data["train"]
    generator = torch.Generator().manual_seed(seed)
    info = {}
    if getattr(model.config, "dynamic_ratio", 1) < 1:
        start = time.time()
        summary = iterative_mode_partition(model, batches(x, y, generator), iterations=2, num_batches=IMP_BATCHES)
        info["imp"] = {"seconds": round(time.time() - start, 2), "score": summary["score"],
                       "kept_per_layer": summary["kept_per_layer"]}
    schedule = TemperatureAnnealingCallback(start=30.0, end=1.0, anneal_epochs=epochs / 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    steps = epochs * math.ceil(len(y) / BATCH)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    step = 0
    for _ in range(epochs):
        for batch in batches(x, y, generator):
            schedule.apply(model, step / steps * epochs)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
    info["final_loss"] = loss.item()
    return info


@torch.no_grad()
def evaluate(model, data) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x, y = data["test"]
    correct = sum(int((model(pixel_values=x[i:i + 512]).logits.argmax(-1) == y[i:i + 512]).sum())
                  for i in range(0, len(y), 512))
    counter = FlopCounterMode(display=False)
    with counter:
        model(pixel_values=x[:1])
    throughput = {}
    for batch in (1, 64):
        inputs = x[:batch]
        for _ in range(3):
            model(pixel_values=inputs)
        reps = max(1, 64 // batch)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                model(pixel_values=inputs)
            times.append((time.perf_counter() - start) / (reps * batch))
        throughput[str(batch)] = 1.0 / statistics.median(times)
    return {"test_accuracy": correct / len(y), "parameters": sum(p.numel() for p in model.parameters()),
            "stored_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
            "flops_per_image": counter.get_total_flops(), "images_per_s": throughput}


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"machine": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "commit": commit}


def run_path(dataset, row, seed) -> Path:
    return RUNS / f"{dataset}-{row}-s{seed}.json"


def do_run(dataset, row, seed, data) -> dict:
    start = time.time()
    model = make_model(row, seed)
    info = train(model, data, EPOCHS[dataset], seed)
    result = {"dataset": dataset, "row": row, "seed": seed, "epochs": EPOCHS[dataset], "batch": BATCH, "lr": LR,
              "num_kernels": NUM_KERNELS, "config": ROWS[row], "network": NETWORK, **info, **evaluate(model, data),
              "seconds": round(time.time() - start, 2), **machine()}
    RUNS.mkdir(parents=True, exist_ok=True)
    run_path(dataset, row, seed).write_text(json.dumps(result, indent=2))
    return result


def paired_vs_static(results: list[dict]) -> list[str]:
    """Markdown lines: every dynamic row against ``static`` of the same dataset, paired over the seeds both have
    (test accuracy difference in points, its 95 % interval and the paired t-test; ``hf_dynamic.data.statistics``,
    docs/data.md "## Paired comparisons"). A row "beats static" only where the interval excludes zero."""
    from _paired import paired_cell  # beside this script

    lines = ["", "Paired against `static` (same dataset, same seeds): test accuracy difference in points, 95 % "
             "confidence interval (Student's t) and the two-sided paired t-test; *holds* only where the interval "
             "lies above zero.", "", "| dataset | row | row − static [95 % CI] (p, n) | row > static |",
             "|---|---|---|---|"]
    for dataset in DATASETS:
        static = {r["seed"]: r["test_accuracy"] for r in results if r["dataset"] == dataset and r["row"] == "static"}
        for row in ROWS:
            other = {r["seed"]: r["test_accuracy"] for r in results if r["dataset"] == dataset and r["row"] == row}
            if row == "static" or not other or not static:
                continue
            lines.append(f"| {dataset} | {row} | {paired_cell(other, static)} |")
    return lines


def report() -> str:
    results = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))] if RUNS.is_dir() else []
    lines = ["# Dynamic convolution and PAD-Net on MNIST / digits (CPU)", "",
             "Generated by `examples/vision/dynamic_conv_mnist.py` from the runs in `runs/` (see the script's "
             "docstring for the recipe). Accuracy: mean ± std over the seeds present; parameters, FLOPs per image "
             "and throughput: mean over seeds (throughput is one CPU thread on a shared machine, so only a rough "
             "guide).", "",
             "| dataset | row | seeds | test accuracy % | parameters | FLOPs / image | img/s batch 1 | img/s batch 64 |"
             " train s |", "|---|---|---|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        for row in ROWS:
            runs = [r for r in results if r["dataset"] == dataset and r["row"] == row]
            if not runs:
                continue
            acc = [100 * r["test_accuracy"] for r in runs]
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0

            def mean(key, sub=None):
                return statistics.mean(r[key][sub] if sub else r[key] for r in runs)

            lines.append(f"| {dataset} | {row} | {len(runs)} | {statistics.mean(acc):.2f} ± {std:.2f} | "
                         f"{mean('parameters'):,.0f} | {mean('flops_per_image') / 1e6:.2f} M | "
                         f"{mean('images_per_s', '1'):,.0f} | {mean('images_per_s', '64'):,.0f} | "
                         f"{mean('seconds'):.0f} |")
    lines += paired_vs_static(results)
    if results:
        first = results[0]
        lines += ["", f"Machine: {first['cpu']} ({first['cpu_count']} CPUs, {first['machine']}), torch "
                  f"{first['torch']}, {first['torch_threads']} thread(s), commit {first['commit']}; "
                  f"{len(results)} runs."]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "README.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="only regenerate the table from existing runs")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.report:
        for dataset in args.datasets:
            data = None
            for seed in args.seeds:  # seed-major: a partial sweep still covers every row
                for row in args.rows:
                    if run_path(dataset, row, seed).exists():
                        continue
                    data = data or load_tensors(dataset)
                    result = do_run(dataset, row, seed, data)
                    print(f"{dataset} {row} seed {seed}: accuracy {result['test_accuracy']:.4f}, "
                          f"{result['seconds']:.0f} s", flush=True)
                    report()
    print(report())


if __name__ == "__main__":
    sys.exit(main())
