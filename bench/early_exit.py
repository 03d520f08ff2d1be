#!/usr/bin/env python
"""Wall-clock speed-up of boosted early exit (dynamic mode) over the full model, at matched quality, on a GLUE dev
set (SST-2 by default; ``--task mrpc`` etc.).

The measure: dynamic mode at the lowest calibrated budget whose dev metric (the task's main one: SST-2 accuracy,
MRPC F1, CoLA MCC) is within ``--tolerance`` (0.5) point of the last exit's, timed against the same model running
all layers, at batch 1 and batch 64 in one run. Target: >= 1.8x.

    # CPU, short fine-tune on a subset of SST-2 (what a CPU can afford)
    python bench/early_exit.py --train_samples 2000 --epochs 1 --machine cpu
    # GPU: the same script, full SST-2 training
    python bench/early_exit.py --device cuda --train_samples 0 --epochs 2 --machine h100
    # or time a model trained elsewhere (e.g. run_glue.py --variant boosted_exit --exit_save_model true)
    python bench/early_exit.py --checkpoint outputs/glue/sst2-boosted_exit-s1/model --device cuda
    # MRPC, a model of the GLUE early-exit table (trained on the whole train split by examples/glue/compare.py):
    # its thresholds are calibrated on train rows it has seen (there are no others), say so in the results
    python bench/early_exit.py --task mrpc --checkpoint outputs/compare/naive/mrpc/boosted/s1 --train_samples 0 \
        --calib_samples 1000 --calibration_seen --max_seq_length 128 --machine cpu

Steps: (1) fine-tune all-MiniLM-L6-v2 with 6 boosted exits on the first ``--train_samples`` rows of the shuffled
task's train split (0 = all but the calibration rows), unless ``--checkpoint`` is given; (2) calibrate thresholds
(MSDNet budgeted batch classification, q_k ∝ p^k) on ``--calib_samples`` train rows that follow the training rows
(held out, unless ``--calibration_seen`` says the checkpoint saw them); (3) sweep budgets,
measure the dev metric and cost with real early exit, pick the lowest budget within tolerance of the last exit;
(4) time full vs dynamic over the whole dev split at each batch size (median of ``--repeats``).

Writes bench/results/early_exit_<machine>.json and .md (``early_exit_<task>_<machine>`` for a task other than SST-2).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _results import cpu_model, write_results  # noqa: E402
from hf_dynamic.assets import minilm_path  # noqa: E402
from hf_dynamic.boost.calibration import (  # noqa: E402
    calibrate_from_logits,
    collect_exit_logits,
    simulate_exits,
)
from hf_dynamic.models.boosted_early_exit import BoostedEarlyExitForSequenceClassification  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2", help="GLUE classification task (Hub name): sst2, mrpc, cola, ...")
    parser.add_argument("--checkpoint", default=None, help="trained boosted model folder (skips training)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="inference dtype (training uses bf16 autocast on cuda when bfloat16)")
    parser.add_argument("--machine", default=None, help="label of the results file (default: cpu / GPU name)")
    parser.add_argument("--train_samples", type=int, default=2000,
                        help="training rows (0 = all but the calibration rows)")
    parser.add_argument("--calib_samples", type=int, default=1000, help="held-out train rows for calibration")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--pooling", default="mean", choices=["cls", "mean"],
                        help="exit heads' pooling (mean: how all-MiniLM-L6-v2 was trained to pool)")
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--batch_sizes", default="1,64")
    parser.add_argument("--tolerance", type=float, default=0.5, help="metric points below the last exit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time_samples", default=None,
                        help="comma list aligned with --batch_sizes: time on the first N dev examples (0 = all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--save_model", default=None, help="save the trained model to this folder")
    parser.add_argument("--calibration_seen", action="store_true",
                        help="the checkpoint was trained on the calibration rows too (recorded in the results)")
    return parser.parse_args()


def batches(encodings, labels, batch_size, tokenizer, device):
    """Dynamic padding per batch, in dataset order."""
    out = []
    for start in range(0, len(labels), batch_size):
        features = [{k: v[i] for k, v in encodings.items()} for i in range(start, min(start + batch_size, len(labels)))]
        batch = tokenizer.pad(features, return_tensors="pt")
        batch["labels"] = torch.tensor(labels[start:start + batch_size])
        out.append({k: v.to(device) for k, v in batch.items()})
    return out


def train(model, data, args, device):
    from transformers import get_linear_schedule_with_warmup

    steps = max(1, int(math.ceil(len(data) * args.epochs)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    autocast = args.dtype == "bfloat16" and device.type == "cuda"
    model.train()
    generator = torch.Generator().manual_seed(args.seed)
    step, start, losses = 0, time.perf_counter(), []
    while step < steps:
        for i in torch.randperm(len(data), generator=generator).tolist():
            if step >= steps:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(**data[i]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if step % 20 == 0:
                print(f"step {step}/{steps} loss {statistics.mean(losses[-20:]):.4f}", flush=True)
    model.eval()
    return {"steps": steps, "train_time_s": time.perf_counter() - start, "final_loss": statistics.mean(losses[-20:])}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_pass(model, data, device, repeats):
    """Median wall-clock seconds of one pass over ``data`` (after one warm-up batch), and the last pass's outputs."""
    model(**{k: v for k, v in data[0].items() if k != "labels"})
    times = []
    for _ in range(repeats):
        outputs = []
        sync(device)
        start = time.perf_counter()
        for batch in data:
            outputs.append(model(**{k: v for k, v in batch.items() if k != "labels"}))
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, outputs


