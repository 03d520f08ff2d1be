#!/usr/bin/env python
"""Fine-tune a sequence-classification model on a GLUE task with the Hugging Face Trainer.

    python examples/glue/run_glue.py --task mrpc                       # dense all-MiniLM-L6-v2 on MRPC
    python examples/glue/run_glue.py --task rte --variant pad_moe ...  # another model variant

Every `transformers.TrainingArguments` flag is accepted; the defaults below are the dense MiniLM recipe (AdamW,
linear schedule, 6 % warm-up, batch 32, max length 128). The dev metrics of the final model are printed and
written to `<output_dir>/<results_file>` as JSON. The final model is saved into `<output_dir>` (safetensors, the
tokenizer, the task's label names in `id2label`, and a model card `README.md`), so it loads with

    pipeline("text-classification", model="<output_dir>")       # after `import hf_dynamic`

(`--save_model false` skips saving.)

Recipe choice without touching dev: `--carve_validation 0.1 --carve_seed 0` removes a fixed, label-stratified 10 % of
the task's training rows (:func:`carve_split`: the same rows for every variant and training seed, since they depend
only on the fraction, the carve seed and the labels), trains on the rest and evaluates on the carved rows, reported
as the split `carved`; the dev set is not evaluated. The run's `eval_results.json` records the carve (fraction,
seed, row counts and a hash of the carved row indices). `--max_train_samples` / `--max_eval_samples` then cut the
remaining training rows / the carved rows.

Variants other than `dense` live in `variant_*.py` modules beside this script; each provides `VARIANTS`, an
`Arguments` dataclass (its own flags), `build_model`, `make_callbacks` and `after_training`, and optionally
`trainer_class_and_kwargs` (a Trainer subclass and its extra keyword arguments).
"""

import hashlib
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if not torch.cuda.is_available():
    # DeepSpeed (installed with the dev extra) is imported by accelerate when present and warns that it "was unable
    # to detect" an accelerator; naming the CPU (its documented DS_ACCELERATOR) says the same without the warning.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import hf_dynamic  # noqa: E402  (registers hf_dynamic's model types with the Auto classes)
from hf_dynamic.sharing import HubSharingMixin, model_card as model_card_of  # noqa: E402

logger = logging.getLogger("run_glue")

# Modules beside this script that provide further variants (see the module docstring).
VARIANT_MODULES = ("variant_pad", "variant_exit", "variant_pemn", "variant_slim")


def load_variant_modules():
    """Import the variant modules that are present; map each variant name to its module."""
    modules, by_variant = [], {}
    for name in VARIANT_MODULES:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
        if not os.path.exists(path):
            continue
        module = importlib.import_module(name)
        modules.append(module)
        for variant in module.VARIANTS:
            by_variant[variant] = module
    return modules, by_variant


@dataclass
class ScriptArguments:
    task: str = field(default="mrpc", metadata={"help": "GLUE task, named as on the Hub: " + ", ".join(
        ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"])})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint folder or Hub name (default: the packaged all-MiniLM-L6-v2)"})
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder holding the official GLUE task folders (default: "
                                        "$HF_DYNAMIC_GLUE_DIR, then ../shared/data/glue, then the Hub)"})
    variant: str = field(default="dense", metadata={"help": "dense, or a variant of a variant_*.py module"})
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens"})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N dev rows"})
    carve_validation: float | None = field(default=None, metadata={
        "help": "Fraction in (0, 1) of the training rows to carve out (label-stratified) and evaluate on instead of "
                "dev; the rest is trained on (see carve_split)"})
    carve_seed: int = field(default=0, metadata={"help": "Seed of the carved rows (independent of --seed)"})
    results_file: str = field(default="eval_results.json", metadata={"help": "JSON written in output_dir"})
    save_model: bool = field(default=True, metadata={
        "help": "Save the final model, tokenizer and a model card into output_dir (loadable with pipeline)"})


@dataclass
class GlueTrainingArguments(TrainingArguments):
    """TrainingArguments with the GLUE recipe's defaults (every field stays overridable)."""

    # A template, filled after parsing (TrainingArguments turns a None default into "trainer_output").
    output_dir: str = field(default="outputs/glue/{task}-{variant}-s{seed}",
                            metadata={"help": "Output folder; {task}, {variant} and {seed} are filled in"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Training epochs"})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device"})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device"})
    warmup_steps: float = field(default=0.06, metadata={"help": "Warm-up steps (< 1: fraction of all steps)"})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing during training"})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps"})
    # Pinned memory only helps when batches go to an accelerator; on a CPU-only machine torch warns about it.
    dataloader_pin_memory: bool = field(default=torch.cuda.is_available(),
                                        metadata={"help": "Pin data-loader memory (default: when CUDA is present)"})


