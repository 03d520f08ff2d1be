"""GLUE variants with early exits (docs/boost.md), for run_glue.py:

    --variant boosted_exit   BoostNet: boosted exits F_n = t·F_{n-1} + f_n, trained with stop-gradient and
                             gradient rescaling
    --variant joint_exit     the jointly trained multi-exit baseline (DeeBERT-style): each exit trained on its own
                             prediction f_n, no rescaling (unless --exit_gradient_rescale true)

    python examples/glue/run_glue.py --task sst2 --variant boosted_exit --seed 1 --learning_rate 5e-5 \\
        --num_train_epochs 3 --output_dir outputs/glue/sst2-boosted_exit-s1

After training, ``after_training`` writes into the output dir, for each dev split:
- ``exit_anytime_<split>.json``: the dev metric of every exit (anytime mode);
- ``exit_curve_<split>.json`` / ``.png``: metric vs *measured* cost (layers executed / total, with real early exit)
  over a sweep of budgets, thresholds calibrated by 2-fold cross-calibration on the split (calibrate on one half,
  measure on the other, and the other way round; classification tasks only);
and returns both in the results JSON under ``exits``.
"""

import json
import os
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig

VARIANTS = ("boosted_exit", "joint_exit")


@dataclass
class Arguments:
    exit_layers: str | None = field(
        default=None, metadata={"help": "Comma-separated 1-based backbone layers carrying an exit (default: all)"})
    exit_ensemble_temperature: float = field(
        default=0.5, metadata={"help": "t of F_n = t·F_{n-1} + f_n (boosted_exit)"})
    exit_gradient_rescale: bool | None = field(
        default=None, metadata={"help": "Gradient rescaling 1/(N-n+1) (default: on for boosted_exit, off for "
                                        "joint_exit)"})
    exit_criterion: str = field(
        default="confidence", metadata={"help": "confidence | entropy (budget curve); patience needs "
                                                "--exit_patience"})
    exit_patience: int | None = field(default=None, metadata={"help": "PABEE patience (exit_criterion=patience)"})
    exit_pooling: str = field(
        default="cls", metadata={"help": "cls (first token, BERT/DeeBERT) | mean (masked mean, as MiniLM was "
                                         "trained to pool)"})
    exit_budgets: str | None = field(
        default=None, metadata={"help": "Comma-separated budgets in (0, 1] for the accuracy-vs-cost curve "
                                        "(default: 11 points from the first exit's cost to 1)"})
    exit_save_model: bool = field(
        default=False, metadata={"help": "Save the trained model (safetensors) into <output_dir>/model"})


def _parse_list(text, cast):
    return None if text is None else [cast(x) for x in text.split(",") if x.strip()]


def build_model(variant, script_args, args, num_labels, problem_type):
    from hf_dynamic.assets import minilm_path
    from hf_dynamic.models.boosted_early_exit import (
        BoostedEarlyExitConfig,
        BoostedEarlyExitForSequenceClassification,
    )

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    path = script_args.model_name_or_path or minilm_path()
    rescale = args.exit_gradient_rescale if args.exit_gradient_rescale is not None else variant == "boosted_exit"
    fields = {
        "boosting": variant == "boosted_exit",
        "ensemble_temperature": args.exit_ensemble_temperature,
        "gradient_rescale": rescale,
        "exit_criterion": args.exit_criterion,
        "exit_patience": args.exit_patience,
        "problem_type": problem_type,
    }
    head_fields = {"exit_pooling": args.exit_pooling}
    if AutoConfig.from_pretrained(path).model_type == BoostedEarlyExitConfig.model_type:
        # an already boosted checkpoint: keep its exits, update the training fields
        model = BoostedEarlyExitForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        for key, value in fields.items():
            setattr(model.config, key, value)
        model.config.check_exit_setup()
        return model
    return BoostedEarlyExitForSequenceClassification.from_backbone(
        path, exit_layers=_parse_list(args.exit_layers, int), num_labels=num_labels, **fields, **head_fields)


def make_callbacks(variant, script_args, args):
    return []


