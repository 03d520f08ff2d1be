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
(:func:`hf_dynamic.slim.width_flops`). With ``--slim_search`` (slim) the AutoSlim search
(:func:`hf_dynamic.slim.autoslim_search`) scores candidates on the first ``--slim_search_rows`` carved rows by minus
their mean cross-entropy, shrinks down to the FLOPs of the smallest eval width once, and reads every larger budget
(the FLOP fraction of each uniform eval width) off the same trajectory; the searched widths are then evaluated on
dev and the carved rows like the uniform ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

VARIANTS = ("slim", "slim_alone")


def _numbers(text: str, flag: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def _widths(text: str) -> list[float]:
    values = _numbers(text, "--slim_eval_widths")
    if any(not 0 < v <= 1 for v in values):
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
    slim_search: bool = field(default=True, metadata={
        "help": "AutoSlim: search per-layer widths on the carved rows down to the FLOPs of the smallest eval width, "
                "then report dev at the FLOPs of every eval width (slim; needs --carve_validation)"})
    slim_search_rows: int = field(default=64, metadata={
        "help": "Carved rows the search scores each candidate on (its metric: minus the mean cross-entropy; "
                "~1,400 candidates down to width 0.25's FLOPs, so a few batches)"})
    slim_search_mlp_step: float = field(default=1 / 16, metadata={
        "help": "The search's FFN step, a fraction of the intermediate size (1/16 of MiniLM's 1536 channels costs "
                "about one of its 12 heads, so the greedy compares moves of similar cost, as AutoSlim's do)"})
    slim_gate: bool = field(default=True, metadata={
        "help": "Input-dependent width: train a gate over the eval widths on the training rows (weights frozen), "
                "choose λ and calibrate β on the carved rows to the FLOPs of each uniform eval width, report dev "
                "(slim; needs --carve_validation)"})
    slim_gate_cost_weights: str = field(default="0.1,0.3,1.0", metadata={
        "help": "λ grid of the gate's loss (the carved rows choose one per budget)"})
    slim_gate_train_rows: int = field(default=2048, metadata={
        "help": "Training rows whose per-width losses train the gate"})

    def __post_init__(self):
        if self.slim_importance not in ("magnitude", "taylor"):
            raise ValueError(f"--slim_importance must be magnitude or taylor, got {self.slim_importance!r}")
        if not 0 < self.slim_width <= 1:
            raise ValueError(f"--slim_width must be in (0, 1], got {self.slim_width!r}")
        _widths(self.slim_eval_widths)
        if self.slim_search_rows < 1:
            raise ValueError(f"--slim_search_rows must be >= 1, got {self.slim_search_rows!r}")
        if any(x < 0 for x in _numbers(self.slim_gate_cost_weights, "--slim_gate_cost_weights")):
            raise ValueError(f"--slim_gate_cost_weights must be numbers >= 0, got {self.slim_gate_cost_weights!r}")
        if self.slim_gate_train_rows < 1:
            raise ValueError(f"--slim_gate_train_rows must be >= 1, got {self.slim_gate_train_rows!r}")
        if not 0 < self.slim_search_mlp_step <= 1:
            raise ValueError(f"--slim_search_mlp_step must be in (0, 1], got {self.slim_search_mlp_step!r}")


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


def mean_length(dataset) -> int:
    """Mean number of tokens per row, rounded (the sequence length the FLOPs are counted at)."""
    return int(round(float(np.mean([len(ids) for ids in dataset["input_ids"]]))))


def width_record(trainer, datasets: dict, widths, seq_len: float) -> dict:
    """Metrics on every split, active parameters and FLOPs of ``trainer.model`` at ``widths``."""
    from hf_dynamic import slim

    model = trainer.model
    with slim.width(model, widths) as counts:
        record = {split: predict_metrics(trainer, dataset, split) for split, dataset in datasets.items()}
        active = sum(t.numel() for t in slim.sliced_state_dict(model, widths).values())
    flops = slim.width_flops(model, counts, seq_len=seq_len)
    full = slim.width_flops(model, slim.resolve_widths(model, 1.0), seq_len=seq_len)
    record.update({"units": [list(c) for c in counts], "active_parameters": int(active),
                   "flops": float(flops), "flop_fraction": float(flops / full)})
    return record


def search_batches(trainer, dataset, rows: int, batch_size: int = 64) -> list[dict]:
    """The first ``rows`` rows of ``dataset`` as padded model-input batches (with labels), collated once."""
    collate = trainer.data_collator
    features = [dataset[i] for i in range(min(rows, len(dataset)))]
    return [collate(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]


def negative_loss(batches):
    """``evaluate(model)`` for the search: minus the mean cross-entropy over ``batches`` (a smooth score where a
    few hundred rows give accuracy steps of a whole row)."""

    def evaluate(model) -> float:
        total, count = 0.0, 0
        with torch.inference_mode():
            for batch in batches:
                n = len(batch["labels"])
                total += float(model(**batch).loss) * n
                count += n
        return -total / count

    return evaluate


def search_record(trainer, args, carved, datasets, uniform: dict, seq_len: int) -> dict:
    """AutoSlim on ``carved`` down to the smallest uniform width's FLOPs; dev and carved metrics of the searched
    widths at the FLOP fraction of every uniform width in ``uniform`` (``{width: its width_record}``)."""
    from hf_dynamic import slim

    model = trainer.model
    batches = search_batches(trainer, carved, args.slim_search_rows)
    budgets = {w: rec["flop_fraction"] for w, rec in uniform.items() if w != 1.0}
    result = slim.autoslim_search(model, negative_loss(batches), min(budgets.values()),
                                  slim.FlopCost(seq_len=seq_len), mlp_step=args.slim_search_mlp_step)
    out = {"rows": min(args.slim_search_rows, len(carved)),
           "mlp_step": args.slim_search_mlp_step, "num_evaluations": result.num_evaluations,
           "trajectory": [{"layer": st.layer, "part": st.part, "cost_fraction": st.cost_fraction, "metric": st.metric}
                          for st in result.trajectory], "budgets": {}}
    for w, budget in budgets.items():
        step = result.step_at(budget)
        widths = slim.widths_from_counts(model, step.counts)
        out["budgets"][str(w)] = {"budget": budget, **width_record(trainer, datasets, widths, seq_len)}
    return out


def gate_record(trainer, args, train, carved, dev: dict, uniform: dict, seq_len: int, task: str) -> dict:
    """The input-dependent width (``slim.DynamicWidthModel``, ``docs/slim.md``): a linear gate after layer 1 over
    the eval widths, trained on the per-width losses of ``--slim_gate_train_rows`` training rows (weights frozen)
    for every λ of ``--slim_gate_cost_weights``; per budget (the FLOP fraction of each uniform eval width the gate
    can reach) β is calibrated on the carved rows and the λ with the lowest carved cross-entropy of the chosen
    widths wins; then dev runs through the grouped model once: metric, mean FLOP fraction (each row's chosen
    width's cost at the dev mean length) and how many rows took each width."""
    from hf_dynamic import slim
    from hf_dynamic.data.metrics import compute_glue_metrics

    model = trainer.model
    widths = tuple(sorted(uniform))
    gate_kwargs = {"widths": widths, "gate_layers": 1, "cost_seq_len": seq_len}
    dyn = slim.DynamicWidthModel(model, **gate_kwargs)
    rows = train.select(range(min(args.slim_gate_train_rows, len(train))))
    train_data = slim.collect_gate_data(dyn, trainer.get_eval_dataloader(rows))
    carved_data = slim.collect_gate_data(dyn, trainer.get_eval_dataloader(carved))
    costs = dyn.gate.costs.double()
    out = {"widths": list(widths), "gate_layers": 1, "train_rows": len(rows), "costs": costs.tolist(), "budgets": {}}
    for w, rec in uniform.items():
        budget = rec["flop_fraction"]
        if w == 1.0 or budget < float(costs[0]):
            continue
        best = None
        for lam in _numbers(args.slim_gate_cost_weights, "--slim_gate_cost_weights"):
            torch.manual_seed(trainer.args.seed)  # the same initial gate for every λ
            gate = slim.WidthGate(model.config.hidden_size, **gate_kwargs)
            dyn_lam = slim.DynamicWidthModel(model, gate=gate)
            slim.train_gate(gate, train_data, cost_weight=lam, seed=trainer.args.seed)
            calibration = slim.calibrate_gate(gate, carved_data.features, budget)
            with torch.no_grad():
                index = gate.choose(carved_data.features)
            carved_loss = float(carved_data.per_width_loss[torch.arange(len(index)), index].mean())
            if best is None or carved_loss < best[0]:
                best = (carved_loss, lam, dyn_lam, calibration)
        carved_loss, lam, dyn_lam, calibration = best
        dyn_lam.eval()
        predictions, labels, chosen = [], [], []
        split, dataset = next(iter(dev.items()))
        with torch.inference_mode():
            for batch in trainer.get_eval_dataloader(dataset):
                output = dyn_lam(**{k: v for k, v in batch.items() if k != "labels"})
                predictions.append(output.logits.argmax(-1))
                labels.append(batch["labels"])
                chosen.append(output.width_index)
        chosen = torch.cat(chosen)
        metrics = compute_glue_metrics(task, torch.cat(predictions).numpy(), torch.cat(labels).numpy())
        out["budgets"][str(w)] = {
            "budget": budget, "cost_weight": lam, "beta": calibration.beta, "carved_cost": calibration.calibration_cost,
            "carved_loss": carved_loss, split: metrics, "flop_fraction": float(costs[chosen].mean()),
            "width_counts": torch.bincount(chosen, minlength=len(widths)).tolist()}
    return out


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
    uniform = {w: width_record(trainer, datasets, w, seq_len) for w in _widths(args.slim_eval_widths)}
    out["slim"]["widths"] = {str(w): rec for w, rec in uniform.items()}
    if args.slim_search and "carved" in eval_datasets and len(uniform) > 1:
        out["slim"]["search"] = search_record(trainer, args, eval_datasets["carved"], datasets, uniform, seq_len)
    if args.slim_gate and "carved" in eval_datasets and len(uniform) > 1:
        out["slim"]["gate"] = gate_record(trainer, args, trainer.train_dataset, eval_datasets["carved"], dev, uniform,
                                          seq_len, task)
    return out
