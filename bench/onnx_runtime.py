#!/usr/bin/env python
"""ONNX Runtime against PyTorch, same threads, batch 1 and 32 (``docs/onnx.md``, "## Benchmark").

Models, each exported with ``hf_dynamic.export_onnx`` (checked against torch at export) and timed in both runtimes in
one run, interleaved, so the ratios share the machine's load:

- dense all-MiniLM-L6-v2 (``BertForSequenceClassification``, 2 labels) and PartialMoEBert upcycled from it (E = 8,
  top-2, κ = 0.5, IMP neuron mode then finalised; an untrained router: this measures speed, not accuracy), on MRPC
  dev sentence pairs (dynamic padding per batch, max length ``--max_seq_length``);
- early exit: all-MiniLM-L6-v2 with 6 boosted exits fine-tuned and calibrated exactly as ``bench/early_exit.py``
  does (``--train_samples`` rows of the shuffled MRPC train split, 1 epoch, thresholds calibrated on the
  ``--calib_samples`` following rows, the lowest budget whose dev F1 is within ``--tolerance`` point of the last
  exit), full (every layer) vs dynamic (per-sample exit) in PyTorch, and in onnxruntime through the stage graphs and
  the torch-free runtime (``ort_early_exit.EarlyExitSession``); the two dynamic modes' predictions and exit layers
  are compared sample by sample;
- DynamicResNet (Dynamic Convolution, K = 4, from a ResNet-18-shaped static ResNet) against that static ResNet, on
  random ``--image_size`` images.

    python bench/onnx_runtime.py --machine cpu

Writes bench/results/onnx_runtime_<machine>.json and .md, with the command, the machine and its load average.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _layers import time_interleaved  # noqa: E402
from _results import cpu_model, write_results  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default="cpu", help="label of the results file")
    parser.add_argument("--threads", type=int, default=2, help="threads of both runtimes (torch intra-op, ORT)")
    parser.add_argument("--exporter", default="torchscript", choices=["dynamo", "torchscript"])
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--time_samples", default="96,408", help="dev examples timed per batch size (0 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--train_samples", type=int, default=2000,
                        help="early exit: training rows (as bench/early_exit.py)")
    parser.add_argument("--calib_samples", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--tolerance", type=float, default=0.5)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64, help="images timed per batch size")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


# ------------------------------------------------------------------------------------------------- timing
def ort_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def text_batches(encodings, count, batch_size, tokenizer):
    """Dynamic padding per batch, dataset order; int64 numpy (onnxruntime) and torch views of the same arrays."""
    out = []
    for start in range(0, count, batch_size):
        features = [{k: v[i] for k, v in encodings.items()} for i in range(start, min(start + batch_size, count))]
        batch = tokenizer.pad(features, return_tensors="np")
        numpy_batch = {k: np.asarray(v, dtype=np.int64) for k, v in batch.items()}
        out.append((numpy_batch, {k: torch.from_numpy(v) for k, v in numpy_batch.items()}))
    return out


def torch_runner(model, batches, **kwargs):
    @torch.no_grad()
    def run():
        return [model(**b, **kwargs) for _, b in batches]

    return run


def ort_runner(session, batches):
    names = [i.name for i in session.get_inputs()]

    def run():
        return [session.run(None, {n: b[n] for n in names}) for b, _ in batches]

    return run


# ------------------------------------------------------------------------------------------------- models
def pad_moe_from(dense, encodings, tokenizer):
    from hf_dynamic import PartialMoEBertForSequenceClassification, iterative_mode_partition

    model = PartialMoEBertForSequenceClassification.from_dense(dense, num_experts=8, num_experts_per_tok=2,
                                                               dynamic_ratio=0.5, partition_granularity="neuron")
    data = [{**b, "labels": torch.zeros(b["input_ids"].shape[0], dtype=torch.long)}
            for _, b in text_batches(encodings, 64, 16, tokenizer)]
    iterative_mode_partition(model, data, num_batches=4)
    return model.eval()


def early_exit_model(args, tokenizer, raw, dev_enc, dev_labels, metric):
    """bench/early_exit.py's procedure: fine-tune, calibrate on held-out train rows, the lowest budget within
    ``tolerance`` of the last exit's dev metric (its functions, imported)."""
    from early_exit import batches as ee_batches
    from early_exit import train

    from hf_dynamic import BoostedEarlyExitForSequenceClassification, minilm_path
    from hf_dynamic.boost.calibration import calibrate_from_logits, collect_exit_logits, simulate_exits

    train_split = raw["train"].shuffle(seed=args.seed)
    n_train = args.train_samples

    def encode(split):
        enc = tokenizer(list(split["sentence1"]), list(split["sentence2"]), truncation=True,
                        max_length=args.max_seq_length)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, list(split["label"])

    model = BoostedEarlyExitForSequenceClassification.from_backbone(minilm_path(), num_labels=2, exit_pooling="mean")
    train_args = argparse.Namespace(epochs=args.epochs, lr=args.lr, dtype="float32", seed=args.seed)
    cpu = torch.device("cpu")
    training = train(model, ee_batches(*encode(train_split.select(range(n_train))), 32, tokenizer, cpu),
                     train_args, cpu)
    model.eval()
    config = model.config
    config.exit_thresholds = None
    calib = ee_batches(*encode(train_split.select(range(n_train, n_train + args.calib_samples))), 64, tokenizer, cpu)
    dev = ee_batches(dev_enc, dev_labels, 64, tokenizer, cpu)
    dev_logits, dev_y = collect_exit_logits(model, dev)
    calib_logits, _ = collect_exit_logits(model, calib)
    anytime = [metric(dev_logits[:, k].argmax(-1), dev_y) for k in range(config.num_exits)]
    sweep = []
    first = config.exit_layers[0] / config.num_backbone_layers
    layer_of_exit = torch.tensor(config.exit_layers)
    for budget in [round(b, 4) for b in torch.linspace(first, 1.0, 21).tolist()]:
        thresholds = calibrate_from_logits(config, calib_logits, budget).thresholds
        exit_index = simulate_exits(config, dev_logits, thresholds)
        predictions = dev_logits[torch.arange(len(dev_y)), exit_index].argmax(-1)
        sweep.append({"budget": budget, "thresholds": thresholds, "dev_metric": metric(predictions, dev_y),
                      "dev_cost": float(layer_of_exit[exit_index].double().mean() / config.num_backbone_layers)})
    chosen = min((s for s in sweep if s["dev_metric"] >= anytime[-1] - args.tolerance), key=lambda s: s["dev_cost"])
    config.exit_thresholds = chosen["thresholds"]
    return model, {"training": training, "anytime_dev_f1": anytime, "chosen": chosen}


