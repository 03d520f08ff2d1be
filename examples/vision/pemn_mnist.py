"""PEMN vs pruning at equal stored bytes, on MNIST (8,000 / 2,000) and scikit-learn digits (1,438 / 359), on the CPU.

Resumable: one JSON per run under ``examples/vision/results/pemn/runs/`` (finished runs are skipped), then
``results/pemn/README.md`` (a table: test accuracy mean ± std over seeds, stored bytes, ratio to dense fp32) and
``results/pemn/accuracy_vs_bytes.png`` are regenerated from whatever runs exist (``--report`` does only that).

Rows, per dataset × network (``mlp``: 784/64-128-128-10, ``convnet``: conv16-conv32-fc, both without biases like
the paper's networks) × seed:

- ``dense``: the weights trained (Adam, lr 1e-3), stored as fp32: ``4 · numel`` bytes;
- ``pemn-<strategy>-s<sparsity>``: hf_dynamic's PEMN through ``peft.get_peft_model`` (signed Kaiming constant,
  ``scale_fan``, RP with r = 0.1, permuted), scores trained (SGD momentum 0.9, lr 0.1, cosine, weight decay 5e-4);
  stored: ``sum(ceil(numel / 8))`` mask bytes + the recipe JSON (≈ dense / 32 whatever the sparsity);
- ``random-prune``: the trained dense network with a random mask drawn from a seed (positions cost nothing) keeping
  the density ``d`` at which its fp32 values fill the same bytes as PEMN (``4 · d · numel = PEMN bytes``, d ≈ 1/32),
  then fine-tuned (Adam 1e-3) with the same number of epochs;
- ``magnitude-prune``: the same with the largest-|w| weights kept per layer; positions are charged at their entropy
  ``numel · H2(d)`` bits (a lower bound on any position code, so generous to magnitude pruning), hence
  ``4 · d + H2(d) / 8 = PEMN bytes / numel``, d ≈ 2.5 %;
- the accuracy-vs-bytes curve: ``pemn-mp-s0.5-w0.5`` / ``-w2`` (PEMN on the same network with half / twice the
  hidden units or channels: its bytes follow the weight count), and ``random-prune-w0.5`` / ``-w2``,
  ``magnitude-prune-w0.5`` / ``-w2`` (the trained x1 network pruned to those bytes). With the x1 rows that gives
  three budgets per family between ~1 % and ~10 % of the dense bytes; the report says whether PEMN beats both
  pruning baselines at every budget below 10 %. (MP at sparsity 0.5, the curve's PEMN row, was picked after
  the x1 rows of the first seeds were in.)

Sizing (the docstring is the record; each run also stores its settings): one CPU thread (``torch.set_num_threads(1)``),
batch 128; MNIST 15 epochs for every row (a dense MLP run takes ~2 s, a PEMN ConvNet run 30-100 s on this 2-core
machine, depending on its load; 6 epochs left the dense MLP unconverged, 91 % test accuracy), digits 40 epochs
(1-10 s each).
Three seeds. Payload bytes are compared (safetensors headers, ~100 bytes per tensor, are left out of every row
alike; each PEMN run also records its real adapter file size).

    nice -n 15 .venv/bin/python examples/vision/pemn_mnist.py            # all runs, resumable
    taskset -c 1 .venv/bin/python examples/vision/pemn_mnist.py --shard 1/2  # one process per core (0/2 on core 0)
    .venv/bin/python examples/vision/pemn_mnist.py --report              # regenerate the table and the plot
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pemn"
RUNS = RESULTS / "runs"
CACHE = HERE.parents[1] / "outputs" / "pemn_dense_cache"
SEEDS = (0, 1, 2)
DATASETS = ("digits", "mnist")
NETWORKS = ("mlp", "convnet")
STRATEGIES = ("one_layer", "mp", "rp")
SPARSITIES = (0.5, 0.8)
EPOCHS = {"mnist": 15, "digits": 40}
BATCH = 128
RP_RATIO = 0.1
# The accuracy-vs-bytes curve: PEMN (MP, sparsity 0.5) on networks of width x0.5 / x1 / x2 (its bytes scale with the
# weight count), and both pruning baselines of the trained x1 network at each of those byte budgets.
CURVE_PEMN = "pemn-mp-s0.5"
CURVE_WIDTHS = (0.5, 2.0)


# ------------------------------------------------------------------------------------------------ data and networks
def load_arrays(dataset: str):
    import hf_dynamic

    data = hf_dynamic.load_mnist() if dataset == "mnist" else hf_dynamic.load_sklearn_digits()
    scale = 255.0 if dataset == "mnist" else 16.0
    out = {}
    for split in ("train", "test"):
        rows = data[split].with_format("numpy")[:]
        x = torch.tensor(rows["image"], dtype=torch.float32).unsqueeze(1) / scale
        out[split] = ((x - 0.5) / 0.5, torch.tensor(rows["label"], dtype=torch.long))
    return out


class MLP(nn.Module):
    def __init__(self, side: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(side * side, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.fc3 = nn.Linear(hidden, 10, bias=False)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


class ConvNet(nn.Module):
    def __init__(self, side: int, width: float = 1.0):
        super().__init__()
        c1, c2 = round(16 * width), round(32 * width)
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.fc = nn.Linear(c2 * (side // 4) ** 2, 10, bias=False)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def make_network(network: str, dataset: str, seed: int, width: float = 1.0) -> nn.Module:
    """The row's network; ``width`` multiplies the hidden units / channels (the bytes axis of the PEMN curve)."""
    torch.manual_seed(seed)
    side = 28 if dataset == "mnist" else 8
    if network == "mlp":
        return MLP(side, round((128 if dataset == "mnist" else 64) * width))
    return ConvNet(side, width)


