#!/usr/bin/env python
"""Prune SmolLM2-135M (or any Llama checkpoint) with DMS and compare with structured-pruning baselines.

Pipeline (DMS: ``docs/dms.md``):

1. dense model: WikiText-2 test perplexity, parameters, prefill / greedy-decode speed;
2. DMS search under ``DMSTrainer`` + ``DMSCallback`` on War and Peace (structure-only on the frozen model by
   default, ``--search_mode joint`` to train the weights too), then export (stock ``LlamaForCausalLM``, the default,
   or ``dms_llama`` with ``--per_layer``, by ``DMSLlamaForCausalLM.from_pruned``);
3. baselines at the DMS model's parameter count: L2-magnitude and one-shot first-order Taylor (LLM-Pruner-style)
   structured pruning of heads and MLP channels, uniform across layers;
4. the same recovery fine-tuning budget for every pruned model (``--recovery full|lora|none``);
5. perplexity / parameters / FLOPs / speed of each → ``results.json`` + ``results.md`` in ``--output_dir``; the
   DMS model is saved to ``<output_dir>/dms_model``.

GPU run (the real measurement; defaults)::

    python examples/llama_prune/prune_llama.py --device cuda --target 0.5 --output_dir out/llama_prune_50

CPU smoke run (minutes)::

    python examples/llama_prune/prune_llama.py --device cpu --max_search_steps 4 --search_batch_size 2 \\
        --seq_len 64 --recovery_steps 2 --eval_tokens 2048 --eval_window 256 --calibration_batches 2 \\
        --prefill_batch 1 --prefill_len 64 --decode_tokens 4 --decode_batches 1 2 --output_dir /tmp/llama_prune
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import time
import warnings
from contextlib import nullcontext

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="Llama checkpoint folder (default: hf_dynamic.smollm2_path())")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--target", type=float, default=0.5, help="parameter fraction to keep, in (0, 1)")
    p.add_argument("--prune", nargs="+", default=["heads", "mlp", "hidden", "layers"])
    p.add_argument("--head_grouping", choices=["kv", "query"], default="kv")
    p.add_argument("--per_layer", action="store_true", help="non-uniform search, exported as dms_llama")
    p.add_argument("--search_mode", choices=["frozen", "joint"], default="frozen")
    p.add_argument("--max_search_steps", type=int, default=300)
    p.add_argument("--search_batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=1024, help="tokens per search / recovery / calibration sample")
    p.add_argument("--channel_multiple", type=int, default=8,
                   help="exported MLP / hidden widths are multiples of this (GPU-friendly shapes)")
    p.add_argument("--keep_ratio_lr", type=float, default=1e-2)
    p.add_argument("--weight_lr", type=float, default=1e-5, help="weights' lr in --search_mode joint")
    p.add_argument("--resource_weight", type=float, default=5.0, help="initial w of the resource loss")
    p.add_argument("--resource_weight_adapt", type=float, default=0.05,
                   help="multiplier rate of w (0 = fixed w, the paper); see DMSPruner")
    p.add_argument("--recovery", choices=["full", "lora", "none"], default="full")
    p.add_argument("--recovery_steps", type=int, default=300)
    p.add_argument("--recovery_batch_size", type=int, default=8)
    p.add_argument("--recovery_lr", type=float, default=None, help="default 5e-5 (full) / 5e-4 (LoRA)")
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--baselines", nargs="*", default=["magnitude", "taylor"], choices=["magnitude", "taylor"])
    p.add_argument("--calibration_batches", type=int, default=16, help="one-shot Taylor batches")
    p.add_argument("--eval_tokens", type=int, default=0, help="limit WikiText-2 to its first N tokens (0 = all)")
    p.add_argument("--eval_window", type=int, default=2048)
    p.add_argument("--eval_batch_size", type=int, default=4)
    p.add_argument("--no_speed", action="store_true", help="skip the speed measurements")
    p.add_argument("--prefill_batch", type=int, default=8)
    p.add_argument("--prefill_len", type=int, default=2048)
    p.add_argument("--decode_tokens", type=int, default=256)
    p.add_argument("--decode_batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="out/llama_prune")
    args = p.parse_args(argv)
    if not 0.0 < args.target < 1.0:
        p.error(f"--target must be in (0, 1), got {args.target}")
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


def evaluate_ppl(model, tokenizer, text, args):
    from hf_dynamic import perplexity

    with autocast(args.device):
        return perplexity(model, tokenizer, text, window=args.eval_window, batch_size=args.eval_batch_size)[
            "perplexity"
        ]


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


@torch.no_grad()
def measure_speed(model, args):
    """Prefill tokens/s (batch × len, no cache) and greedy decode tokens/s per batch size (HF generate)."""
    dev = args.device
    # bf16 copy on the GPU (deployment dtype); the fp32 original is left untouched
    speed_model = copy.deepcopy(model).to(torch.bfloat16) if dev.startswith("cuda") else model
    speed_model.eval()
    vocab = model.config.vocab_size
    out = {}
    x = torch.randint(0, vocab, (args.prefill_batch, args.prefill_len), device=dev)
    speed_model(input_ids=x, use_cache=False)  # warm-up
    sync(dev)
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        speed_model(input_ids=x, use_cache=False)
    sync(dev)
    out["prefill_tokens_per_s"] = reps * x.numel() / (time.perf_counter() - t0)
    for b in args.decode_batches:
        prompt = torch.randint(0, vocab, (b, 32), device=dev)
        kwargs = dict(max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens, do_sample=False,
                      pad_token_id=0, attention_mask=torch.ones_like(prompt))
        speed_model.generate(prompt, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        speed_model.generate(prompt, **kwargs)
        sync(dev)
        out[f"decode_tokens_per_s_b{b}"] = b * args.decode_tokens / (time.perf_counter() - t0)
    del speed_model
    return out


def recover(model, blocks, args):
    """The recovery budget every pruned model gets: ``--recovery_steps`` AdamW steps on War and Peace."""
    if args.recovery == "none" or args.recovery_steps == 0:
        return model, 0.0
    from transformers import get_cosine_schedule_with_warmup

    lr = args.recovery_lr or (5e-5 if args.recovery == "full" else 5e-4)
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
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, max(1, args.recovery_steps // 20), args.recovery_steps)
    model.train()
    t0 = time.perf_counter()
    for step, ids in enumerate(sample_batches(blocks, args.recovery_batch_size, args.recovery_steps, args.seed + 1)):
        ids = ids.to(args.device)
        with autocast(args.device):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, args.recovery_steps // 5) == 0:
            print(f"  recovery step {step}: loss {loss.item():.4f}")
    sync(args.device)
    seconds = time.perf_counter() - t0
    if args.recovery == "lora":
        model = model.merge_and_unload()
    model.eval()
    return model, seconds


def load_dense(path, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()


def dms_search(model, blocks, args):
    from datasets import Dataset
    from transformers import TrainingArguments

    from hf_dynamic import DMSCallback, DMSPruner, DMSTrainer

    if args.search_mode == "frozen":
        model.requires_grad_(False)
    pruner = DMSPruner(
        model, args.target, prune=args.prune, uniform=not args.per_layer, head_grouping=args.head_grouping,
        resource_weight=args.resource_weight, resource_weight_adapt=args.resource_weight_adapt,
        channel_multiple=args.channel_multiple,
    )
    callback = DMSCallback(pruner, keep_ratio_lr=args.keep_ratio_lr)
    n = min(blocks.size(0), args.max_search_steps * args.search_batch_size)
    g = torch.Generator().manual_seed(args.seed)
    picked = blocks[torch.randperm(blocks.size(0), generator=g)[:n]]
    data = Dataset.from_dict({"input_ids": picked.tolist(), "labels": picked.tolist()})
    targs = TrainingArguments(
        output_dir=os.path.join(args.output_dir, "search"), max_steps=args.max_search_steps,
        per_device_train_batch_size=args.search_batch_size, learning_rate=args.weight_lr, weight_decay=0.0,
        lr_scheduler_type="constant", logging_steps=max(1, args.max_search_steps // 10), report_to=[],
        save_strategy="no", use_cpu=args.device == "cpu", bf16=args.device.startswith("cuda"),
        disable_tqdm=True, seed=args.seed, dataloader_drop_last=True,
    )
    trainer = DMSTrainer(model=model, args=targs, train_dataset=data, callbacks=[callback], pruner=pruner)
    sync(args.device)
    t0 = time.perf_counter()
    trainer.train()
    sync(args.device)
    seconds = time.perf_counter() - t0
    return pruner, callback, seconds


def baseline(kind, path, blocks, target_params, args):
    from hf_dynamic import DMSPruner
    from hf_dynamic.dms.baselines import magnitude_importance, match_parameter_count, one_shot_taylor_importance

    model = load_dense(path, args.device)
    pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"), uniform=True, head_grouping=args.head_grouping)
    t0 = time.perf_counter()
    if kind == "magnitude":
        magnitude_importance(pruner)
    else:
        batches = (
            ids.to(args.device) for ids in sample_batches(blocks, args.search_batch_size, args.calibration_batches, 7)
        )
        with autocast(args.device):
            one_shot_taylor_importance(pruner, batches)
    counts = match_parameter_count(pruner, target_params)
    exported = pruner.export(uniform=True)
    sync(args.device)
    seconds = time.perf_counter() - t0
    pruner.remove()
    del model, pruner
    return exported, counts, seconds


def row(name, model, ppl_before, ppl_after, dense_params, dense_flops, args, **extra):
    params = model.num_parameters()
    flops = forward_flops_per_token(model.config, args.prefill_len)
    r = {
        "model": name, "params": params, "params_ratio": params / dense_params,
        "flops_per_token": flops, "flops_ratio": flops / dense_flops,
        "ppl_before_recovery": ppl_before, "ppl": ppl_after, **extra,
    }
    if not args.no_speed:
        r.update(measure_speed(model, args))
    return r


def markdown(results, args):
    cols = ["model", "params", "params_ratio", "flops_ratio", "ppl_before_recovery", "ppl", "search_s",
            "recovery_s"]
    speed = [k for k in results["rows"][0] if k.startswith(("prefill", "decode"))]
    cols += speed
    lines = [
        f"# DMS pruning of {results['model_path']} (target {args.target:.0%} of parameters)",
        "",
        f"device: {results['device']}; WikiText-2 tokens evaluated: {results['eval_tokens']}; recovery: "
        f"{args.recovery} × {args.recovery_steps} steps; search: {args.search_mode}, {args.max_search_steps} steps",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    dense = results["rows"][0]
    for r in results["rows"]:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if isinstance(v, float):
                v = f"{v:.3f}" if c.endswith("ratio") else (f"{v:.2f}" if v < 1e4 else f"{v:,.0f}")
            elif isinstance(v, int):
                v = f"{v:,}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in results["rows"][1:]:
        if "prefill_tokens_per_s" in r:
            gain = r["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"]
            lines.append(f"- {r['model']}: prefill speed-up {gain:.2f}× for a FLOP reduction of "
                         f"{1 / r['flops_ratio']:.2f}×")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from hf_dynamic import load_text, smollm2_path

    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    path = str(args.model_path or smollm2_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    wiki = load_text("wikitext2")
    if args.eval_tokens:
        ids = tokenizer(wiki, verbose=False)["input_ids"][: args.eval_tokens]
        wiki = tokenizer.decode(ids)
    warpeace = torch.tensor(tokenizer(load_text("warpeace"), verbose=False)["input_ids"])
    blocks = chunks(warpeace, args.seq_len)
    eval_tokens = len(tokenizer(wiki, verbose=False)["input_ids"])
    print(f"model {path}; War and Peace {warpeace.numel()} tokens -> {blocks.size(0)} blocks of {args.seq_len}; "
          f"WikiText-2 eval {eval_tokens} tokens")

    rows = []
    model = load_dense(path, args.device)
    dense_params = model.num_parameters()
    dense_flops = forward_flops_per_token(model.config, args.prefill_len)
    dense_ppl = evaluate_ppl(model, tokenizer, wiki, args)
    print(f"dense: {dense_params:,} params, WikiText-2 ppl {dense_ppl:.3f}")
    rows.append(row("dense", model, dense_ppl, dense_ppl, dense_params, dense_flops, args))

    # ---- DMS search + export
    pruner, callback, search_s = dms_search(model, blocks, args)
    summary = pruner.summary()
    print(f"DMS search: {search_s:.1f} s; {json.dumps({k: round(v, 4) for k, v in summary.items()})}")
    if args.per_layer:
        from hf_dynamic import DMSLlamaForCausalLM

        dms = DMSLlamaForCausalLM.from_pruned(pruner, dtype=torch.float32)
    else:
        dms = pruner.export(dtype=torch.float32)
    pruner.remove()
    del model, pruner
    gc.collect()
    dms_params = dms.num_parameters()
    ppl0 = evaluate_ppl(dms, tokenizer, wiki, args)
    dms, rec_s = recover(dms, blocks, args)
    ppl1 = evaluate_ppl(dms, tokenizer, wiki, args)
    print(f"DMS: {dms_params:,} params ({dms_params / dense_params:.3f}), ppl {ppl0:.3f} -> {ppl1:.3f} after recovery")
    dms.save_pretrained(os.path.join(args.output_dir, "dms_model"))
    tokenizer.save_pretrained(os.path.join(args.output_dir, "dms_model"))
    rows.append(row("DMS", dms, ppl0, ppl1, dense_params, dense_flops, args, search_s=search_s, recovery_s=rec_s,
                    config={k: getattr(dms.config, k) for k in ("hidden_size", "num_hidden_layers",
                                                                "num_attention_heads", "num_key_value_heads",
                                                                "intermediate_size")}))
    del dms
    gc.collect()

    # ---- baselines at the same parameter count, same recovery budget
    for kind in args.baselines:
        model, counts, prune_s = baseline(kind, path, blocks, dms_params, args)
        b0 = evaluate_ppl(model, tokenizer, wiki, args)
        model, rec_s = recover(model, blocks, args)
        b1 = evaluate_ppl(model, tokenizer, wiki, args)
        print(f"{kind}: {model.num_parameters():,} params (heads {counts['heads']}, mlp {counts['mlp']}), "
              f"ppl {b0:.3f} -> {b1:.3f}")
        rows.append(row(kind, model, b0, b1, dense_params, dense_flops, args, search_s=prune_s, recovery_s=rec_s))
        del model
        gc.collect()

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = {
        "model_path": path, "device": device_name, "eval_tokens": eval_tokens, "args": vars(args), "rows": rows,
        "search_log": callback.history,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    table = markdown(results, args)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
