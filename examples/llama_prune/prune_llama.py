#!/usr/bin/env python
"""Prune SmolLM2-135M (or any Llama checkpoint) with DMS and compare with structured-pruning baselines, in
resumable stages sized to a time budget (the protocol below; method: ``docs/dms.md``).

Rows (one target, e.g. ``--target 0.8`` = 80 % of the parameters; all pruned models at the parameter count of the
uniform DMS model, baselines matched within 1 %, and the same recovery budget):

- ``dense``: the unpruned model, evaluated on the same windows in the same run;
- ``DMS``: DMS search (``DMSTrainer`` + ``DMSCallback``, structure-only on the frozen model by default) exported as a
  stock ``LlamaForCausalLM``; ``DMS per-layer``: the non-uniform search exported as ``dms_llama``
  (``DMSLlamaForCausalLM.from_pruned``), with ``--dms_variants uniform per_layer``; before either export
  ``DMSPruner.meet_target`` snaps the keep ratios to counts at or just below the target (``--export_rule target``,
  the default; ``paper``: the paper's hard mask ``c' ≥ 1 − e``, which keeps ``floor(N·e) + 1`` elements per row and
  overshoots for coarse kinds such as SmolLM2's 3 KV groups; ``docs/dms.md``, "## Exact-target export");
  ``--search_seeds 1 2`` searches the per-layer variant once per seed (a row each);
- ``--baselines`` (``hf_dynamic.dms.baselines``, ``docs/dms.md`` "## Baselines"; calibration: the same
  ``--calibration_batches`` War and Peace batches for all): ``magnitude`` (L2), ``taylor`` (one-shot first-order
  Taylor, LLM-Pruner-style) and ``wanda_sp`` (structured Wanda) with uniform heads + MLP channels; ``flap`` (global
  ranking of standardised fluctuation scores, per-layer widths, bias compensation carried by ``dms_llama``'s
  ``output_proj_bias``); ``magnitude_dms`` / ``taylor_dms`` (the criterion on the first per-layer DMS search's
  structure: its keep counts, hidden channels and sub-blocks);
- every pruned model before recovery ("pruning only") and after ``--recovery_steps`` of recovery on War and
  Peace: ``--recovery_loss kd`` (default) distils from the dense model with ``hf_dynamic.DistillationTrainer``
  (``alpha · T²·KL + (1 − alpha) · next-token``, ``docs/distill.md``; ``--checkpoint_every N`` makes a killed
  recovery resume from its last Trainer checkpoint), ``ntp`` is the plain next-token loop of the earlier runs;
  ``--ablation_ntp`` adds the first per-layer DMS model recovered with the next-token loss only (same trainer and
  tokens). Evaluation: WikiText-2 test perplexity (``hf_dynamic.perplexity``) on the first ``--eval_windows``
  windows of ``--eval_window`` tokens of the tokenised test text (tokens ``[0, W·window)``, tokenised once as
  ``perplexity`` does); dense, the final DMS model (the better DMS variant) and the best baseline also on the
  full test set. Speed: every exported model and the dense one in the ``speed`` stage, each in a fresh subprocess.

Stages (each writes ``<output_dir>/stages/<stage>.json`` atomically, models as safetensors folders
``<output_dir>/<key>_pruned`` / ``<key>_model``; a re-run skips finished stages, a stage killed mid-way re-runs
from its start; ``<output_dir>/stages.log`` records start / done / skip)::

    plan → dense_eval → search_uniform, search_per_layer (or search_per_layer_s<seed>) → prune_<baseline>
    → eval_<m>_pruned, recover_<m>, eval_<m>_recovered (per pruned model m; the ablation after its source)
    → full_eval_dense, full_eval_final_dms, full_eval_best_baseline → speed

The search stages rerun from scratch when killed (they are sized to a few minutes each; DMSCallback has no
checkpoint resume yet). ``--stop_after STAGE`` stops after a stage; ``--plan`` (alias ``--time_step``) stops after
``plan``. ``results.json`` / ``results.md`` / ``search_trajectory.png`` are regenerated in ``--results_dir`` from
whatever stage files exist, after every finished stage (so they can be committed as a long run goes).

Sizing (``--budget_minutes``, default 120 on the CPU). The ``plan`` stage times, on the dense model at the chosen
batch × length: one evaluation window (inference), one search step (forward + backward + keep-ratio step) and one
recovery step (forward + backward + AdamW) and one teacher forward (what distillation adds to a recovery step),
each after a short warm-up, in wall seconds or, with ``--plan_clock cpu``, in this process's CPU seconds (on a
shared machine other jobs inflate the wall clock; use it with ``--threads 1``). It then charges the evaluations
(one-shot and recovered rows), the full test set evaluations, the speed stage and the calibration (pruned models
at ``target`` × the dense cost), picks the comparison windows (the first of ``--eval_window_choices``, default
64 / 32 / 16, 0 = the whole test set, that leaves half the budget to training), and splits the rest:
``--search_share`` (25 %) to the searches, the remainder to the recoveries, the same steps (and War and Peace
tokens, written to the plan) for every model.
Batch × length: 1 × 1024 on the CPU for search and recovery (1024 = the evaluation window, so the models train
at the length they are scored at; batch 1 because on 2 cores a step's cost is linear in its tokens, so more,
smaller steps give the ramp and the cosine schedule more updates for the same time), 8 × 1024 on a GPU. The
keep ratios' learning rate defaults to ``min(0.05, max(1e-2, 2 / search_steps))`` so that they can cross the
target ramp in a short search (the paper's 1e-2 for ≥ 200 steps; at most 0.05, as Adam moves a keep ratio by up to
its lr per step and a larger step overshoots the target). Every measured time, the choice and its reason are
written to ``plan.json`` and ``results.json``; explicit ``--max_search_steps`` / ``--recovery_steps`` /
``--eval_windows`` override the plan, ``--budget_minutes 0`` uses the fixed defaults (300 / 300 steps, full test
set), the paper-scale GPU recipe. The paper's fixed resource weight: ``--resource_weight_adapt 0``.

CPU runs (see README.md)::

    nice -n 10 python examples/llama_prune/prune_llama.py --device cpu --target 0.8 \\
        --dms_variants uniform per_layer --output_dir outputs/llama_prune/target_80 \\
        --results_dir examples/llama_prune/results/target_80
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "examples", "glue"))

from compare import machine_info, write_json_atomic  # noqa: E402  (examples/glue/compare.py: shared run records)

VARIANTS = {"uniform": ("dms", "DMS"), "per_layer": ("dms_per_layer", "DMS per-layer")}  # key, row name
# Baselines: (row name, uniform widths?, needs calibration activations?, needs DMS's per-layer structure?)
BASELINES = {
    "magnitude": ("magnitude", True, False, False),
    "taylor": ("taylor", True, False, False),
    "wanda_sp": ("Wanda-sp", True, True, False),
    "flap": ("FLAP", False, True, False),
    "magnitude_dms": ("magnitude on DMS structure", False, False, True),
    "taylor_dms": ("taylor on DMS structure", False, False, True),
}
# Settings added after runs were recorded, with the behaviour those runs had (a run_args.json without the key).
SETTINGS_ADDED_LATER = {"export_rule": "paper", "recovery_loss": "ntp", "kd_alpha": 0.5, "kd_temperature": 1.0,
                        "kd_hidden_weight": 0.0, "search_seeds": None, "ablation_ntp": False,
                        "eval_window_choices": [64, 32, 16], "checkpoint_every": 0,
                        "plan_clock": "wall", "gguf": []}
FIXED_SIZES = {"max_search_steps": 300, "recovery_steps": 300, "eval_windows": 0}  # --budget_minutes 0
DEVICE_BATCH = {"cpu": 1, "cuda": 8}
TIMING_KEYS = ("seconds", "search_s", "prune_s", "recovery_s", "finished")


class StopPipeline(Exception):
    """Raised after the ``--stop_after`` stage."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="Llama checkpoint folder (default: hf_dynamic.smollm2_path())")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--target", type=float, default=0.5, help="parameter fraction to keep, in (0, 1)")
    p.add_argument("--prune", nargs="+", default=["heads", "mlp", "hidden", "layers"])
    p.add_argument("--head_grouping", choices=["kv", "query"], default="kv")
    p.add_argument("--dms_variants", nargs="+", choices=list(VARIANTS), default=["uniform"],
                   help="uniform (stock LlamaForCausalLM) and/or per_layer (dms_llama) searches, each its own row")
    p.add_argument("--per_layer", action="store_true", help="= --dms_variants per_layer")
    p.add_argument("--search_mode", choices=["frozen", "joint"], default="frozen")
    p.add_argument("--max_search_steps", type=int, default=None, help="default: from the plan")
    p.add_argument("--search_batch_size", type=int, default=None, help="default 1 on CPU, 8 on GPU")
    p.add_argument("--seq_len", type=int, default=1024, help="tokens per search / recovery / calibration sample")
    p.add_argument("--channel_multiple", type=int, default=8,
                   help="exported MLP / hidden widths are multiples of this (GPU-friendly shapes)")
    p.add_argument("--export_rule", choices=["target", "paper"], default="target",
                   help="target: DMSPruner.meet_target() before export (R_hard <= target, as close as one MLP "
                        "channel step allows); paper: the hard mask c' >= 1 - e as searched (floor(N e) + 1 kept)")
    p.add_argument("--keep_ratio_lr", type=float, default=None, help="default min(0.05, max(1e-2, 2 / search steps))")
    p.add_argument("--weight_lr", type=float, default=1e-5, help="weights' lr in --search_mode joint")
    p.add_argument("--resource_weight", type=float, default=5.0, help="initial w of the resource loss")
    p.add_argument("--resource_weight_adapt", type=float, default=0.05,
                   help="multiplier rate of w (0 = fixed w, the paper); see DMSPruner")
    p.add_argument("--recovery", choices=["full", "lora", "none"], default="full")
    p.add_argument("--recovery_steps", type=int, default=None, help="default: from the plan")
    p.add_argument("--recovery_batch_size", type=int, default=None, help="default 1 on CPU, 8 on GPU")
    p.add_argument("--recovery_lr", type=float, default=None, help="default 5e-5 (full) / 5e-4 (LoRA)")
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--recovery_loss", choices=["kd", "ntp"], default="kd",
                   help="kd: DistillationTrainer with the dense model as teacher (alpha · KL + (1 − alpha) · "
                        "next-token); ntp: the plain next-token loop of the runs before distillation")
    p.add_argument("--kd_alpha", type=float, default=0.5, help="weight of the KL term (the next-token loss: 1 − it)")
    p.add_argument("--kd_temperature", type=float, default=1.0)
    p.add_argument("--kd_hidden_weight", type=float, default=0.0, help="hidden-state MSE weight (matching widths)")
    p.add_argument("--ablation_ntp", action="store_true",
                   help="one more row: the (first) per-layer DMS model recovered with the next-token loss only, "
                        "same trainer and tokens")
    p.add_argument("--checkpoint_every", type=int, default=0,
                   help="recovery checkpoints every N steps (a killed recovery resumes from the last; 0 = none)")
    p.add_argument("--baselines", nargs="*", default=["magnitude", "taylor"], choices=list(BASELINES))
    p.add_argument("--search_seeds", type=int, nargs="+", default=None,
                   help="per-layer DMS searches with these seeds (one row each; the first is the reference for "
                        "*_dms baselines and the ablation); default: --seed only")
    p.add_argument("--calibration_batches", type=int, default=8,
                   help="War and Peace batches for one-shot Taylor, FLAP and Wanda-sp (the same batches for all)")
    p.add_argument("--eval_window", type=int, default=1024)
    p.add_argument("--eval_windows", type=int, default=None,
                   help="comparison rows on the first N windows (0 = the whole test set; default: from the plan)")
    p.add_argument("--eval_tokens", type=int, default=0, help="instead: the first N tokens of the test text")
    p.add_argument("--eval_window_choices", type=int, nargs="+", default=[64, 32, 16],
                   help="the plan's window counts, tried in order (0 = the whole test set)")
    p.add_argument("--eval_batch_size", type=int, default=1)
    p.add_argument("--full_eval", action=argparse.BooleanOptionalAction, default=True,
                   help="full test set for the final DMS model and the best baseline")
    p.add_argument("--budget_minutes", type=float, default=None,
                   help="time budget of one run for the plan (default 120 on CPU, 0 = fixed sizes on GPU)")
    p.add_argument("--search_share", type=float, default=0.25, help="share of the training time for searches")
    p.add_argument("--plan_clock", choices=["wall", "cpu"], default="wall",
                   help="the plan's step times: wall seconds, or the process's CPU seconds (a shared machine's "
                        "load does not inflate them; use with --threads 1)")
    p.add_argument("--no_speed", action="store_true", help="skip the speed stage")
    p.add_argument("--gguf", nargs="*", default=[], choices=["f32", "f16", "q8_0"],
                   help="in the speed stage, also write each model as <model folder>.<dtype>.gguf "
                        "(hf_dynamic.save_gguf, docs/gguf.md) and time it in llama.cpp (llama-cpp-python)")
    p.add_argument("--speed_isolation", choices=["subprocess", "inprocess"], default="subprocess",
                   help="each model's speed and peak memory in a fresh process (inprocess: no memory figures)")
    p.add_argument("--prefill_shapes", nargs="+", default=["1x1024", "4x512"], help="BATCHxLENGTH, no cache")
    p.add_argument("--prefill_batch", type=int, default=None, help="old form: one prefill shape with --prefill_len")
    p.add_argument("--prefill_len", type=int, default=None)
    p.add_argument("--decode_tokens", type=int, default=64)
    p.add_argument("--decode_batches", type=int, nargs="+", default=[1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/llama_prune", help="stage files and models (not committed)")
    p.add_argument("--results_dir", default=None, help="results.json / .md / plot (default: --output_dir)")
    p.add_argument("--stop_after", default=None, help="stop after this stage (a name from stages.log)")
    p.add_argument("--plan", "--time_step", dest="plan_only", action="store_true", help="= --stop_after plan")
    args = p.parse_args(argv)
    if not 0.0 < args.target < 1.0:
        p.error(f"--target must be in (0, 1), got {args.target}")
    if args.per_layer:
        args.dms_variants = ["per_layer"]
    if args.recovery_loss == "ntp" and args.ablation_ntp:
        p.error("--ablation_ntp compares with distillation: it needs --recovery_loss kd")
    if args.ablation_ntp and "per_layer" not in args.dms_variants:
        p.error("--ablation_ntp recovers the per-layer DMS model: add per_layer to --dms_variants")
    if any(BASELINES[b][3] for b in args.baselines) and "per_layer" not in args.dms_variants:
        p.error("--baselines *_dms take the per-layer DMS structure: add per_layer to --dms_variants")
    if not 0.0 <= args.kd_alpha <= 1.0:
        p.error(f"--kd_alpha must be in [0, 1], got {args.kd_alpha}")
    args.dms_variants = [v for v in VARIANTS if v in args.dms_variants]
    if args.prefill_batch or args.prefill_len:
        args.prefill_shapes = [f"{args.prefill_batch or 1}x{args.prefill_len or 1024}"]
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    args.search_batch_size = args.search_batch_size or DEVICE_BATCH[kind]
    args.recovery_batch_size = args.recovery_batch_size or DEVICE_BATCH[kind]
    if args.budget_minutes is None:
        args.budget_minutes = 120.0 if kind == "cpu" else 0.0
    if args.plan_only:
        args.stop_after = "plan"
    args.results_dir = args.results_dir or args.output_dir
    return args


# --------------------------------------------------------------------------------------------------- helpers
def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def chunks(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    n = ids.numel() // seq_len
    if n < 1:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than --seq_len={seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def sample_batches(blocks: torch.Tensor, batch_size: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield blocks[torch.randint(0, blocks.size(0), (batch_size,), generator=g)]


CALIBRATION_SEED = 7


def calibration_batches(blocks: torch.Tensor, args) -> list:
    """The ``--calibration_batches`` War and Peace batches every calibrated baseline reads (the same for all)."""
    return [ids.to(args.device) for ids in sample_batches(blocks, args.search_batch_size, args.calibration_batches,
                                                          CALIBRATION_SEED)]


def comparison_tokens(args, plan: dict) -> int:
    """How many leading WikiText-2 test tokens the comparison rows are scored on (0: the whole test set)."""
    return args.eval_tokens or plan["eval_windows"] * args.eval_window


class Pretokenized:
    """A stand-in tokenizer for ``hf_dynamic.perplexity``: returns fixed token ids (an exact prefix of the test
    text's tokens, not a re-tokenised decoded prefix)."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __call__(self, text, verbose=False):
        return {"input_ids": self.ids}


def evaluate_ppl(model, ids, args) -> dict:
    from hf_dynamic import perplexity

    with autocast(args.device):
        out = perplexity(model, Pretokenized(ids), "<pre-tokenised>", window=args.eval_window,
                         batch_size=args.eval_batch_size)
    return {"ppl": out["perplexity"], "mean_nll": out["mean_nll"], "tokens": out["tokens"]}


def forward_flops_per_token(config, seq_len):
    """Matmul FLOPs per token of a ``seq_len`` forward (formula checked against FlopCounterMode in the tests)."""
    from hf_dynamic.core.resources import llama_forward_flops

    L = config.num_hidden_layers
    q = getattr(config, "layer_num_attention_heads", None) or [config.num_attention_heads] * L
    kv = getattr(config, "layer_num_key_value_heads", None) or [config.num_key_value_heads] * L
    inter = getattr(config, "layer_intermediate_sizes", None) or [config.intermediate_size] * L
    flops = llama_forward_flops(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, head_dim=config.head_dim,
        num_attention_heads=[max(v, 1) for v in q], num_key_value_heads=[max(v, 1) for v in kv],
        intermediate_size=inter, num_layers=L, seq_len=seq_len,
        attention_present=[float(v > 0) for v in q], mlp_present=[float(v > 0) for v in inter],
    )
    return float(flops) / seq_len


def shapes(specs):
    return [tuple(int(v) for v in s.lower().split("x")) for s in specs]


def load_model(path, device):
    import hf_dynamic  # noqa: F401  (registers dms_llama)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()


def save_model(model, tokenizer, path):
    """Save atomically: into ``path.tmp``, then renamed (a killed save leaves no half folder at ``path``)."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def params_of(model) -> int:
    return model.num_parameters()


# --------------------------------------------------------------------------------------------------- training
def recovery_lr(args):
    return args.recovery_lr or (5e-5 if args.recovery == "full" else 5e-4)


def prepare_recovery(model, args):
    """Wrap ``model`` for recovery (LoRA or all weights trainable); returns (model, trainable params, AdamW)."""
    if args.recovery == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing alias
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = get_peft_model(model, config)
    else:
        model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, torch.optim.AdamW(params, lr=recovery_lr(args), weight_decay=0.0)


def train_step(model, ids, params, opt, args):
    with autocast(args.device):
        loss = model(input_ids=ids.to(args.device), labels=ids.to(args.device)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def recover(model, blocks, steps, args, loss=None, teacher_path=None, work_dir=None):
    """The recovery budget every pruned model gets: ``steps`` AdamW steps on War and Peace, cosine schedule.

    ``loss`` (default ``--recovery_loss``): ``"kd"`` distils from the dense model at ``teacher_path``
    (:func:`distill_recover`), ``"ntp_trainer"`` is the same trainer with the next-token loss only (the ablation),
    ``"ntp"`` the plain loop below (the runs recorded before distillation).
    """
    loss = loss or args.recovery_loss
    if loss in ("kd", "ntp_trainer"):
        return distill_recover(model, blocks, steps, args, teacher_path if loss == "kd" else None, work_dir)
    from transformers import get_cosine_schedule_with_warmup

    model, params, opt = prepare_recovery(model, args)
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    model.train()
    losses = []
    for step, ids in enumerate(sample_batches(blocks, args.recovery_batch_size, steps, args.seed + 1)):
        losses.append(train_step(model, ids, params, opt, args))
        sched.step()
        if step % max(1, steps // 5) == 0:
            print(f"  recovery step {step}: loss {losses[-1]:.4f}", flush=True)
    if args.recovery == "lora":
        model = model.merge_and_unload()
    return model.eval(), losses


def recovery_dataset(blocks, steps, args):
    """The recovery tokens, the same for every model: ``steps × batch`` War and Peace blocks drawn with seed
    ``--seed + 1`` (the Trainer then visits them in an order fixed by the same seed)."""
    from datasets import Dataset

    picked = torch.cat(list(sample_batches(blocks, args.recovery_batch_size, steps, args.seed + 1)))
    return Dataset.from_dict({"input_ids": picked.tolist(), "labels": picked.tolist()})


def distill_recover(model, blocks, steps, args, teacher_path, work_dir):
    """Recovery under ``hf_dynamic.DistillationTrainer``: ``alpha · T²·KL(teacher ‖ student) + (1 − alpha) ·
    next-token`` with the dense model as teacher (``teacher_path``; None = next-token only, the teacher is not run).

    AdamW, cosine schedule with 5 % warm-up, gradient clipping at 1, ``--recovery_lr``; with ``--checkpoint_every``
    the Trainer checkpoints into ``work_dir`` and a killed stage resumes from the last checkpoint
    (``resume_from_checkpoint``), ending where an uninterrupted one does.
    """
    from transformers import TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from hf_dynamic import DistillationTrainer

    if args.recovery == "lora":
        model, _, _ = prepare_recovery(model, args)
    else:
        model.requires_grad_(True)
    teacher = load_model(teacher_path, args.device) if teacher_path else None
    every = args.checkpoint_every
    targs = TrainingArguments(
        output_dir=work_dir, max_steps=steps, per_device_train_batch_size=args.recovery_batch_size,
        learning_rate=recovery_lr(args), weight_decay=0.0, lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), max_grad_norm=1.0, logging_steps=max(1, steps // 5), report_to=[],
        save_strategy="steps" if every else "no", save_steps=every or 500, save_total_limit=1,
        use_cpu=args.device == "cpu", bf16=args.device.startswith("cuda"), disable_tqdm=True, seed=args.seed + 1,
        dataloader_drop_last=True,
    )
    trainer = DistillationTrainer(
        model=model, args=targs, train_dataset=recovery_dataset(blocks, steps, args), teacher=teacher,
        alpha=args.kd_alpha if teacher is not None else 0.0, temperature=args.kd_temperature,
        hidden_weight=args.kd_hidden_weight if teacher is not None else 0.0,
    )
    last = get_last_checkpoint(work_dir) if every and os.path.isdir(work_dir) else None
    trainer.train(resume_from_checkpoint=last)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model = trainer.model
    if args.recovery == "lora":
        model = model.merge_and_unload()
    trainer = teacher = None
    return model.eval(), losses


def make_pruner(model, variant, args, keep_ratio_lr):
    from hf_dynamic import DMSCallback, DMSPruner

    if args.search_mode == "frozen":
        model.requires_grad_(False)
    pruner = DMSPruner(
        model, args.target, prune=args.prune, uniform=variant == "uniform", head_grouping=args.head_grouping,
        resource_weight=args.resource_weight, resource_weight_adapt=args.resource_weight_adapt,
        channel_multiple=args.channel_multiple,
    )
    return pruner, DMSCallback(pruner, keep_ratio_lr=keep_ratio_lr)


def dms_search(model, blocks, variant, steps, keep_ratio_lr, args, seed=None):
    """One DMS search (``seed``: the data draw and the Trainer's seed; default ``--seed``)."""
    from datasets import Dataset
    from transformers import TrainingArguments, set_seed

    from hf_dynamic import DMSTrainer

    seed = args.seed if seed is None else seed
    set_seed(seed)
    pruner, callback = make_pruner(model, variant, args, keep_ratio_lr)
    n = min(blocks.size(0), steps * args.search_batch_size)
    g = torch.Generator().manual_seed(seed)
    picked = blocks[torch.randperm(blocks.size(0), generator=g)[:n]]
    data = Dataset.from_dict({"input_ids": picked.tolist(), "labels": picked.tolist()})
    targs = TrainingArguments(
        output_dir=os.path.join(args.output_dir, f"search_{variant}_s{seed}"), max_steps=steps,
        per_device_train_batch_size=args.search_batch_size, learning_rate=args.weight_lr, weight_decay=0.0,
        lr_scheduler_type="constant", logging_steps=max(1, steps // 50), report_to=[],
        save_strategy="no", use_cpu=args.device == "cpu", bf16=args.device.startswith("cuda"),
        disable_tqdm=True, seed=seed, dataloader_drop_last=True,
    )
    DMSTrainer(model=model, args=targs, train_dataset=data, callbacks=[callback], pruner=pruner).train()
    return pruner, callback


# --------------------------------------------------------------------------------------------------- plan
def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


class StepClock:
    """Times the plan's steps by ``--plan_clock``: ``wall`` (seconds elapsed) or ``cpu`` (this process's CPU
    seconds, ``time.process_time``: the work itself, which other jobs on a shared machine do not inflate; with
    ``--threads 1`` it is the wall time the step takes on a free core). Both are recorded."""

    def __init__(self, args):
        self.args, self.other = args, {}

    def __call__(self, name, fn):
        c0 = time.process_time()
        wall = timed(fn, self.args.device)
        cpu = time.process_time() - c0
        chosen, other = (cpu, wall) if self.args.plan_clock == "cpu" else (wall, cpu)
        self.other[name] = other
        return chosen


def measure_step_times(path, blocks, args) -> dict:
    """Seconds of one evaluation window, one search step and one recovery step of the dense model, each timed
    once after a warm-up on a short input (the recovery warm-up also allocates AdamW's state)."""
    short = blocks[:1, : min(32, blocks.size(1))]
    clock = StepClock(args)
    model = load_model(path, args.device)
    window = blocks.reshape(-1)[: args.eval_window].unsqueeze(0).to(args.device)
    with torch.inference_mode(), autocast(args.device):
        model(input_ids=short.to(args.device), use_cache=False)
        eval_s = clock("eval_window_s", lambda: model(input_ids=window, use_cache=False))
        # the teacher's share of a distillation step (and a calibration batch's forward): one recovery batch
        teacher = blocks[: args.recovery_batch_size].to(args.device)
        teacher_s = clock("teacher_forward_s", lambda: model(input_ids=teacher, use_cache=False))

    pruner, _ = make_pruner(model, args.dms_variants[0], args, 1e-2)
    opt = torch.optim.Adam(pruner.structure_parameters(), lr=1e-2)
    model.train()

    def search_step(ids):
        with autocast(args.device):
            loss = pruner.add_resource_loss(model(input_ids=ids.to(args.device), labels=ids.to(args.device)).loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        pruner.clamp_()

    search_step(short)
    batch = blocks[: args.search_batch_size]
    search_s = clock("search_step_s", lambda: search_step(batch))
    pruner.remove()
    pruner = opt = model = None  # free the dense copy before loading the next
    gc.collect()

    model = load_model(path, args.device)
    model, params, opt = prepare_recovery(model, args)
    model.train()
    train_step(model, short, params, opt, args)
    batch = blocks[: args.recovery_batch_size]
    recovery_s = clock("recovery_step_s", lambda: train_step(model, batch, params, opt, args))
    return {"eval_window_s": eval_s, "search_step_s": search_s, "recovery_step_s": recovery_s,
            "teacher_forward_s": teacher_s, "clock": args.plan_clock,
            f"{'wall' if args.plan_clock == 'cpu' else 'cpu'}_seconds": clock.other,
            "load_average": os.getloadavg()}  # other jobs on the machine slow every (wall-clock) step


def recovery_runs(args):
    """(key, pruned model key, loss) of every recovery: one per pruned model with ``--recovery_loss``, plus the
    ablation (the first per-layer DMS model with the next-token loss only, same trainer and tokens)."""
    if args.recovery == "none":
        return []
    runs = [(key, key, args.recovery_loss) for key, _, _ in pruned_models(args)]
    if args.ablation_ntp:
        ref = reference_per_layer(args)
        runs.append((f"{ref}_ntp", ref, "ntp_trainer"))
    return runs


def choose_sizes(times: dict, args, full_windows: int) -> dict:
    """Batch × length × steps and comparison windows within ``--budget_minutes`` (see the module docstring)."""
    r, t_w = args.target, times["eval_window_s"]
    n_var, n_pruned = len(search_stages(args)), len(pruned_models(args))
    runs = recovery_runs(args)
    n_recovered = len(runs)
    # a distillation step adds the dense teacher's forward to the pruned student's step
    t_teacher = times.get("teacher_forward_s", t_w * args.recovery_batch_size * args.seq_len / args.eval_window)
    step_costs = [r * times["recovery_step_s"] + (t_teacher if loss == "kd" else 0.0) for _, _, loss in runs]
    per_prefill = sum(b * n for b, n in shapes(args.prefill_shapes)) / args.eval_window
    speed = 0.0 if args.no_speed else (1 + n_pruned * r) * t_w * (4 * per_prefill + 2) + 15 * (1 + n_pruned)
    calib_fwd = args.calibration_batches * t_teacher * args.search_batch_size / max(args.recovery_batch_size, 1)
    calib = sum(args.calibration_batches * times["search_step_s"] if b.startswith("taylor") else
                calib_fwd if BASELINES[b][2] else 0.0 for b in args.baselines)
    budget = args.budget_minutes * 60

    def eval_cost(windows):
        w = windows or full_windows
        return w * t_w * (1 + n_pruned * r + n_recovered * r)

    def full_cost(windows):  # dense and the final models again on the whole test set, unless the rows already are
        return ((1 + 2 * r) * full_windows * t_w) if args.full_eval and windows and windows < full_windows else 0.0

    explicit = {k: getattr(args, k) for k in FIXED_SIZES if getattr(args, k) is not None}
    if budget <= 0:
        chosen = {**FIXED_SIZES, **explicit}
        reason = "--budget_minutes 0: fixed sizes (300 search / 300 recovery steps, full test set) or explicit"
    else:
        choices = list(dict.fromkeys(w if w and w < full_windows else 0 for w in args.eval_window_choices))
        if "eval_windows" in explicit:
            windows = explicit["eval_windows"]
        else:
            windows = next((w for w in choices
                            if budget - eval_cost(w) - full_cost(w) - speed - calib >= budget / 2), choices[-1])
        train = max(0.0, budget - eval_cost(windows) - full_cost(windows) - speed - calib)
        search_steps = explicit.get("max_search_steps") or max(
            20, int(args.search_share * train / (n_var * times["search_step_s"])))
        rec_time = train - n_var * search_steps * times["search_step_s"]
        recovery_steps = explicit.get("recovery_steps")
        if recovery_steps is None:
            recovery_steps = max(10, int(rec_time / max(sum(step_costs), 1e-9)))
        chosen = {"eval_windows": windows, "max_search_steps": search_steps, "recovery_steps": recovery_steps}
        tokens = recovery_steps * args.recovery_batch_size * args.seq_len
        reason = (
            f"budget {args.budget_minutes:g} min: comparison windows {windows or 'all (' + str(full_windows) + ')'} "
            f"(the first of {'/'.join(str(w or 'all') for w in choices)} leaving half the budget to training), "
            f"{args.search_share:.0%} of the training time to the {n_var} search(es), the rest to {n_recovered} "
            f"recoveries of {recovery_steps} steps = {tokens:,} War and Peace tokens each (pruned step ≈ {r:g} × "
            f"dense step" + (", + the teacher's forward for distillation" if args.recovery_loss == "kd" else "")
            + ")" + (f"; explicit: {sorted(explicit)}" if explicit else "")
        )
    steps = chosen["max_search_steps"]
    estimate = {
        "eval_comparison_s": eval_cost(chosen["eval_windows"]), "eval_full_s": full_cost(chosen["eval_windows"]),
        "speed_s": speed, "calibration_s": calib, "search_s": n_var * steps * times["search_step_s"],
        "recovery_s": chosen["recovery_steps"] * sum(step_costs),
    }
    estimate["total_s"] = sum(estimate.values())
    estimate["search_share_of_total"] = estimate["search_s"] / max(estimate["total_s"], 1e-9)
    return {
        **chosen, "keep_ratio_lr": args.keep_ratio_lr or min(0.05, max(1e-2, 2.0 / steps)),
        "search_batch_size": args.search_batch_size, "recovery_batch_size": args.recovery_batch_size,
        "seq_len": args.seq_len, "eval_window": args.eval_window, "full_test_windows": full_windows,
        "recovery_tokens": chosen["recovery_steps"] * args.recovery_batch_size * args.seq_len,
        "reason": reason, "estimate": estimate,
    }


# --------------------------------------------------------------------------------------------------- speed
def peak_rss_mb() -> tuple[float, str]:
    """This process's peak resident set size in MiB and where it was read: ``VmHWM`` of ``/proc/self/status``
    on Linux (the high-water mark of this address space; ``ru_maxrss`` is not usable in a child of a big
    process, since Linux carries the parent's peak over ``fork`` + ``exec`` into it), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024, "VmHWM"
    except (OSError, StopIteration):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**20 if sys.platform == "darwin" else 1024), "ru_maxrss"


def model_speed(model_dir, device, prefill_shapes, decode_tokens, decode_batches, memory=True) -> dict:
    """One model's speed (:func:`measure_speed`) and, with ``memory`` (a fresh process), its peak memory.

    Peak memory on the CPU (:func:`peak_rss_mb`), read after the imports but before loading the model
    (``baseline_rss_mb``) and after every measurement (``peak_rss_mb``); ``model_peak_mb`` is the difference.
    On CUDA: ``torch.cuda.max_memory_allocated``.
    """
    import hf_dynamic  # noqa: F401  (imported before the baseline is read)
    from transformers import AutoModelForCausalLM  # noqa: F401

    baseline, source = peak_rss_mb()
    model = load_model(model_dir, device)
    if device.startswith("cuda"):
        model = model.to(torch.bfloat16)  # deployment dtype on the GPU
    out = measure_speed(model, device, shapes(prefill_shapes), decode_tokens, decode_batches)
    if memory and device.startswith("cuda"):
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    elif memory:
        peak = peak_rss_mb()[0]
        out.update(baseline_rss_mb=baseline, peak_rss_mb=peak, model_peak_mb=peak - baseline, memory_source=source)
    out["threads"] = torch.get_num_threads()
    return out


def speed_worker(argv):
    """``--speed_worker MODEL OUT.json ...``: :func:`model_speed` in this (fresh) process, written to OUT.json."""
    p = argparse.ArgumentParser()
    p.add_argument("--speed_worker", nargs=2, metavar=("MODEL", "OUT"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--prefill_shapes", nargs="+")
    p.add_argument("--decode_tokens", type=int)
    p.add_argument("--decode_batches", type=int, nargs="+")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = model_speed(a.speed_worker[0], a.device, a.prefill_shapes, a.decode_tokens, a.decode_batches)
    write_json_atomic(a.speed_worker[1], out)


@torch.no_grad()
def measure_speed(model, dev, prefill_shapes, decode_tokens, decode_batches, reps=5, decode_reps=3):
    """Prefill tokens/s per shape (no cache) and greedy decode tokens/s per batch, each from the median of
    ``reps`` / ``decode_reps`` separately timed repetitions after a warm-up (the median, because on the shared
    2-core machine a single slow repetition moved a 3-repetition mean by up to 20 % between models of one shape)."""
    from statistics import median

    vocab, out = model.config.vocab_size, {"timing": f"median of {reps} (prefill) / {decode_reps} (decode) reps"}
    for b, n in prefill_shapes:
        x = torch.randint(0, vocab, (b, n), device=dev)
        model(input_ids=x, use_cache=False)  # warm-up
        seconds = median(timed(lambda: model(input_ids=x, use_cache=False), dev) for _ in range(reps))
        out[f"prefill_tokens_per_s_{b}x{n}"] = x.numel() / seconds
    for b in decode_batches:
        prompt = torch.randint(0, vocab, (b, 32), device=dev)
        kwargs = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        seconds = median(timed(lambda: model.generate(prompt, max_new_tokens=decode_tokens,
                                                      min_new_tokens=decode_tokens, **kwargs), dev)
                         for _ in range(decode_reps))
        out[f"decode_tokens_per_s_b{b}"] = b * decode_tokens / seconds
    return out


def measured_flops(path, prefill_shape, device):
    """FLOPs of one prefill forward counted by ``FlopCounterMode`` (eager attention: the counter does not book
    the fused CPU SDPA kernel)."""
    from hf_dynamic.core.resources import measured_forward_flops

    model = load_model(path, device)
    model.set_attn_implementation("eager")
    b, n = prefill_shape
    return measured_forward_flops(model, input_ids=torch.zeros(b, n, dtype=torch.long, device=device),
                                  use_cache=False)


# --------------------------------------------------------------------------------------------------- pipeline
class Pipeline:
    """Stage bookkeeping: ``stages/<name>.json`` per finished stage, ``stages.log`` of what ran or was skipped."""

    def __init__(self, args, on_done=None):
        self.args = args
        self.on_done = on_done  # called after every finished stage (main: rewrite results.json / .md / plots)
        self.dir = os.path.join(args.output_dir, "stages")
        os.makedirs(self.dir, exist_ok=True)

    def path(self, name):
        return os.path.join(self.dir, f"{name}.json")

    def done(self, name):
        return os.path.exists(self.path(name))

    def load(self, name):
        with open(self.path(name)) as f:
            return json.load(f)

    def log(self, event, name):
        with open(os.path.join(self.args.output_dir, "stages.log"), "a") as f:
            f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {event} {name}\n")

    def run(self, name, fn):
        if self.done(name):
            self.log("skip", name)
            return self.load(name)
        self.log("start", name)
        print(f"== stage {name}", flush=True)
        from transformers import set_seed

        set_seed(self.args.seed)  # each stage starts from the same RNG state, resumed or not
        t0 = time.perf_counter()
        out = fn()
        out["seconds"] = time.perf_counter() - t0
        out["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        write_json_atomic(self.path(name), out)
        self.log("done", name)
        gc.collect()
        if self.on_done is not None:
            self.on_done()
        if self.args.stop_after == name:
            raise StopPipeline(name)
        return out


def check_resume(args, output_dir):
    """A re-run must use the same settings as the stage files it continues (ValueError naming the changes)."""
    ignored = {"stop_after", "plan_only", "results_dir", "output_dir", "no_speed", "speed_isolation", "full_eval"}
    now = {k: v for k, v in vars(args).items() if k not in ignored}
    path = os.path.join(output_dir, "run_args.json")
    if os.path.exists(path):
        with open(path) as f:
            before = {**SETTINGS_ADDED_LATER, **json.load(f)}
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise ValueError(f"{output_dir} holds a run with other settings ({', '.join(changed)}); use another "
                             f"--output_dir or the same arguments")
    else:
        write_json_atomic(path, now)


def search_stages(args):
    """(variant, seed, key, row name, stage) of every DMS search: one per variant, the per-layer one once per
    ``--search_seeds`` seed when given."""
    out = []
    for v in args.dms_variants:
        key, name = VARIANTS[v]
        if v == "per_layer" and args.search_seeds:
            out += [(v, s, f"{key}_s{s}", f"{name} (seed {s})", f"search_{v}_s{s}") for s in args.search_seeds]
        else:
            out.append((v, args.seed, key, name, f"search_{v}"))
    return out


def reference_per_layer(args):
    """Key of the per-layer DMS model the ``*_dms`` baselines and the ablation start from (the first seed's)."""
    return next(key for v, _, key, _, _ in search_stages(args) if v == "per_layer")


def pruned_models(args):
    """(key, row name, the stage that made it) of every pruned model, DMS searches first."""
    return ([(key, name, stage) for _, _, key, name, stage in search_stages(args)]
            + [(b, BASELINES[b][0], f"prune_{b}") for b in args.baselines])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--speed_worker":
        return speed_worker(argv)
    if argv and argv[0] == "--plot_results":
        return plot_results(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from hf_dynamic import load_text, smollm2_path

    os.makedirs(args.output_dir, exist_ok=True)
    check_resume(args, args.output_dir)
    path = str(args.model_path or smollm2_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    wiki_ids = torch.as_tensor(tokenizer(load_text("wikitext2"), verbose=False)["input_ids"])
    blocks = chunks(torch.tensor(tokenizer(load_text("warpeace"), verbose=False)["input_ids"]), args.seq_len)
    full_windows = math.ceil(wiki_ids.numel() / args.eval_window)
    state = {"args": args, "path": path, "argv": argv}
    pipe = Pipeline(args, on_done=lambda: report(pipe, state, echo=False))
    try:
        run_stages(pipe, args, path, tokenizer, wiki_ids, blocks, full_windows)
    except StopPipeline as stop:
        print(f"stopped after stage {stop}", flush=True)
    return report(pipe, state)


def run_stages(pipe, args, path, tokenizer, wiki_ids, blocks, full_windows):
    dev = args.device

    def plan():
        times = measure_step_times(path, blocks, args)
        sizes = choose_sizes(times, args, full_windows)
        print(f"plan: {json.dumps(times)} -> {json.dumps({k: v for k, v in sizes.items() if k != 'estimate'})}")
        return {"measured": times, **sizes}

    sizes = pipe.run("plan", plan)
    n_eval = comparison_tokens(args, sizes)
    eval_ids = wiki_ids[:n_eval] if n_eval else wiki_ids

    def evaluate(model_path, ids):
        return lambda: evaluate_ppl(load_model(model_path, dev), ids, args)

    def dense_eval():
        model = load_model(path, dev)
        return {**evaluate_ppl(model, eval_ids, args), "params": params_of(model)}

    pipe.run("dense_eval", dense_eval)

    def search(variant, seed, key):
        def stage():
            model = load_model(path, dev)
            t0 = time.perf_counter()
            pruner, callback = dms_search(model, blocks, variant, sizes["max_search_steps"], sizes["keep_ratio_lr"],
                                          args, seed=seed)
            search_s = time.perf_counter() - t0
            searched = pruner.summary()
            fit = pruner.meet_target() if args.export_rule == "target" else None
            if variant == "per_layer":
                from hf_dynamic import DMSLlamaForCausalLM

                pruned = DMSLlamaForCausalLM.from_pruned(pruner, dtype=torch.float32)
            else:
                pruned = pruner.export(dtype=torch.float32)
            summary = pruner.summary()
            save_pruner_state(pruner, os.path.join(args.output_dir, f"{key}_pruner.safetensors"))
            pruner.remove()
            save_model(pruned, tokenizer, os.path.join(args.output_dir, f"{key}_pruned"))
            return {"model_dir": os.path.join(args.output_dir, f"{key}_pruned"), "params": params_of(pruned),
                    "search_s": search_s, "steps": sizes["max_search_steps"], "seed": seed, "summary": summary,
                    "searched_summary": searched, "meet_target": fit, "export_rule": args.export_rule,
                    "history": callback.history}
        return stage

    for variant, seed, key, _, stage_name in search_stages(args):
        pipe.run(stage_name, search(variant, seed, key))
    target_params = pipe.load(search_stages(args)[0][4])["params"]

    def prune(kind):
        def stage():
            model = load_model(path, dev)
            t0 = time.perf_counter()
            pruned, info = prune_baseline(kind, model, calibration_batches(blocks, args), target_params, args)
            prune_s = time.perf_counter() - t0
            out = os.path.join(args.output_dir, f"{kind}_pruned")
            save_model(pruned, tokenizer, out)
            return {"model_dir": out, "params": params_of(pruned), "target_params": target_params,
                    "prune_s": prune_s, **info}
        return stage

    for kind in args.baselines:
        pipe.run(f"prune_{kind}", prune(kind))

    def recover_stage(key, source, loss):
        def stage():
            pruned = load_model(os.path.join(args.output_dir, f"{source}_pruned"), dev)
            model, losses = recover(pruned, blocks, sizes["recovery_steps"], args, loss=loss, teacher_path=path,
                                    work_dir=os.path.join(args.output_dir, f"recover_{key}"))
            out = save_model(model, tokenizer, os.path.join(args.output_dir, f"{key}_model"))
            shutil.rmtree(os.path.join(args.output_dir, f"recover_{key}"), ignore_errors=True)  # its checkpoints
            return {"model_dir": out, "steps": sizes["recovery_steps"], "losses": losses, "loss": loss,
                    "source": source, "tokens": sizes["recovery_steps"] * args.recovery_batch_size * args.seq_len}
        return stage

    runs = {source: [] for _, source, _ in recovery_runs(args)}
    for key, source, loss in recovery_runs(args):
        runs[source].append((key, loss))
    for key, _, _ in pruned_models(args):
        pruned_dir = os.path.join(args.output_dir, f"{key}_pruned")
        pipe.run(f"eval_{key}_pruned", evaluate(pruned_dir, eval_ids))
        for run_key, loss in runs.get(key, []):
            pipe.run(f"recover_{run_key}", recover_stage(run_key, key, loss))
            pipe.run(f"eval_{run_key}_recovered", evaluate(os.path.join(args.output_dir, f"{run_key}_model"),
                                                           eval_ids))

    if args.full_eval and n_eval:  # with the whole test set as comparison, every row already is a full evaluation
        pipe.run("full_eval_dense", lambda: {"model": "dense", **evaluate(path, wiki_ids)()})
        for stage, key in final_models(pipe, args).items():
            def full(key=key):
                return {"model": key, **evaluate(final_dir(args, key), wiki_ids)()}
            pipe.run(stage, full)

    if not args.no_speed:
        pipe.run("speed", lambda: speed_stage(args, path))


def save_pruner_state(pruner, path):
    """The search's keep ratios and importances (safetensors; the ``*_dms`` baselines reuse its structure)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in pruner.state_dict().items() if torch.is_tensor(v)}
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)


def prune_baseline(kind, model, batches, target_params, args):
    """One baseline pruned model of ``model`` (``BASELINES``; ``docs/dms.md``, "## Baselines") and what to record.

    Uniform ones (magnitude, taylor, Wanda-sp) match ``target_params`` with the same counts in every layer; FLAP
    ranks globally to ``target_params`` and carries its bias compensation (``dms_llama`` with
    ``output_proj_bias``); ``*_dms`` keep the per-layer DMS model's counts, hidden channels and sub-blocks and choose
    the heads / MLP channels by their criterion.
    """
    from hf_dynamic import DMSLlamaForCausalLM, DMSPruner
    from hf_dynamic.dms import baselines as B

    _, uniform, calibrated, on_dms = BASELINES[kind]
    criterion = kind.removesuffix("_dms")
    pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"), uniform=uniform, head_grouping=args.head_grouping)
    stats = B.calibration_statistics(pruner, batches) if calibrated else None
    if criterion == "magnitude":
        B.magnitude_importance(pruner)
    elif criterion == "taylor":
        with autocast(args.device):
            B.one_shot_taylor_importance(pruner, batches)
    elif criterion == "wanda_sp":
        B.wanda_sp_importance(pruner, stats)
    if on_dms:
        scores = {k: pruner.topk[k].importance.clone() for k in ("heads", "mlp")}
        pruner.remove()
        return on_dms_structure(model, scores, args)
    if kind == "flap":
        extra = 2 * model.config.hidden_size * model.config.num_hidden_layers  # o_proj + down_proj biases
        counts = B.flap_prune(pruner, stats, target_params, extra_params=extra)
        biases = B.flap_compensation(pruner, stats)
        pruned = with_output_biases(DMSLlamaForCausalLM.from_pruned(pruner, dtype=torch.float32), biases)
    else:
        counts = B.match_parameter_count(pruner, target_params)
        pruned = pruner.export(uniform=True, dtype=torch.float32)
    pruner.remove()
    return pruned, {"counts": counts, **({"calibration_tokens": stats["tokens"]} if stats else {})}


def on_dms_structure(model, scores, args):
    """The reference per-layer DMS search's structure (its keep counts, hidden channels and sub-blocks, from
    ``<key>_pruner.safetensors``) with the heads and MLP channels chosen by ``scores`` instead of DMS's importance.
    """
    from safetensors.torch import load_file

    from hf_dynamic import DMSLlamaForCausalLM

    ref = reference_per_layer(args)
    pruner, _ = make_pruner(model, "per_layer", args, 1e-2)
    state = load_file(os.path.join(args.output_dir, f"{ref}_pruner.safetensors"))
    missing, unexpected = pruner.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("_extra_state") for k in missing):
        raise ValueError(f"{ref}_pruner.safetensors does not fit the per-layer pruner: missing {missing}, "
                         f"unexpected {unexpected}")
    with same_kept_counts(pruner, "replacing the importance") as counts:
        for kind, v in scores.items():  # the hard mask keeps a count set by the keep ratio, whatever the ranking
            pruner.set_importance(kind, v)
    pruned = DMSLlamaForCausalLM.from_pruned(pruner, dtype=torch.float32)
    pruner.remove()
    return pruned, {"counts": counts, "structure_of": ref}


def kept_counts(pruner) -> dict:
    """Per pruned kind, how many elements the pruner's hard mask keeps (a list per layer for per-layer kinds)."""
    return {k: op.kept_counts().tolist() for k, op in pruner.topk.items()}


@contextmanager
def same_kept_counts(pruner, what: str):
    """Yield the pruner's kept counts; raise ``RuntimeError`` naming ``what`` if the block changed them (a criterion
    placed on a given structure may change *which* elements are kept, never how many)."""
    before = kept_counts(pruner)
    yield before
    if kept_counts(pruner) != before:
        raise RuntimeError(f"{what} changed the kept counts")


@torch.no_grad()
def with_output_biases(model, biases):
    """``model`` (a ``dms_llama`` model) rebuilt with ``output_proj_bias`` and ``o_proj`` / ``down_proj`` biases
    ``biases["o_proj"][i]`` / ``biases["down_proj"][i]`` in layer ``i`` (FLAP's compensation; a loadable
    checkpoint: ``from_pretrained`` builds the biases from the config)."""
    config = type(model.config).from_dict({**model.config.to_dict(), "output_proj_bias": True})
    new = type(model)(config).to(model.dtype)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.endswith(("o_proj.bias", "down_proj.bias")) for k in missing):
        raise RuntimeError(f"unexpected state dict difference: missing {missing}, unexpected {unexpected}")
    new.tie_weights()
    for i, layer in enumerate(new.model.layers):
        for name, block, proj in (("o_proj", "self_attn", "o_proj"), ("down_proj", "mlp", "down_proj")):
            module = getattr(layer, block, None)
            if module is not None and getattr(module, proj, None) is not None:
                getattr(module, proj).bias.copy_(biases[name][i].to(model.dtype))
    return new.eval()


def final_dir(args, key):
    return os.path.join(args.output_dir, f"{key}_model" if args.recovery != "none" else f"{key}_pruned")


def comparison_ppl(pipe, args, key):
    stage = f"eval_{key}_recovered" if args.recovery != "none" else f"eval_{key}_pruned"
    return pipe.load(stage)["ppl"] if pipe.done(stage) else float("inf")


def final_models(pipe, args) -> dict:
    """The models that get the full test set: the better DMS variant and the best baseline (comparison ppl)."""
    out = {}
    dms = [key for _, _, key, _, _ in search_stages(args)]
    out["full_eval_final_dms"] = min(dms, key=lambda k: comparison_ppl(pipe, args, k))
    if args.baselines:
        out["full_eval_best_baseline"] = min(args.baselines, key=lambda k: comparison_ppl(pipe, args, k))
    return out


def gguf_speed(model_dir, dtype, prompt_tokens, decode_tokens) -> dict:
    """Write ``model_dir`` beside itself as ``<model_dir>.<dtype>.gguf`` (``hf_dynamic.save_gguf``) and time it in
    llama.cpp with this process's threads: one ``prompt_tokens`` prompt in one batch, then ``decode_tokens`` tokens
    one at a time (batch 1)."""
    import llama_cpp
    from transformers import AutoTokenizer

    import hf_dynamic

    path = f"{model_dir.rstrip(os.sep)}.{dtype}.gguf"
    hf_dynamic.save_gguf(load_model(model_dir, "cpu"), AutoTokenizer.from_pretrained(model_dir), path, dtype=dtype)
    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(model_path=path, n_ctx=prompt_tokens + decode_tokens + 8, n_batch=prompt_tokens,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        ids = torch.randint(0, llm.n_vocab(), (prompt_tokens + decode_tokens,),
                            generator=torch.Generator().manual_seed(0)).tolist()
        start = time.perf_counter()
        llm.eval(ids[:prompt_tokens])
        prefill = prompt_tokens / (time.perf_counter() - start)
        start = time.perf_counter()
        for token in ids[prompt_tokens:]:
            llm.eval([token])
        decode = decode_tokens / (time.perf_counter() - start)
    finally:
        llm.close()
    return {f"llama_cpp_{dtype}_prefill_tokens_per_s_1x{prompt_tokens}": prefill,
            f"llama_cpp_{dtype}_decode_tokens_per_s_b1": decode}


def speed_stage(args, path):
    """Every final model and the dense one, one fresh subprocess each (same threads), plus measured FLOPs."""
    models = {"dense": path, **{key: final_dir(args, key) for key, _, _ in pruned_models(args)}}
    prefill = shapes(args.prefill_shapes)
    out = {}
    for key, model_dir in models.items():
        if args.speed_isolation == "inprocess":  # no memory figures: this process holds everything before it
            out[key] = model_speed(model_dir, args.device, args.prefill_shapes, args.decode_tokens,
                                   args.decode_batches, memory=False)
        else:
            result = os.path.join(args.output_dir, "stages", f"speed_{key}.tmp.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--speed_worker", model_dir, result, "--device",
                   args.device, "--threads", str(torch.get_num_threads()), "--prefill_shapes", *args.prefill_shapes,
                   "--decode_tokens", str(args.decode_tokens), "--decode_batches", *map(str, args.decode_batches)]
            subprocess.run(cmd, check=True)
            with open(result) as f:
                out[key] = json.load(f)
            os.remove(result)
        out[key]["flops_measured"] = {f"{b}x{n}": measured_flops(model_dir, (b, n), args.device) for b, n in prefill}
        for dtype in args.gguf:
            out[key].update(gguf_speed(model_dir, dtype, prefill[0][1], args.decode_tokens))
        print(f"  speed {key}: {json.dumps(out[key])}", flush=True)
    return {"models": out}


# --------------------------------------------------------------------------------------------------- report
def git_head():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def collect_rows(pipe, args, path):
    """One row per model from the stage files that exist (missing values are absent)."""
    if not pipe.done("dense_eval"):
        return []
    dense = pipe.load("dense_eval")
    flops_len = shapes(args.prefill_shapes)[0][1]
    from transformers import AutoConfig

    def config_of(model_dir):
        import hf_dynamic  # noqa: F401

        return AutoConfig.from_pretrained(model_dir)

    dense_config = config_of(path)
    dense_flops = forward_flops_per_token(dense_config, flops_len)
    rows = [{"model": "dense", "key": "dense", "params": dense["params"], "params_ratio": 1.0,
             "flops_per_token": dense_flops, "flops_ratio": 1.0, "ppl_before_recovery": dense["ppl"],
             "ppl": dense["ppl"]}]
    dms_params = None
    for key, name, made in pruned_models(args):
        if not pipe.done(made):
            continue
        info = pipe.load(made)
        dms_params = dms_params or info["params"]
        cfg = config_of(info["model_dir"])
        flops = forward_flops_per_token(cfg, flops_len)
        r = {"model": name, "key": key, "params": info["params"], "params_ratio": info["params"] / dense["params"],
             "params_vs_dms": info["params"] / dms_params - 1.0, "flops_per_token": flops,
             "flops_ratio": flops / dense_flops}
        r["search_s" if key.startswith("dms") else "prune_s"] = info.get("search_s", info.get("prune_s"))
        if pipe.done(f"eval_{key}_pruned"):
            r["ppl_before_recovery"] = pipe.load(f"eval_{key}_pruned")["ppl"]
            r["ppl"] = r["ppl_before_recovery"]
        if args.recovery != "none":
            r.pop("ppl", None)
            if pipe.done(f"recover_{key}"):
                r["recovery_s"] = pipe.load(f"recover_{key}")["seconds"]
            if pipe.done(f"eval_{key}_recovered"):
                r["ppl"] = pipe.load(f"eval_{key}_recovered")["ppl"]
        r["config"] = {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                       "num_key_value_heads", "intermediate_size")}
        for k in ("layer_num_attention_heads", "layer_intermediate_sizes"):
            if getattr(cfg, k, None) is not None:
                r["config"][k] = getattr(cfg, k)
        rows.append(r)
    for key, source, loss in recovery_runs(args):
        base = next((r for r in rows if r["key"] == source), None)
        if key == source or base is None:
            continue
        r = {k: v for k, v in base.items() if k not in ("ppl", "recovery_s")}
        r.update(model=f"{base['model']}, ablation: next-token loss only", key=key, ablation=True)
        if pipe.done(f"recover_{key}"):
            r["recovery_s"] = pipe.load(f"recover_{key}")["seconds"]
        if pipe.done(f"eval_{key}_recovered"):
            r["ppl"] = pipe.load(f"eval_{key}_recovered")["ppl"]
        rows.append(r)
    for stage in ("full_eval_dense", "full_eval_final_dms", "full_eval_best_baseline"):
        if pipe.done(stage):
            full = pipe.load(stage)
            next(r for r in rows if r["key"] == full["model"])["ppl_full"] = full["ppl"]
    if pipe.done("speed"):
        speed = pipe.load("speed")["models"]
        for r in rows:
            if r["key"] in speed:
                r.update({k: v for k, v in speed[r["key"]].items() if k != "threads"})
        base = rows[0]
        for r in rows:
            if "flops_measured" not in r:
                continue
            for shape, flops in r["flops_measured"].items():
                key = f"prefill_tokens_per_s_{shape}"
                if key in r and key in base:
                    speedup, reduction = r[key] / base[key], base["flops_measured"][shape] / flops
                    r[f"prefill_speedup_{shape}"] = speedup
                    r[f"flop_reduction_{shape}"] = reduction
                    r[f"speedup_over_flop_reduction_{shape}"] = speedup / reduction
    return rows


def targets_check(rows, stage_seconds):
    """The evidence targets (DMS vs the baselines, speed-up vs FLOPs, search share) as measured facts (True / False; None while a value is missing)."""
    by = {r["key"]: r for r in rows}

    def ppl(key):
        return by.get(key, {}).get("ppl")

    dms, mag, tay = ppl("dms"), ppl("magnitude"), ppl("taylor")
    out = {
        "dms_ppl_le_0.8x_magnitude": None if None in (dms, mag) else dms <= 0.8 * mag,
        "dms_ppl_below_taylor": None if None in (dms, tay) else dms < tay,
        "baselines_within_1pct_of_dms_params": all(abs(r["params_vs_dms"]) <= 0.01 for r in rows
                                                   if r["key"] in BASELINES),
    }
    out.update(distillation_targets(rows))
    ratios = [v for r in rows[1:] for k, v in r.items() if k.startswith("speedup_over_flop_reduction_")]
    out["prefill_speedup_ge_0.8x_flop_reduction"] = (min(ratios) >= 0.8) if ratios else None
    search = sum(v for k, v in stage_seconds.items() if k.startswith("search_"))
    total = sum(stage_seconds.values())
    out["search_share_of_pipeline"] = search / total if total else None
    out["search_le_30pct_of_pipeline"] = (search / total <= 0.3) if total else None
    return out


def distillation_targets(rows) -> dict:
    """Issue #27's targets as measured ratios (None while a value is missing): each per-layer DMS model's recovered
    perplexity over dense's and over the best baseline's (the lowest recovered baseline at the same recovery), on
    the comparison windows and, where both have it, on the whole test set; and distillation's perplexity minus the
    next-token ablation's (negative: distillation is better)."""
    by = {r["key"]: r for r in rows}
    dense = by.get("dense", {})
    per_layer = [r for r in rows if r["key"].startswith("dms_per_layer") and not r.get("ablation")]
    baselines = [r for r in rows if r["key"] in BASELINES and "ppl" in r]
    best = min(baselines, key=lambda r: r["ppl"]) if baselines else None
    out = {"best_baseline": best["key"] if best else None}
    for r in per_layer:
        for col, tag in (("ppl", ""), ("ppl_full", "_full")):
            mine = r.get(col)
            out[f"{r['key']}_over_dense{tag}"] = mine / dense[col] if mine and dense.get(col) else None
            theirs = best.get(col) if best else None
            out[f"{r['key']}_over_best_baseline{tag}"] = mine / theirs if mine and theirs else None
    for r in rows:
        if r.get("ablation") and r["key"].endswith("_ntp"):
            source = r["key"].removesuffix("_ntp")
            kd = by.get(source, {}).get("ppl")
            out[f"{source}_kd_minus_ntp_ppl"] = kd - r["ppl"] if kd is not None and "ppl" in r else None
    return out


def report(pipe, state, echo=True):
    args = state["args"]
    rows = collect_rows(pipe, args, state["path"])
    stage_files = sorted(f[:-5] for f in os.listdir(pipe.dir) if f.endswith(".json"))
    stage_seconds = {s: pipe.load(s)["seconds"] for s in stage_files}
    searches = {s: pipe.load(s) for s in stage_files if s.startswith("search_")}
    results = {
        "study": "DMS vs structured-pruning baselines on SmolLM2, 2-core CPU",
        "model_path": state["path"], "target": args.target,
        "command": "python examples/llama_prune/prune_llama.py " + shlex.join(state["argv"]),
        "commit": git_head(), "machine": {**machine_info(args.device), "load_average": os.getloadavg()},
        "args": vars(args),
        "plan": pipe.load("plan") if pipe.done("plan") else None,
        "eval": {"window": args.eval_window, "comparison_tokens": (pipe.load("dense_eval")["tokens"]
                                                                  if pipe.done("dense_eval") else None),
                 "protocol": "WikiText-2 test (hf_dynamic.load_text), tokenised once; comparison rows on its first "
                             "tokens (the plan's eval_windows × window), non-overlapping windows"},
        "rows": rows, "stage_seconds": stage_seconds, "total_stage_seconds": sum(stage_seconds.values()),
        "targets": targets_check(rows, stage_seconds),
        "search_log": {s: d["history"] for s, d in searches.items()},
        "exports": {s: {"rule": d.get("export_rule", "paper"), "meet_target": d.get("meet_target"),
                        "resource_hard": d["summary"].get("resource_hard")} for s, d in searches.items()},
    }
    os.makedirs(args.results_dir, exist_ok=True)
    write_json_atomic(os.path.join(args.results_dir, "results.json"), results)
    table = markdown(results)
    with open(os.path.join(args.results_dir, "results.md"), "w") as f:
        f.write(table)
    if results["search_log"]:
        plot_search(results["search_log"], os.path.join(args.results_dir, "search_trajectory.png"))
    if len(rows) > 1:
        plot_ppl_vs_params([rows], os.path.join(args.results_dir, "ppl_vs_params.png"))
    if echo:
        print(table, flush=True)
    return results


def fmt(v, c=""):
    if isinstance(v, bool) or v is None:
        return "—" if v is None else ("yes" if v else "no")
    if isinstance(v, float):
        return f"{v:.3f}" if "ratio" in c or "speedup" in c or "reduction" in c else (
            f"{v:.2f}" if abs(v) < 1e4 else f"{v:,.0f}")
    return f"{v:,}" if isinstance(v, int) else str(v)


def md_table(rows, cols, names=None):
    lines = ["| " + " | ".join(names or cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c), c) for c in cols) + " |" for r in rows]
    return lines


def markdown(results):
    args, plan, rows = results["args"], results["plan"], results["rows"]
    m = results["machine"]
    lines = [
        f"# DMS pruning of SmolLM2-135M to {args['target']:.0%} of the parameters",
        "",
        f"Model `{results['model_path']}`; machine: {m.get('cpu')} ({m.get('cores')} cores, {m.get('torch_threads')} "
        f"torch threads), torch {m.get('torch')}, transformers {m.get('transformers')}; commit `{results['commit']}`.",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    if plan:
        t, e = plan["measured"], plan["estimate"]
        lines += [
            "## Plan (measured before the run)",
            "",
            f"Measured on the dense model ({t.get('clock', 'wall')} seconds): evaluation window 1 × "
            f"{plan['eval_window']} {t['eval_window_s']:.2f} s; "
            f"search step {plan['search_batch_size']} × {plan['seq_len']} {t['search_step_s']:.2f} s; recovery step "
            f"{plan['recovery_batch_size']} × {plan['seq_len']} {t['recovery_step_s']:.2f} s (load average "
            f"{t['load_average'][0]:.1f} on {m.get('cores')} cores).",
            "",
            f"Chosen: {plan['max_search_steps']} search steps (keep-ratio lr {plan['keep_ratio_lr']:.3g}), "
            f"{plan['recovery_steps']} recovery steps, comparison on the first {plan['eval_windows'] or 'all'} "
            f"windows of {plan['eval_window']} tokens. Reason: {plan['reason']}. Estimated total "
            f"{e['total_s'] / 60:.1f} min (search {e['search_share_of_total']:.0%}).",
            "",
        ]
    if rows:
        lines += ["## Perplexity (WikiText-2 test, comparison windows)", "",
                  f"{results['eval']['comparison_tokens']} tokens in windows of {args['eval_window']}; "
                  "\"pruning only\" = no recovery.", ""]
        table = [rows[0]] + [dict(r, model=f"{r['model']} (pruning only)", ppl=r.get("ppl_before_recovery"),
                                  recovery_s=None) for r in rows[1:] if not r.get("ablation")]
        if args["recovery"] != "none":
            table += [dict(r, model=f"{r['model']} + recovery") for r in rows[1:]]
        lines += md_table(table, ["model", "params", "params_ratio", "flops_ratio", "ppl", "search_s", "prune_s",
                                  "recovery_s"], ["model", "params", "params ratio", "FLOPs ratio", "ppl",
                                                  "search s", "prune s", "recovery s"])
        full = [r for r in rows if "ppl_full" in r]
        if full:
            lines += ["", "## Full WikiText-2 test set", ""] + md_table(full, ["model", "params", "ppl_full"])
        pl, un = next((r for r in rows if r["key"] == "dms_per_layer"), None), next(
            (r for r in rows if r["key"] == "dms"), None)
        if pl and un and "ppl" in pl and "ppl" in un:
            better = "beats" if pl["ppl"] < un["ppl"] else "does not beat"
            lines += ["", f"Per-layer DMS ({pl['params']:,} params, ppl {pl['ppl']:.2f}) {better} uniform DMS "
                          f"({un['params']:,} params, ppl {un['ppl']:.2f})."]
        speed_cols = [c for c in rows[0] if c.startswith(("prefill_tokens", "decode_tokens", "peak_", "model_peak",
                                                          "llama_cpp_"))]
        if speed_cols:
            timing = next((r["timing"] for r in rows if "timing" in r), "mean of 3 reps")
            lines += ["", f"## Speed (each model in a fresh process, same threads; {timing})", ""]
            ratio_cols = dict.fromkeys(c for r in rows for c in r if c.startswith(
                ("prefill_speedup", "flop_reduction", "speedup_over")))  # the ablation row has no speed of its own
            lines += md_table(rows, ["model"] + speed_cols + list(ratio_cols))
    exports = results.get("exports") or {}
    if exports:
        lines += ["", "## Export rule", ""]
        for stage, e in exports.items():
            fit = e.get("meet_target")
            if fit:
                lines.append(f"- {stage}: `meet_target` (exact target): hard resource {fit['before']:.4f} (paper's "
                             f"rule c' ≥ 1 − e) → {fit['after']:.4f} for target {fit['target']:.2f}")
            else:
                lines.append(f"- {stage}: the paper's hard mask c' ≥ 1 − e (floor(N·e) + 1 elements kept), hard "
                             f"resource {e['resource_hard']:.4f}")
    lines += ["", "## Targets (measured, not goals)", ""]
    lines += [f"- {k}: {fmt(v, 'ratio')}" for k, v in results["targets"].items()]
    lines += ["", "## Stage times", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in results["stage_seconds"].items()]
    lines.append(f"- total: {results['total_stage_seconds'] / 60:.1f} min")
    return "\n".join(lines) + "\n"


def plot_ppl_vs_params(runs: list, path: str) -> None:
    """Perplexity vs parameters of every model of ``runs`` (one list of rows per run, e.g. one per target, all in
    the same axes): one colour per method, pruning only (open marker) joined to after recovery (filled). Methods sit
    side by side around their parameter count (a small horizontal offset per method, noted on the axis), since every
    row of one target has the same count within 1 %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(r["key"] for run in runs for r in run if r["key"] != "dense"))
    names = {r["key"]: r["model"] for run in runs for r in run}
    span = max(r["params"] for run in runs for r in run) / 1e6
    step = span * 0.012  # the per-method offset, in M parameters
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for run in runs:
        for r in run:
            x = r["params"] / 1e6
            if r["key"] == "dense":
                ax.scatter(x, r["ppl"], marker="s", color="black", s=50, zorder=3)
                continue
            i = keys.index(r["key"])
            x += (i - (len(keys) - 1) / 2) * step
            color = f"C{i % 10}"
            before = None if r.get("ablation") else r.get("ppl_before_recovery")
            after = r.get("ppl") if r.get("recovery_s") is not None else None
            if before is not None and after is not None:
                ax.plot([x, x], [before, after], color=color, lw=1, zorder=1)
            if before is not None:
                ax.scatter(x, before, marker="o", facecolors="none", edgecolors=color, s=45, zorder=2)
            if after is not None:
                ax.scatter(x, after, marker="D" if r.get("ablation") else "o", color=color, s=45, zorder=2)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="s", color="black", ls="", label="dense")]
    handles += [Line2D([], [], marker="D" if any(r.get("ablation") for run in runs for r in run if r["key"] == k)
                       else "o", color=f"C{i % 10}", ls="", label=names[k]) for i, k in enumerate(keys)]
    handles += [Line2D([], [], marker="o", color="grey", mfc="none", ls="", label="open: pruning only"),
                Line2D([], [], marker="o", color="grey", ls="", label="filled: recovered")]
    ax.set_yscale("log")
    ax.set_xlabel(f"parameters (M); methods offset by {step:.1f} M each to be told apart")
    ax.set_ylabel("WikiText-2 perplexity (comparison windows)")
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(fig)


def plot_results(argv):
    """``--plot_results OUT.png RESULTS.json [RESULTS.json ...]``: :func:`plot_ppl_vs_params` over several runs
    (e.g. the 80 % and 50 % tables in one figure)."""
    if len(argv) < 3:
        raise ValueError(f"--plot_results needs OUT.png and at least one results.json, got {argv[1:]}")
    out, *paths = argv[1:]
    runs = []
    for p in paths:
        with open(p) as f:
            runs.append(json.load(f)["rows"])
    plot_ppl_vs_params(runs, out)


def plot_search(logs: dict, path: str) -> None:
    """Resource (target, soft, hard) and losses vs step, and the keep ratio per kind, one row per search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(logs), 3, figsize=(13, 3.4 * len(logs)), squeeze=False)
    for row, (name, history) in zip(axes, logs.items()):
        steps = [h["step"] for h in history]
        for k in ("dms/target", "dms/resource_soft", "dms/resource_hard"):
            row[0].plot(steps, [h.get(k) for h in history], label=k[4:])
        for k in ("dms/task_loss", "dms/resource_loss"):
            row[1].plot(steps, [h.get(k, float("nan")) for h in history], label=k[4:])
        for k in sorted(k for k in history[0] if k.startswith("dms/keep_")):
            row[2].plot(steps, [h[k] for h in history], label=k[4:])
        for ax, title in zip(row, ("resource (fraction of dense)", "loss", "keep ratio per kind")):
            ax.set_title(f"{name}: {title}")
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