def target_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


# ------------------------------------------------------------------------------------------------ training
def train(model, data, epochs, seed, optimizer, scheduler=None, after_step=None):
    x, y = data["train"]
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), BATCH):
            idx = order[start : start + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
        if scheduler is not None:
            scheduler.step()
    return float(loss.detach())


@torch.no_grad()
def accuracy(model, data) -> float:
    model.eval()
    x, y = data["test"]
    return float((model(x).argmax(-1) == y).float().mean())


def dense_weights(dataset, network, seed, data):
    """The trained dense network (cached under outputs/ so the pruning rows reuse it)."""
    path = CACHE / f"{dataset}-{network}-s{seed}.pt"
    model = make_network(network, dataset, seed)
    if path.is_file():
        model.load_state_dict(torch.load(path))
        return model, None
    final_loss = train(model, data, EPOCHS[dataset], seed, torch.optim.Adam(model.parameters(), lr=1e-3))
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model, final_loss


def binary_entropy(d: float) -> float:
    return 0.0 if d in (0.0, 1.0) else -(d * math.log2(d) + (1 - d) * math.log2(1 - d))


def density_for_bytes(budget_per_weight: float, positions_cost: bool) -> float:
    """Largest density d with 4·d (+ H2(d)/8 when positions are paid) <= budget bytes per weight (bisection)."""
    lo, hi = 0.0, min(1.0, budget_per_weight / 4)
    for _ in range(60):
        mid = (lo + hi) / 2
        cost = 4 * mid + (binary_entropy(mid) / 8 if positions_cost else 0.0)
        lo, hi = (mid, hi) if cost <= budget_per_weight else (lo, mid)
    return lo


def pemn_bytes(model) -> int:
    from hf_dynamic.pemn.api import pemn_storage_bytes

    return pemn_storage_bytes([tuple(model.get_submodule(n).weight.shape) for n in target_names(model)], pemn_config())


def pemn_config(strategy="mp", sparsity=0.5, seed=0, targets=None):
    import hf_dynamic

    return hf_dynamic.PEMNConfig(target_modules=targets or ["x"], strategy=strategy, sparsity=sparsity,
                                 ratio=RP_RATIO, seed=seed, scale_fan=True)


# ------------------------------------------------------------------------------------------------ one run
def run_pemn(dataset, network, seed, strategy, sparsity, data, width=1.0):
    from peft import get_peft_model

    base = make_network(network, dataset, seed, width)
    config = pemn_config(strategy, sparsity, seed, target_names(base))
    shapes = [tuple(base.get_submodule(n).weight.shape) for n in target_names(base)]
    model = get_peft_model(base, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS[dataset])
    final_loss = train(model, data, EPOCHS[dataset], seed, optimizer, scheduler)
    acc = accuracy(model, data)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        file_bytes = os.path.getsize(Path(tmp) / "adapter_model.safetensors")
    numel = sum(p.numel() for n, p in model.named_parameters() if ".pemn_scores." in n)
    from hf_dynamic.pemn.api import pemn_storage_bytes

    return {"accuracy": acc, "stored_bytes": pemn_storage_bytes(shapes, config), "adapter_file_bytes": file_bytes,
            "numel": numel, "final_train_loss": final_loss}


def run_prune(dataset, network, seed, kind, data, budget_width=1.0):
    """Prune the trained x1 network to the bytes PEMN takes on the network of width ``budget_width``."""
    model, _ = dense_weights(dataset, network, seed, data)
    names = target_names(model)
    numel = sum(model.get_submodule(n).weight.numel() for n in names)
    budget = pemn_bytes(make_network(network, dataset, seed, budget_width))
    density = density_for_bytes(budget / numel, positions_cost=(kind == "magnitude"))
    masks = {}
    generator = torch.Generator().manual_seed(10_000 + seed)
    for name in names:
        weight = model.get_submodule(name).weight
        k = max(1, int(density * weight.numel()))
        score = weight.detach().abs() if kind == "magnitude" else torch.rand(weight.shape, generator=generator)
        mask = torch.zeros(weight.numel(), dtype=torch.bool)
        mask[score.reshape(-1).argsort(descending=True, stable=True)[:k]] = True
        masks[name] = mask.view_as(weight)
        with torch.no_grad():
            weight.mul_(masks[name])
    acc_before = accuracy(model, data)

    def reapply():
        with torch.no_grad():
            for name in names:
                model.get_submodule(name).weight.mul_(masks[name])

    final_loss = train(model, data, EPOCHS[dataset], seed, torch.optim.Adam(model.parameters(), lr=1e-3),
                       after_step=reapply)
    kept = sum(int(m.sum()) for m in masks.values())
    positions = 8  # the seed of a random mask
    if kind == "magnitude":
        positions = sum(math.ceil(m.numel() * binary_entropy(density) / 8) for m in masks.values())
    return {"accuracy": accuracy(model, data), "accuracy_before_finetune": acc_before, "density": kept / numel,
            "stored_bytes": 4 * kept + positions, "numel": numel, "final_train_loss": final_loss}


def run_dense(dataset, network, seed, data):
    model, final_loss = dense_weights(dataset, network, seed, data)
    numel = sum(model.get_submodule(n).weight.numel() for n in target_names(model))
    return {"accuracy": accuracy(model, data), "stored_bytes": 4 * numel, "numel": numel,
            "final_train_loss": final_loss}


def all_runs(seeds=SEEDS):
    for seed in seeds:
        for dataset in DATASETS:
            for network in NETWORKS:
                yield dataset, network, seed, "dense"
                for strategy in STRATEGIES:
                    for sparsity in SPARSITIES:
                        yield dataset, network, seed, f"pemn-{strategy}-s{sparsity}"
                yield dataset, network, seed, "random-prune"
                yield dataset, network, seed, "magnitude-prune"
                for width in CURVE_WIDTHS:
                    for family in (CURVE_PEMN, "random-prune", "magnitude-prune"):
                        yield dataset, network, seed, f"{family}-w{width:g}"


def parse_row(row: str) -> dict:
    """``dense`` / ``pemn-<strategy>-s<sparsity>[-w<width>]`` / ``<random|magnitude>-prune[-w<width>]``."""
    parts = row.split("-")
    width = float(parts.pop()[1:]) if parts[-1].startswith("w") else 1.0
    if parts[0] == "pemn":
        return {"kind": "pemn", "strategy": parts[1], "sparsity": float(parts[2][1:]), "width": width}
    return {"kind": parts[0], "width": width}


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    return {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "commit": commit, "python": sys.version.split()[0]}


def do_run(dataset, network, seed, row, cache):
    if dataset not in cache:
        cache.clear()
        cache[dataset] = load_arrays(dataset)
    data = cache[dataset]
    start = time.time()
    spec = parse_row(row)
    if spec["kind"] == "dense":
        result = run_dense(dataset, network, seed, data)
    elif spec["kind"] == "pemn":
        result = run_pemn(dataset, network, seed, spec["strategy"], spec["sparsity"], data, spec["width"])
    else:
        result = run_prune(dataset, network, seed, spec["kind"], data, spec["width"])
    result.update(dataset=dataset, network=network, seed=seed, row=row, width=spec["width"], epochs=EPOCHS[dataset],
                  batch_size=BATCH,
                  seconds=round(time.time() - start, 2), sizing="1 CPU thread; MNIST 15 epochs, digits 40 epochs, "
                  "batch 128: seconds to a minute per run", **machine())
    return result


# ------------------------------------------------------------------------------------------------ report
def load_results() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]


