"""run_glue.py variants of slimmable networks (docs/slim.md):

    --variant slim         one slimmable MiniLM (FFN channels and heads ordered by importance, every width a prefix),
                           trained with the sandwich rule and in-place distillation (``SlimmableTrainer``); after
                           training it is evaluated at every width of ``--slim_eval_widths`` and, with
                           ``--slim_search``, searched (AutoSlim) on the carved split
    --variant slim_alone   the same MiniLM ordered the same way, cut to one width ``--slim_width`` and fine-tuned alone
                           with the plain Trainer (the baseline a slimmable model must match at each width)

    python examples/glue/run_glue.py --task mrpc --variant slim --carve_validation 0.1 --save_model false
    python examples/glue/run_glue.py --task mrpc --variant slim_alone --slim_width 0.5 --carve_validation 0.1

Both variants train on the training rows that ``--carve_validation`` leaves and report, in ``after_training``, the
task's dev split (read again here, because run_glue evaluates only the carved rows then) once per width, beside
the carved rows' metric; the AutoSlim search and any other choice read only the carved rows. Every width records
its active parameters (the sliced weights) and its analytic FLOPs at the dev set's mean length
(:func:`hf_dynamic.core.resources.bert_forward_flops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

VARIANTS = ("slim", "slim_alone")


def _widths(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or any(not 0 < v <= 1 for v in values):
        raise ValueError(f"--slim_eval_widths must be comma-separated multipliers in (0, 1], got {text!r}")
    return values


@dataclass
class Arguments:
    slim_importance: str = field(default="magnitude", metadata={
        "help": "Order of channels and heads: magnitude (data-free) or taylor (first-order, on training batches)"})
    slim_min_width: float = field(default=0.25, metadata={"help": "Smallest width of the sandwich rule (slim)"})
    slim_num_random_widths: int = field(default=2, metadata={"help": "Random widths per sandwich step (slim)"})
    slim_temperature: float = field(default=1.0, metadata={"help": "In-place distillation temperature (slim)"})
    slim_width: float = field(default=1.0, metadata={"help": "The one width trained alone (slim_alone)"})
    slim_eval_widths: str = field(default="1.0,0.75,0.5,0.25", metadata={
        "help": "Comma-separated widths the slimmable model is evaluated at (slim)"})
    slim_calibration_batches: int = field(default=8, metadata={
        "help": "Training batches for --slim_importance taylor"})

    def __post_init__(self):
        if self.slim_importance not in ("magnitude", "taylor"):
            raise ValueError(f"--slim_importance must be magnitude or taylor, got {self.slim_importance!r}")
        if not 0 < self.slim_width <= 1:
            raise ValueError(f"--slim_width must be in (0, 1], got {self.slim_width!r}")
        _widths(self.slim_eval_widths)


def _calibration_batches(script_args, args, tokenizer_path, task, num_labels):
    """``args.slim_calibration_batches`` batches of 32 training rows (with labels), for the Taylor importance."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hf_dynamic.data.glue import GLUE_TASKS, load_glue

    info = GLUE_TASKS[task]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    train = load_glue(task, data_dir=script_args.data_dir)["train"]
    rows = train.shuffle(seed=0).select(range(min(len(train), 32 * args.slim_calibration_batches)))
    collator = DataCollatorWithPadding(tokenizer)
    texts = [rows[c] for c in info.text_columns]
    encoded = tokenizer(*texts, truncation=True, max_length=script_args.max_seq_length)
    features = [{**{k: v[i] for k, v in encoded.items()}, "labels": rows["label"][i]} for i in range(len(rows))]
    return [collator(features[i:i + 32]) for i in range(0, len(features), 32)]


def build_model(variant, script_args, args, num_labels, problem_type):
    """The packaged MiniLM classifier made slimmable (ordered by ``--slim_importance``); ``slim_alone`` is then set
    to its one width for good (the weights beyond the kept prefix take no part in training or inference)."""
    from transformers import AutoModelForSequenceClassification

    from hf_dynamic import slim
    from hf_dynamic.assets import minilm_path

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    path = str(script_args.model_name_or_path or minilm_path())
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                               problem_type=problem_type, dtype=torch.float32)
    batches = None
    if args.slim_importance == "taylor":
        batches = _calibration_batches(script_args, args, path, script_args.task, num_labels)
    slim.make_slimmable(model, importance=args.slim_importance, calibration_batches=batches)
    if variant == "slim_alone":
        slim.set_width(model, args.slim_width)
    return model