def machine_label(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}"


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    from transformers import AutoTokenizer

    from hf_dynamic.data.glue import GLUE_TASKS, load_glue
    from hf_dynamic.data.metrics import compute_glue_metrics

    if args.task not in GLUE_TASKS or GLUE_TASKS[args.task].is_regression:
        raise ValueError(f"--task {args.task!r}: choose a GLUE classification task from "
                         f"{sorted(t for t, info in GLUE_TASKS.items() if not info.is_regression)}")
    task = GLUE_TASKS[args.task]
    metric_name = task.metric_for_best_model

    def metric(predictions, labels) -> float:
        """The task's main dev metric × 100."""
        return 100 * compute_glue_metrics(args.task, predictions.cpu().numpy(), labels.cpu().numpy())[metric_name]

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    raw = load_glue(args.task, data_dir=args.data_dir)
    train_split = raw["train"].shuffle(seed=args.seed)
    # the calibration rows follow the training rows; with --checkpoint give the --train_samples it was trained with
    n_train = len(train_split) - args.calib_samples if args.train_samples == 0 else args.train_samples
    if n_train + args.calib_samples > len(train_split):
        raise ValueError(f"--train_samples {args.train_samples} + --calib_samples {args.calib_samples} exceed the "
                         f"{len(train_split)} training rows")

    def encode(split):
        enc = tokenizer(*[list(split[c]) for c in task.text_columns], truncation=True,
                        max_length=args.max_seq_length)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, list(split["label"])

    dev_enc, dev_labels = encode(raw["validation"])
    calib = train_split.select(range(n_train, n_train + args.calib_samples))
    calib_data = batches(*encode(calib), 64, tokenizer, device)

    training = None
    if args.checkpoint:
        model = BoostedEarlyExitForSequenceClassification.from_pretrained(args.checkpoint, dtype=torch.float32)
        model.to(device)
        provenance = os.path.join(args.checkpoint, "bench_training.json")  # written by --save_model
        if os.path.exists(provenance):
            with open(provenance) as f:
                training = json.load(f)
    else:
        model = BoostedEarlyExitForSequenceClassification.from_backbone(minilm_path(), num_labels=task.num_labels,
                                                                    exit_pooling=args.pooling).to(device)
        train_data = batches(*encode(train_split.select(range(n_train))), args.train_batch_size, tokenizer, device)
        training = {"train_samples": n_train, "epochs": args.epochs, "lr": args.lr,
                    "batch_size": args.train_batch_size, **train(model, train_data, args, device)}
        if args.save_model:
            model.save_pretrained(args.save_model)
            with open(os.path.join(args.save_model, "bench_training.json"), "w") as f:
                json.dump({**training, "seed": args.seed, "max_seq_length": args.max_seq_length,
                           "pooling": args.pooling, "command": "python bench/early_exit.py " + " ".join(sys.argv[1:])},
                          f, indent=2)
    model.eval()
    if args.dtype == "bfloat16":
        model.to(torch.bfloat16)
    config = model.config
    config.exit_thresholds = None

    # anytime metric per exit on dev (JSON keys say "accuracy" for SST-2's sake; "metric" names it); the last
    # exit is the full model
    dev64 = batches(dev_enc, dev_labels, 64, tokenizer, device)
    dev_logits, dev_y = collect_exit_logits(model, dev64)
    anytime = [metric(dev_logits[:, k].argmax(-1), dev_y) for k in range(config.num_exits)]
    full_acc = anytime[-1]

    # calibrate on held-out train rows; choose the lowest budget within tolerance on dev
    calib_logits, _ = collect_exit_logits(model, calib_data)
    first = config.exit_layers[0] / config.num_backbone_layers
    sweep = []
    total = config.num_backbone_layers
    layer_of_exit = torch.tensor(config.exit_layers)
    for budget in [round(b, 4) for b in torch.linspace(first, 1.0, 21).tolist()]:
        calibration = calibrate_from_logits(config, calib_logits, budget)
        # dev exits simulated from the anytime logits (same rule as dynamic mode; the chosen point is then
        # measured for real below)
        exit_index = simulate_exits(config, dev_logits, calibration.thresholds)
        predictions = dev_logits[torch.arange(len(dev_y)), exit_index].argmax(-1)
        sweep.append({"budget": budget, "thresholds": calibration.thresholds,
                      "dev_cost": float(layer_of_exit[exit_index].double().mean() / total),
                      "dev_accuracy": metric(predictions, dev_y),
                      "exit_counts": torch.bincount(exit_index, minlength=config.num_exits).tolist()})
    matched = [s for s in sweep if s["dev_accuracy"] >= full_acc - args.tolerance]
    chosen = min(matched, key=lambda s: s["dev_cost"])

    timings = []
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    time_samples = [int(n) for n in args.time_samples.split(",")] if args.time_samples else [0] * len(batch_sizes)
    if len(time_samples) != len(batch_sizes):
        raise ValueError(f"--time_samples {args.time_samples!r} must give one count per batch size {batch_sizes}")
    for batch_size, n_time in zip(batch_sizes, time_samples):
        n_time = n_time or len(dev_labels)
        data = batches({k: v[:n_time] for k, v in dev_enc.items()}, dev_labels[:n_time], batch_size, tokenizer,
                       device)
        full_all, dyn_all = [], []
        for _ in range(args.repeats):  # interleaved, so load drift on a shared machine hits both alike
            config.exit_thresholds = None
            full_all += time_pass(model, data, device, 1)[1]
            config.exit_thresholds = chosen["thresholds"]
            seconds, outputs = time_pass(model, data, device, 1)[1:]
            dyn_all += seconds
        full_s, dyn_s = statistics.median(full_all), statistics.median(dyn_all)
        labels = torch.cat([b["labels"] for b in data]).cpu()
        predictions = torch.cat([o.logits.argmax(-1) for o in outputs]).cpu()
        layers = torch.cat([o.exit_layer for o in outputs]).cpu()
        measured = {"metric": metric(predictions, labels) / 100,
                    "cost": float(layers.double().mean() / config.num_backbone_layers)}
        timings.append({
            "batch_size": batch_size, "timed_samples": n_time, "full_s": full_s, "dynamic_s": dyn_s, "speedup": full_s / dyn_s,
            "full_runs_s": full_all, "dynamic_runs_s": dyn_all,
            "dynamic_accuracy": measured["metric"] * 100, "dynamic_cost": measured["cost"],
        })
        print(json.dumps(timings[-1]), flush=True)

    machine = args.machine or ("cpu" if device.type == "cpu" else
                               torch.cuda.get_device_name(device).lower().replace(" ", "-"))
    result = {
        "benchmark": "early_exit",
        "machine": machine_label(device),
        "torch": torch.__version__,
        "device": str(device),
        "dtype": args.dtype,
        "model": "all-MiniLM-L6-v2, 6 boosted exits (t=0.5, gradient rescaling), exit pooling "
                 + model.config.exit_pooling,
        "checkpoint": args.checkpoint,
        "training": training,
        "task": args.task,
        "metric": metric_name,
        "calibration": f"{args.calib_samples} {args.task} train rows "
                       + ("that the checkpoint was trained on" if args.calibration_seen else "(not used in training)"),
        "dev_samples": len(dev_labels),
        "max_seq_length": args.max_seq_length,
        "anytime_dev_accuracy": anytime,
        "full_dev_accuracy": full_acc,
        "tolerance_points": args.tolerance,
        "chosen": chosen,
        "sweep": sweep,
        "timings": timings,
        "target_speedup": 1.8,
    }
    md = []
    md.append(f"# Early exit speed-up on {task.dir_name} dev ({machine})\n\n")
    md.append(f"Machine: {result['machine']}; torch {torch.__version__}; device {device}; dtype {args.dtype}.\n\n")
    if training:
        if args.checkpoint:
            md.append(f"Checkpoint `{args.checkpoint}`, trained by this script earlier (--save_model"
                    + (f"; `{training['command']}`" if "command" in training else "") + "):\n")
        rows = training["train_samples"]
        md.append(f"Model: all-MiniLM-L6-v2 + 6 boosted exits ({model.config.exit_pooling} pooling), fine-tuned by "
                f"this script on **{rows} {task.dir_name} train rows for {training['epochs']} epoch(s)** "
                f"({training['steps']} steps, {training['train_time_s']:.0f} s)"
                + (" — a short training on a subset, so accuracies are below a full fine-tune" if
                   rows < 60000 else "") + ".\n")
    else:
        md.append(f"Model: checkpoint `{args.checkpoint}`.\n")
    md.append(f"Thresholds calibrated on {result['calibration']}; budget chosen as the lowest "
            f"whose dev {metric_name} is within {args.tolerance} point of the last exit.\n\n")
    md.append(f"Anytime dev {metric_name} per exit (layers 1..6): "
            + " / ".join(f"{a:.1f}" for a in anytime) + "\n\n")
    md.append(f"Chosen budget {chosen['budget']}: dev {metric_name} {chosen['dev_accuracy']:.2f} vs full "
            f"{full_acc:.2f}, measured cost {chosen['dev_cost']:.3f} (layers executed / 6), exits per layer "
            f"{chosen['exit_counts']}.\n\n")
    md.append(f"| batch | examples timed | full model s | dynamic s | speed-up | dynamic {metric_name} | dynamic cost |\n"
            "|---|---|---|---|---|---|---|\n")
    for t in timings:
        md.append(f"| {t['batch_size']} | {t['timed_samples']} | {t['full_s']:.3f} | {t['dynamic_s']:.3f} | **{t['speedup']:.2f}x** | "
                f"{t['dynamic_accuracy']:.2f} | {t['dynamic_cost']:.3f} |\n")
    md.append(f"\nTimes: one pass over the first N (column 2) of the {len(dev_labels)} dev "
            f"examples (max length {args.max_seq_length}, dynamic padding, dataset order), median of "
            f"{args.repeats} interleaved full / dynamic runs; {metric_name} and cost columns are measured on those same examples in dynamic mode. "
            f"Target: >= 1.8x.\n\n")
    md.append("Command: `python bench/early_exit.py " + " ".join(sys.argv[1:]) + "`\n")
    write_results("early_exit" if args.task == "sst2" else f"early_exit_{args.task}", machine, result, "".join(md))
    print(json.dumps({k: result[k] for k in ("machine", "anytime_dev_accuracy", "full_dev_accuracy", "timings")},
                     indent=2))


if __name__ == "__main__":
    main()