def report() -> None:
    results = load_results()
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["network"], r["row"]), []).append(r)
    curve = [f"{family}-w{w:g}" for w in CURVE_WIDTHS for family in (CURVE_PEMN, "random-prune", "magnitude-prune")]
    order = (["dense"] + [f"pemn-{s}-s{p}" for s in STRATEGIES for p in SPARSITIES] + ["random-prune",
             "magnitude-prune"] + curve)
    lines = [
        "# PEMN vs pruning at equal stored bytes (CPU)", "",
        "Generated by `examples/vision/pemn_mnist.py` from the run files in `runs/` (see its docstring for the "
        "settings and the byte accounting). Accuracy: test split, mean ± std over the seeds present (n).", "",
        "| dataset | network | row | test accuracy | n | stored bytes | ratio to dense fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in DATASETS:
        for network in NETWORKS:
            dense = groups.get((dataset, network, "dense"))
            dense_bytes = dense[0]["stored_bytes"] if dense else None
            for row in order:
                runs = groups.get((dataset, network, row))
                if not runs:
                    continue
                accs = np.array([r["accuracy"] for r in runs]) * 100
                nbytes = int(np.mean([r["stored_bytes"] for r in runs]))
                ratio = f"1/{dense_bytes / nbytes:.1f}" if dense_bytes else "?"
                std = f" ± {accs.std(ddof=1):.2f}" if len(accs) > 1 else ""
                lines.append(
                    f"| {dataset} | {network} | {row} | {accs.mean():.2f}{std} | {len(accs)} | {nbytes:,} | {ratio} |")
    lines += ["", "Claim re-measured (PEMN beats random pruning at equal bytes), per dataset/network, on the rows "
              "present:", ""]
    for dataset in DATASETS:
        for network in NETWORKS:
            pemn = {row: runs for (d, n, row), runs in groups.items() if (d, n) == (dataset, network) and
                    row.startswith("pemn-")}
            rand = groups.get((dataset, network, "random-prune"))
            if not pemn or not rand:
                continue
            worst_row = min(pemn, key=lambda row: np.mean([r["accuracy"] for r in pemn[row]]))
            worst = np.mean([r["accuracy"] for r in pemn[worst_row]]) * 100
            rand_acc = np.mean([r["accuracy"] for r in rand]) * 100
            verdict = "yes" if worst > rand_acc else "no"
            lines.append(f"- {dataset} / {network}: {verdict}: the weakest PEMN row ({worst_row}) {worst:.2f} vs "
                         f"random pruning {rand_acc:.2f}")
    lines += ["", f"Accuracy-vs-bytes curve ({CURVE_PEMN} on networks of width x0.5 / x1 / x2 against both pruning "
              "baselines of the trained x1 network at the same bytes): does PEMN beat both at every budget below "
              "10 % of the dense bytes?", ""]
    lines += dominance_lines(groups)
    lines += paired_at_equal_bytes(groups)
    if results:
        first = results[-1]
        lines += ["", f"Machine: {first['machine']} ({first['cpu_count']} CPUs), torch {first['torch']}, "
                  f"{first['torch_threads']} thread(s), commit {first['commit']}; {len(results)} runs."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")
    plot(groups)


def mean_accuracy(runs: list[dict]) -> float:
    return float(np.mean([r["accuracy"] for r in runs]) * 100)


def dominance_lines(groups: dict, limit: float = 0.10) -> list[str]:
    """Per dataset/network: at each curve budget below ``limit`` × dense bytes, PEMN vs the better pruning row."""
    lines = []
    for dataset in DATASETS:
        for network in NETWORKS:
            dense = groups.get((dataset, network, "dense"))
            if not dense:
                continue
            points = []
            for width in (1.0,) + CURVE_WIDTHS:
                suffix = "" if width == 1.0 else f"-w{width:g}"
                pemn = groups.get((dataset, network, CURVE_PEMN + suffix))
                prunes = [groups.get((dataset, network, f"{k}-prune{suffix}")) for k in ("random", "magnitude")]
                if not pemn or not all(prunes):
                    continue
                fraction = np.mean([r["stored_bytes"] for r in pemn]) / dense[0]["stored_bytes"]
                if fraction > limit:
                    continue
                best = max(mean_accuracy(p) for p in prunes)
                points.append((fraction, mean_accuracy(pemn), best))
            if not points:
                continue
            verdict = "yes" if all(p > b for _, p, b in points) else "no"
            detail = "; ".join(f"{100 * f:.1f} % of dense: PEMN {p:.2f} vs best pruning {b:.2f}"
                               for f, p, b in sorted(points))
            lines.append(f"- {dataset} / {network}: {verdict} ({detail})")
    return lines


def paired_at_equal_bytes(groups: dict) -> list[str]:
    """Markdown lines: at every curve width, PEMN against each pruning baseline at the same bytes, paired over the
    seeds both have (test accuracy difference in points, its 95 % interval, the paired t-test;
    ``hf_dynamic.data.statistics``, docs/data.md "## Paired comparisons"). PEMN "beats" a baseline only where the
    interval excludes zero."""
    from _paired import paired_cell  # beside this script

    lines = ["", f"Paired at equal bytes ({CURVE_PEMN} against each pruning baseline of the same width's byte "
             "budget, same seeds): test accuracy difference in points, 95 % confidence interval (Student's t) and "
             "the two-sided paired t-test; *holds* only where the interval lies above zero.", "",
             "| dataset | network | width | baseline | PEMN − baseline [95 % CI] (p, n) | PEMN > baseline |",
             "|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        for network in NETWORKS:
            for width in (1.0,) + CURVE_WIDTHS:
                suffix = "" if width == 1.0 else f"-w{width:g}"
                pemn = {r["seed"]: r["accuracy"] for r in groups.get((dataset, network, CURVE_PEMN + suffix), [])}
                for kind in ("random", "magnitude"):
                    base = {r["seed"]: r["accuracy"] for r in groups.get((dataset, network, f"{kind}-prune{suffix}"),
                                                                         [])}
                    if not pemn or not base:
                        continue
                    lines.append(f"| {dataset} | {network} | x{width:g} | {kind} pruning | {paired_cell(pemn, base)} |")
    return lines


def plot(groups) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, n) for d in DATASETS for n in NETWORKS if any(k[:2] == (d, n) for k in groups)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    markers = {"dense": "s", "pemn": "o", "random": "v", "magnitude": "^"}
    for ax, (dataset, network) in zip(axes[0], panels):
        families: dict[str, list] = {}
        for (d, n, row), runs in sorted(groups.items()):
            if (d, n) != (dataset, network):
                continue
            accs = np.array([r["accuracy"] for r in runs]) * 100
            x = np.mean([r["stored_bytes"] for r in runs])
            family = row.rsplit("-w", 1)[0]
            if family in (CURVE_PEMN, "random-prune", "magnitude-prune"):
                families.setdefault(family, []).append((x, accs.mean(), accs.std() if len(accs) > 1 else 0))
                continue
            ax.errorbar(x, accs.mean(), yerr=accs.std() if len(accs) > 1 else 0, marker=markers[row.split("-")[0]],
                        capsize=3, label=row, linestyle="none", alpha=0.6)
        for family, points in families.items():
            xs, ys, es = zip(*sorted(points))
            ax.errorbar(xs, ys, yerr=es, marker=markers[family.split("-")[0]], capsize=3,
                        label=f"{family} (widths)" if family.startswith("pemn") else f"{family} (budgets)")
        ax.set_xscale("log")
        ax.set_xlabel("stored bytes")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} / {network}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "accuracy_vs_bytes.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="only regenerate the table and the plot")
    parser.add_argument("--only", default=None, help="substring filter on 'dataset/network/seed/row'")
    parser.add_argument("--shard", default="0/1", help="K/N: do only every N-th run starting at K (one process per core)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS),
                        help="seeds to run (default: the table's first three, 0 1 2; more seeds add runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.report:
        RUNS.mkdir(parents=True, exist_ok=True)
        cache: dict = {}
        shard, num_shards = (int(v) for v in args.shard.split("/"))
        for index, (dataset, network, seed, row) in enumerate(all_runs(args.seeds)):
            if index % num_shards != shard:
                continue
            key = f"{dataset}-{network}-s{seed}-{row}"
            if args.only and args.only not in f"{dataset}/{network}/{seed}/{row}":
                continue
            path = RUNS / f"{key}.json"
            if path.is_file():
                continue
            result = do_run(dataset, network, seed, row, cache)
            path.write_text(json.dumps(result, indent=1) + "\n")
            print(f"{key}: acc {result['accuracy']:.4f} bytes {result['stored_bytes']} ({result['seconds']} s)",
                  flush=True)
            report()
    report()


if __name__ == "__main__":
    main()