def resnet_pair(args):
    from transformers import ResNetConfig, ResNetForImageClassification

    from hf_dynamic import DynamicResNetForImageClassification

    torch.manual_seed(args.seed)
    static = ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
        layer_type="basic", num_labels=10)).eval()
    dynamic = DynamicResNetForImageClassification.from_static(static, num_kernels=4).eval()
    return static, dynamic


# --------------------------------------------------------------------------------------------------- main
def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoTokenizer, BertForSequenceClassification

    from hf_dynamic import export_onnx, load_glue, minilm_path
    from hf_dynamic.data.metrics import compute_glue_metrics
    from hf_dynamic.deploy.ort_early_exit import EarlyExitSession

    load_before = os.getloadavg()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    raw = load_glue("mrpc")
    dev = raw["validation"]
    enc = tokenizer(list(dev["sentence1"]), list(dev["sentence2"]), truncation=True, max_length=args.max_seq_length)
    dev_enc = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    dev_labels = list(dev["label"])

    def metric(predictions, labels):
        return 100 * compute_glue_metrics("mrpc", predictions.cpu().numpy(), labels.cpu().numpy())["f1"]

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    counts = [int(n) or len(dev_labels) for n in args.time_samples.split(",")]
    work = tempfile.mkdtemp(prefix="onnx_runtime_bench_")
    rows, exports = [], {}

    def export(name, model, **kwargs):
        start = time.perf_counter()
        manifest = export_onnx(model, os.path.join(work, name), exporter=args.exporter, **kwargs)
        exports[name] = {"seconds": time.perf_counter() - start,
                         "check_max_abs_diff": manifest["check"]["max_abs_diff"]}
        print(f"exported {name} in {exports[name]['seconds']:.0f} s", flush=True)
        return os.path.join(work, name)

    # ---- text encoders
    dense = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=2, dtype=torch.float32).eval()
    pad = pad_moe_from(dense, dev_enc, tokenizer)
    text_models = {"dense MiniLM": dense, "PAD MoE (E=8, top-2, κ=0.5 neuron, finalised)": pad}
    folders = {name: export(f"text{i}", model) for i, (name, model) in enumerate(text_models.items())}
    for batch_size, count in zip(batch_sizes, counts):
        data = text_batches(dev_enc, count, batch_size, tokenizer)
        for name, model in text_models.items():
            session = ort_session(os.path.join(folders[name], "model.onnx"), args.threads)
            timed = time_interleaved({"torch": torch_runner(model, data), "onnxruntime": ort_runner(session, data)},
                                     args.repeats)
            rows.append({"model": name, "batch_size": batch_size, "examples": count, "torch_s": timed["torch"],
                         "onnxruntime_s": timed["onnxruntime"]})
            print(json.dumps(rows[-1]), flush=True)

    # ---- early exit
    model, early = early_exit_model(args, tokenizer, raw, dev_enc, dev_labels, metric)
    folder = export("early_exit", model)
    agreement = []
    for batch_size, count in zip(batch_sizes, counts):
        data = text_batches(dev_enc, count, batch_size, tokenizer)
        session = EarlyExitSession(folder, threads=args.threads)
        thresholds = model.config.exit_thresholds

        def torch_full(data=data):
            model.config.exit_thresholds = None
            try:
                return torch_runner(model, data)()
            finally:
                model.config.exit_thresholds = thresholds

        timed = time_interleaved({
            "torch full": torch_full,
            "torch dynamic": torch_runner(model, data),
            "onnxruntime full": lambda data=data: [session.run_all_exits(**b) for b, _ in data],
            "onnxruntime dynamic": lambda data=data: [session.run(**b) for b, _ in data],
        }, args.repeats)
        torch_out = torch_runner(model, data)()
        ort_out = [session.run(**b) for b, _ in data]
        same_exit = sum(int((o.exit_layer == t.exit_layer.numpy()).sum()) for o, t in zip(ort_out, torch_out))
        same_label = sum(int((o.logits.argmax(-1) == t.logits.argmax(-1).numpy()).sum())
                         for o, t in zip(ort_out, torch_out))
        cost = float(np.concatenate([o.exit_layer for o in ort_out]).mean() / model.config.num_backbone_layers)
        agreement.append({"batch_size": batch_size, "examples": count, "same_exit_layer": same_exit,
                          "same_prediction": same_label, "dynamic_cost": cost})
        for mode in ("full", "dynamic"):
            rows.append({"model": f"early exit, {mode}", "batch_size": batch_size, "examples": count,
                         "torch_s": timed[f"torch {mode}"], "onnxruntime_s": timed[f"onnxruntime {mode}"]})
            print(json.dumps(rows[-1]), flush=True)
        print(json.dumps(agreement[-1]), flush=True)

    # ---- CNNs
    static, dynamic = resnet_pair(args)
    cnn = {"static ResNet-18 shape": static, "DynamicResNet (DyConv K=4)": dynamic}
    cnn_folders = {name: export(f"cnn{i}", m) for i, (name, m) in enumerate(cnn.items())}
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, generator=generator)
    for batch_size in batch_sizes:
        chunks = [images[i:i + batch_size] for i in range(0, args.images, batch_size)]
        for name, m in cnn.items():
            session = ort_session(os.path.join(cnn_folders[name], "model.onnx"), args.threads)

            @torch.no_grad()
            def run_torch(m=m, chunks=chunks):
                return [m(pixel_values=c) for c in chunks]

            def run_ort(session=session, chunks=chunks):
                return [session.run(None, {"pixel_values": c.numpy()}) for c in chunks]

            timed = time_interleaved({"torch": run_torch, "onnxruntime": run_ort}, args.repeats)
            rows.append({"model": name, "batch_size": batch_size, "examples": args.images, "torch_s": timed["torch"],
                         "onnxruntime_s": timed["onnxruntime"]})
            print(json.dumps(rows[-1]), flush=True)

    for row in rows:
        row["torch_over_onnxruntime"] = row["torch_s"] / row["onnxruntime_s"]
    result = {
        "benchmark": "onnx_runtime",
        "machine": f"{cpu_model()}, {os.cpu_count()} cores visible",
        "threads": args.threads,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "exporter": args.exporter,
        "command": "".join(f"{k}={os.environ[k]} " for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ)
                   + "python bench/onnx_runtime.py " + " ".join(sys.argv[1:]),
        "max_seq_length": args.max_seq_length,
        "exports": exports,
        "early_exit": {**early, "agreement": agreement},
        "rows": rows,
        "wall_s": time.perf_counter() - started,
    }
    md = [f"# ONNX Runtime vs PyTorch ({args.machine})\n\n",
          f"Machine: {result['machine']}; {args.threads} threads in both runtimes; torch {torch.__version__}, "
          f"onnxruntime {result['onnxruntime']}; graphs from the {args.exporter} exporter. Load average (1, 5, 15 min) "
          f"before {tuple(round(x, 1) for x in load_before)}, after "
          f"{tuple(round(x, 1) for x in result['load_average_after'])} — a shared machine: compare the ratios, "
          "which come from interleaved runs, not the absolute times.\n\n",
          f"Text: MRPC dev sentence pairs (max length {args.max_seq_length}, dynamic padding, dataset order). "
          f"Images: {args.images} random {args.image_size}×{args.image_size} images. Median of {args.repeats} "
          "interleaved passes (after 2 warm-up passes each).\n\n",
          "| model | batch | examples | PyTorch s | onnxruntime s | PyTorch / onnxruntime |\n",
          "|---|---|---|---|---|---|\n"]
    for row in rows:
        md.append(f"| {row['model']} | {row['batch_size']} | {row['examples']} | {row['torch_s']:.3f} | "
                  f"{row['onnxruntime_s']:.3f} | **{row['torch_over_onnxruntime']:.2f}x** |\n")
    chosen = early["chosen"]
    md.append(f"\nEarly exit: all-MiniLM-L6-v2 + 6 boosted exits (mean pooling) fine-tuned on "
              f"{args.train_samples} MRPC train rows for {args.epochs} epoch (bench/early_exit.py's procedure; no "
              f"tuned checkpoint is stored in the repository), thresholds calibrated on the {args.calib_samples} "
              f"following train rows; anytime dev F1 per exit "
              + " / ".join(f"{a:.1f}" for a in early["anytime_dev_f1"])
              + f"; chosen budget {chosen['budget']} (dev F1 {chosen['dev_metric']:.2f}, cost "
              f"{chosen['dev_cost']:.3f}).\n\n")
    for a in agreement:
        md.append(f"- batch {a['batch_size']}: onnxruntime's dynamic mode took the same exit as PyTorch's for "
                  f"{a['same_exit_layer']}/{a['examples']} examples and predicted the same label for "
                  f"{a['same_prediction']}/{a['examples']}; measured cost {a['dynamic_cost']:.3f}.\n")
    md.append("\nPAD MoE: upcycled from MiniLM with an untrained router (speed only). DynamicResNet runs the grouped "
              "convolution in PyTorch and the im2col form (the one that exports) in onnxruntime.\n\n")
    md.append(f"Command: `{result['command']}` ({result['wall_s']:.0f} s).\n")
    stem = write_results("onnx_runtime", args.machine, result, "".join(md))
    print(f"wrote {stem}.json / .md", flush=True)


if __name__ == "__main__":
    main()