def parse_args(argv=None):
    modules, by_variant = load_variant_modules()
    dataclasses_ = [ScriptArguments, GlueTrainingArguments] + [m.Arguments for m in modules]
    parser = HfArgumentParser(dataclasses_)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    script_args, training_args = parsed[0], parsed[1]
    variant_args = {m.__name__: a for m, a in zip(modules, parsed[2:])}
    if script_args.variant != "dense" and script_args.variant not in by_variant:
        raise ValueError(f"--variant {script_args.variant!r} is unknown; choose from "
                         f"{['dense', *sorted(by_variant)]}")
    if script_args.carve_validation is not None and not 0 < script_args.carve_validation < 1:
        raise ValueError(f"--carve_validation must be a fraction in (0, 1), got {script_args.carve_validation!r}")
    try:
        training_args.output_dir = training_args.output_dir.format(
            task=script_args.task, variant=script_args.variant, seed=training_args.seed)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"--output_dir {training_args.output_dir!r}: only {{task}}, {{variant}} and {{seed}} may "
                         f"be filled in ({error!r})") from None
    return script_args, training_args, by_variant, variant_args


CARVED_SPLIT = "carved"


def carve_split(labels, fraction: float, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Split the row indices ``0 … len(labels) - 1`` into (kept, carved) sorted index arrays, ``carved`` holding
    ``ceil(fraction · n)`` rows (scikit-learn's ``train_test_split``, ``random_state=seed``), stratified by label so
    each class keeps its share (pass ``stratify=False`` for a regression target). The result depends only on the
    labels, ``fraction`` and ``seed``: every variant and training seed gets the same rows."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"carve_split: fraction must be in (0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    kept, carved = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed,
                                    stratify=labels if stratify else None)
    return np.sort(kept), np.sort(carved)


def carve_raw(raw, task_info, fraction: float, seed: int) -> dict:
    """Replace ``raw``'s validation splits by the carved training rows (:func:`carve_split`) and its train split by
    the rest, in place; return the record of the carve for the results file."""
    kept, carved = carve_split(raw["train"]["label"], fraction, seed, stratify=not task_info.is_regression)
    for split in list(raw):
        if split != "train":
            del raw[split]
    raw[CARVED_SPLIT] = raw["train"].select(carved)
    raw["train"] = raw["train"].select(kept)
    return {"fraction": fraction, "seed": seed, "stratified": not task_info.is_regression,
            "num_train": len(kept), "num_carved": len(carved),
            "carved_rows_sha256": hashlib.sha256(carved.astype(np.int64).tobytes()).hexdigest()}


def tokenize_glue(raw, task_info, tokenizer, max_seq_length):
    """Tokenise the task's text column(s); keep `label` (renamed `labels` by the collator)."""
    columns = list(task_info.text_columns)

    def encode(batch):
        texts = [batch[c] for c in columns]
        return tokenizer(*texts, truncation=True, max_length=max_seq_length)

    remove = [c for c in raw[next(iter(raw))].column_names if c != "label"]
    return raw.map(encode, batched=True, remove_columns=remove, desc="tokenizing")


def main(argv=None):
    script_args, training_args, by_variant, variant_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    from hf_dynamic.data.glue import GLUE_TASKS, load_glue
    from hf_dynamic.data.metrics import glue_compute_metrics_fn

    if script_args.task not in GLUE_TASKS:
        raise ValueError(f"--task {script_args.task!r} is not a GLUE task; choose from {sorted(GLUE_TASKS)}")
    task_info = GLUE_TASKS[script_args.task]
    model_path = str(script_args.model_name_or_path or hf_dynamic.minilm_path())

    raw = load_glue(script_args.task, data_dir=script_args.data_dir)
    if "train" not in raw:
        raise ValueError(f"task {script_args.task!r} has no train split in the data directory")
    carve = None
    eval_splits = task_info.validation_splits
    if script_args.carve_validation is not None:  # before any row cut: the carved rows never depend on it
        carve = carve_raw(raw, task_info, script_args.carve_validation, script_args.carve_seed)
        eval_splits = (CARVED_SPLIT,)
    if script_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(script_args.max_train_samples, len(raw["train"]))))
    for split in eval_splits:
        if script_args.max_eval_samples is not None and split in raw:
            raw[split] = raw[split].select(range(min(script_args.max_eval_samples, len(raw[split]))))

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenized = tokenize_glue(raw, task_info, tokenizer, script_args.max_seq_length)
    eval_datasets = {s: tokenized[s] for s in eval_splits if s in tokenized}
    if not eval_datasets:
        raise ValueError(f"task {script_args.task!r} has no validation split in the data directory")

    problem_type = "regression" if task_info.is_regression else "single_label_classification"
    module = by_variant.get(script_args.variant)
    if module is None:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=task_info.num_labels, problem_type=problem_type, dtype=torch.float32)
        callbacks = []
    else:
        args = variant_args[module.__name__]
        model = module.build_model(script_args.variant, script_args, args, task_info.num_labels, problem_type)
        callbacks = module.make_callbacks(script_args.variant, script_args, args)
    trainer_cls, trainer_kwargs = Trainer, {}
    if module is not None and hasattr(module, "trainer_class_and_kwargs"):  # optional: a Trainer subclass
        trainer_cls, trainer_kwargs = module.trainer_class_and_kwargs(script_args.variant, script_args,
                                                                      variant_args[module.__name__])
    set_label_names(model.config, task_info)

    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=eval_datasets,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=glue_compute_metrics_fn(script_args.task),
        callbacks=callbacks,
        **trainer_kwargs,
    )
    train_result = trainer.train()

    results = {
        "task": script_args.task,
        "variant": script_args.variant,
        "model_name_or_path": model_path,
        "seed": training_args.seed,
        "learning_rate": training_args.learning_rate,
        "num_train_epochs": training_args.num_train_epochs,
        "num_parameters": trainer.model.num_parameters(),
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "metrics": {},
    }
    if carve is not None:
        results["carve"] = carve
    for split, dataset in eval_datasets.items():
        output = trainer.predict(dataset, metric_key_prefix=split)
        results["metrics"][split] = {k.removeprefix(f"{split}_"): v for k, v in output.metrics.items()}
    if module is not None:
        results.update(module.after_training(
            script_args.variant, script_args, variant_args[module.__name__], trainer, eval_datasets,
            script_args.task) or {})

    if script_args.save_model:
        trainer.save_model(training_args.output_dir)  # safetensors + config (label names) + tokenizer
    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        path = os.path.join(training_args.output_dir, script_args.results_file)
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        if script_args.save_model:
            with open(os.path.join(training_args.output_dir, "README.md"), "w") as f:
                f.write(model_card(results, script_args, training_args, argv, model=trainer.model))
        print(json.dumps({"task": script_args.task, "variant": script_args.variant, **{
            split: {k: round(v, 4) for k, v in m.items() if isinstance(v, float) and not k.endswith(("runtime",
                    "per_second"))} for split, m in results["metrics"].items()}}, indent=2))
        logger.info("results written to %s", path)
        if script_args.save_model:
            print(f"Model saved to {training_args.output_dir}; load it with\n"
                  f"    import hf_dynamic\n    from transformers import pipeline\n"
                  f"    classifier = pipeline('text-classification', model={training_args.output_dir!r})")
    return results