def make_callbacks(variant, script_args, args):
    return []


def trainer_class_and_kwargs(variant, script_args, args):
    from transformers import Trainer

    from hf_dynamic.slim import SlimmableTrainer

    if variant == "slim":
        return SlimmableTrainer, {"num_random_widths": args.slim_num_random_widths,
                                  "min_width": args.slim_min_width, "temperature": args.slim_temperature}
    return Trainer, {}


def dev_datasets(script_args, trainer, task, eval_datasets):
    """The task's dev split(s), tokenised as run_glue does (already in ``eval_datasets`` unless the run carved)."""
    from datasets import DatasetDict

    from hf_dynamic.data.glue import GLUE_TASKS, load_glue
    from run_glue import tokenize_glue  # the script beside this module (on sys.path when run_glue runs)

    info = GLUE_TASKS[task]
    if all(s in eval_datasets for s in info.validation_splits):
        return {s: eval_datasets[s] for s in info.validation_splits}
    raw = load_glue(task, data_dir=script_args.data_dir)
    dev = DatasetDict({s: raw[s] for s in info.validation_splits if s in raw})
    if script_args.max_eval_samples is not None:
        dev = DatasetDict({s: d.select(range(min(script_args.max_eval_samples, len(d)))) for s, d in dev.items()})
    tokenized = tokenize_glue(dev, info, trainer.processing_class, script_args.max_seq_length)
    return dict(tokenized)


def predict_metrics(trainer, dataset, split) -> dict:
    """The task metrics of ``trainer.model`` (at its current width) on ``dataset``."""
    output = trainer.predict(dataset, metric_key_prefix=split)
    return {k.removeprefix(f"{split}_"): v for k, v in output.metrics.items()
            if not k.endswith(("runtime", "per_second", "samples_per_second", "steps_per_second"))}


def mean_length(dataset) -> float:
    """Mean number of tokens per row (the sequence length the FLOPs are counted at)."""
    return float(np.mean([len(ids) for ids in dataset["input_ids"]]))


def encoder_flops(config, counts, seq_len: float) -> float:
    """Analytic FLOPs of the classifier at per-layer ``(head groups, FFN channels)`` ``counts`` (None: full width)
    over one row of ``seq_len`` tokens (:func:`hf_dynamic.core.resources.bert_forward_flops`)."""
    from hf_dynamic.core.resources import bert_forward_flops

    layers = config.num_hidden_layers
    heads = [g for g, _ in counts] if counts else config.num_attention_heads
    channels = [c for _, c in counts] if counts else config.intermediate_size
    return float(bert_forward_flops(hidden_size=config.hidden_size,
                                    head_dim=config.hidden_size // config.num_attention_heads,
                                    num_attention_heads=heads, intermediate_size=channels, num_layers=layers,
                                    seq_len=seq_len, pooler=True, num_labels=config.num_labels))


def width_record(trainer, datasets: dict, widths, seq_len: float) -> dict:
    """Metrics on every split, active parameters and FLOPs of ``trainer.model`` at ``widths``."""
    from hf_dynamic import slim

    model = trainer.model
    with slim.width(model, widths) as counts:
        record = {split: predict_metrics(trainer, dataset, split) for split, dataset in datasets.items()}
        active = sum(t.numel() for t in slim.sliced_state_dict(model, widths).values())
    flops = encoder_flops(model.config, counts, seq_len)
    full = encoder_flops(model.config, None, seq_len)
    record.update({"units": [list(c) for c in counts], "active_parameters": int(active),
                   "flops": float(flops), "flop_fraction": float(flops / full)})
    return record


def after_training(variant, script_args, args, trainer, eval_datasets, task):
    dev = dev_datasets(script_args, trainer, task, eval_datasets)
    datasets = {**eval_datasets, **dev}
    seq_len = mean_length(next(iter(dev.values())))
    if variant == "slim_alone":
        return {"slim": {"width": args.slim_width, "importance": args.slim_importance, "seq_len": seq_len,
                         "widths": {str(args.slim_width): width_record(trainer, datasets, args.slim_width, seq_len)}}}
    out = {"slim": {"importance": args.slim_importance, "min_width": args.slim_min_width,
                    "num_random_widths": args.slim_num_random_widths, "temperature": args.slim_temperature,
                    "seq_len": seq_len, "widths": {}}}
    for w in _widths(args.slim_eval_widths):
        out["slim"]["widths"][str(w)] = width_record(trainer, datasets, w, seq_len)
    return out