def _halves(n, seed):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 2], order[n // 2:]


def exit_results(model, dataloader_fn, dataset, task, budgets=None, seed=0):
    """Anytime per-exit metrics and the 2-fold cross-calibrated metric-vs-measured-cost curve on ``dataset``.

    ``dataloader_fn(dataset)`` builds a DataLoader (e.g. ``trainer.get_eval_dataloader``). Returns
    ``(anytime, curve)``; ``curve`` is None for regression tasks or the patience criterion.
    """
    from hf_dynamic.boost.calibration import calibrate_from_logits, collect_exit_logits, exit_costs, measure_dynamic
    from hf_dynamic.data.metrics import compute_glue_metrics

    config = model.config
    logits, labels = collect_exit_logits(model, dataloader_fn(dataset))
    total = config.num_backbone_layers
    anytime = []
    for k, layer in enumerate(config.exit_layers):
        predictions = logits[:, k, 0] if config.is_regression else logits[:, k].argmax(-1)
        anytime.append({"exit_layer": layer, "cost": layer / total,
                        **compute_glue_metrics(task, predictions.numpy(), labels.numpy())})
    if config.is_regression or config.exit_criterion == "patience":
        return anytime, None

    costs = exit_costs(config)
    budgets = budgets or torch.linspace(costs[0], 1.0, 11).tolist()
    folds = _halves(len(dataset), seed)
    saved = config.exit_thresholds
    curve = []
    try:
        for budget in sorted(budgets):
            predictions = torch.empty(len(dataset), dtype=torch.long)
            layers = torch.empty(len(dataset), dtype=torch.long)
            thresholds = []
            for calibrate_on, measure_on in ((folds[0], folds[1]), (folds[1], folds[0])):
                calibration = calibrate_from_logits(config, logits[calibrate_on], budget)
                config.exit_thresholds = calibration.thresholds
                measured = measure_dynamic(model, dataloader_fn(dataset.select(measure_on.tolist())),
                                           return_outputs=True)
                predictions[measure_on] = measured["predictions"]
                layers[measure_on] = measured["exit_layer"]
                thresholds.append(calibration.thresholds)
            metrics = compute_glue_metrics(task, predictions.numpy(), labels.numpy())
            curve.append({
                "budget": float(budget),
                "cost": float(layers.double().mean() / total),
                "metric": next(iter(metrics.values())),
                **metrics,
                "exit_counts": [int((layers == layer).sum()) for layer in config.exit_layers],
                "thresholds": thresholds,
            })
    finally:
        config.exit_thresholds = saved
    return anytime, curve


def after_training(variant, script_args, args, trainer, eval_datasets, task):
    from hf_dynamic.boost.calibration import plot_accuracy_cost_curve

    model = trainer.model
    out_dir = trainer.args.output_dir
    os.makedirs(out_dir, exist_ok=True)
    results = {"exits": {"exit_layers": list(model.config.exit_layers), "boosting": model.config.boosting,
                         "gradient_rescale": model.config.gradient_rescale,
                         "ensemble_temperature": model.config.ensemble_temperature,
                         "exit_pooling": model.config.exit_pooling}}
    budgets = _parse_list(args.exit_budgets, float)
    for split, dataset in eval_datasets.items():
        anytime, curve = exit_results(model, trainer.get_eval_dataloader, dataset, task, budgets,
                                      seed=trainer.args.seed)
        results["exits"][split] = {"anytime": anytime, "curve": curve}
        if trainer.is_world_process_zero():
            with open(os.path.join(out_dir, f"exit_anytime_{split}.json"), "w") as f:
                json.dump(anytime, f, indent=2)
            if curve is not None:
                with open(os.path.join(out_dir, f"exit_curve_{split}.json"), "w") as f:
                    json.dump(curve, f, indent=2)
                metric_name = [k for k in anytime[0] if k not in ("exit_layer", "cost")][0]
                plot_accuracy_cost_curve(
                    {f"{variant} (dynamic, measured)": curve},
                    os.path.join(out_dir, f"exit_curve_{split}.png"),
                    metric_name=metric_name,
                    anytime={f"{variant} (anytime exits)": ([a["cost"] for a in anytime],
                                                            [a[metric_name] for a in anytime])},
                    title=f"{task} {split}",
                )
    if args.exit_save_model and trainer.is_world_process_zero():
        trainer.save_model(os.path.join(out_dir, "model"))
    return results