def set_label_names(config, task_info) -> None:
    """Give the config the task's label names (``id2label``/``label2id``) instead of ``LABEL_0``…; regression
    tasks keep one unnamed output."""
    if task_info.is_regression:
        return
    names = list(task_info.label_names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}


def model_card(results: dict, script_args, training_args, argv=None, model=None) -> str:
    """A model card (``README.md``) for the saved model: what it is, how it was trained, the measured dev metrics
    and how to load it. For an hf_dynamic model type it is the library's card (``hf_dynamic.sharing.model_card``:
    the method, the config, loading with and without hf_dynamic, the metrics of ``eval_results.json``) with the
    training run added; a dense model gets this script's own card."""
    command = " ".join(["python examples/glue/run_glue.py", *(sys.argv[1:] if argv is None else argv)])
    if isinstance(model, HubSharingMixin):
        details = (f"Fine-tuned from `{results['model_name_or_path']}` on GLUE {results['task'].upper()} with "
                   f"`examples/glue/run_glue.py` of hf_dynamic (variant `{results['variant']}`, seed "
                   f"{results['seed']}, learning rate {results['learning_rate']}, {results['num_train_epochs']} "
                   f"epochs, max length {script_args.max_seq_length}); {results['num_parameters']:,} parameters.\n\n"
                   f"Command: `{command}`")
        return model_card_of(model.config, training_args.output_dir, details=details,
                             title=f"{results['variant']} on GLUE {results['task'].upper()}",
                             tags=(results["variant"], "glue", results["task"]), pipeline_tag="text-classification")
    metrics = "\n".join(
        f"| {split} | " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()
                                    if isinstance(v, float) and not k.endswith(("runtime", "per_second")))
        + " |" for split, m in results["metrics"].items())
    return f"""---
library_name: transformers
tags: [hf_dynamic, {results["variant"]}, glue, {results["task"]}]
datasets: [nyu-mll/glue]
pipeline_tag: text-classification
---

# {results["variant"]} on GLUE {results["task"].upper()}

Fine-tuned from `{results["model_name_or_path"]}` with `examples/glue/run_glue.py` of
[hf_dynamic](https://pypi.org/project/hf-dynamic/) (variant `{results["variant"]}`, seed {results["seed"]},
learning rate {results["learning_rate"]}, {results["num_train_epochs"]} epochs, max length
{script_args.max_seq_length}); {results["num_parameters"]:,} parameters.

| dev split | metrics |
|---|---|
{metrics}

Command: `{command}`

## Use

```python
import hf_dynamic  # registers hf_dynamic's model types with the Auto classes
from transformers import pipeline

classifier = pipeline("text-classification", model="{training_args.output_dir}")
print(classifier({{"text": "first sentence", "text_pair": "second sentence"}}))
```
"""


if __name__ == "__main__":
    main()
