#!/usr/bin/env python
"""The slimmable-network table (issue #29, docs/slim.md): MiniLM on MRPC and RTE, 3 seeds, on the CPU.

    nice python examples/glue/slim_table.py              # run (or continue) every run, then the table
    python examples/glue/slim_table.py --tables_only     # only regenerate the table and plot from the run files
    python examples/glue/slim_table.py --dry_run         # print the commands

Protocol (fixed before any run):
- Backbone: the packaged all-MiniLM-L6-v2, FFN channels and heads ordered by magnitude importance
  (``slim.make_slimmable``), so every width is a prefix.
- Runs per task and seed (:data:`RUNS`): ``slim`` — one slimmable model trained with the sandwich rule (widths 1.0,
  0.25 and 2 random, in-place distillation at T = 1), evaluated at widths 1.0 / 0.75 / 0.5 / 0.25 (and searched /
  gated where the run file has those parts); ``alone_<w>`` — the same ordered model cut to width ``w`` and
  fine-tuned alone with the plain Trainer and the same recipe.
- Recipe (:data:`RECIPE`), the same for every run, not tuned for any of them: AdamW, lr 1e-4, linear schedule,
  6 % warm-up, batch 32, max length 128, 3 epochs (as the GLUE tables), random batches (the sampler the fresh-seed
  protocol found fair: ``group_by_length`` is a recipe choice that favoured one variant on STS-B).
- Data: every run trains on 90 % of the training rows; the carved, label-stratified 10 %
  (``--carve_validation 0.1 --carve_seed 0``, the same rows for every run) is what any choice reads (the AutoSlim
  search, the gate's budget); dev is reported once per width.
- Seeds :data:`SEEDS`. Claims (:func:`claims`): the paired difference over seeds slim − alone at every width
  (target: within 1 point, i.e. the 95 % interval's lower end above −1), with its 95 % t interval and the paired
  t-test (``hf_dynamic.data.statistics``); the majority-class dev metric is printed beside every row.
- Sizing: a run's wall time is recorded in its file; the sandwich run costs about 2.5 full-width passes per step.

Files: ``<results_dir>/<task>/<run>-s<seed>.json`` (run_glue's results, the command, the machine, the commit; a
finished run is skipped on restart), the table ``<results_dir>/slim_table.{md,json}`` and the metric-vs-cost plot
``slim_table_<task>.png`` (latency from ``bench/results/slim_cpu.json`` where that file exists, FLOPs otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import compare  # noqa: E402  (the GLUE driver beside this script: machine, commit, statistics, majority class)

WIDTHS = (1.0, 0.75, 0.5, 0.25)
RUNS = {"slim": ("slim", []), **{f"alone_{w}": ("slim_alone", ["--slim_width", str(w)]) for w in WIDTHS}}
TASKS = ("mrpc", "rte")
SEEDS = (1, 2, 3)
RECIPE = ["--learning_rate", "1e-4", "--num_train_epochs", "3", "--max_seq_length", "128",
          "--carve_validation", "0.1", "--carve_seed", "0", "--save_model", "false"]
WITHIN = 1.0  # the target: slim within 1 point of the model trained alone at every width
RESULTS_DIR = os.path.join(HERE, "results", "cpu", "slim")
LATENCY_FILE = os.path.join(REPO, "bench", "results", "slim_cpu.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=sorted(compare.MAIN_METRIC))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--results_dir", default=RESULTS_DIR)
    p.add_argument("--work_dir", default=os.path.join(REPO, "outputs", "glue_slim"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--tables_only", action="store_true")
    p.add_argument("--dry_run", action="store_true")
    return p.parse_known_args(argv)


def run_file(results_dir, task, run, seed) -> str:
    return os.path.join(results_dir, task, f"{run}-s{seed}.json")


def command(args, task, run, seed, passthrough) -> list[str]:
    variant, flags = RUNS[run]
    cmd = [sys.executable, os.path.join(HERE, "run_glue.py"), "--task", task, "--variant", variant, "--seed",
           str(seed), "--output_dir", os.path.join(args.work_dir, task, run, f"s{seed}"), *RECIPE, *flags]
    if args.device == "cpu":
        cmd.append("--use_cpu")
    return cmd + passthrough


def run_record(args, task, run, seed, cmd, eval_results: dict, wall_s: float) -> dict:
    """One run file: identity, command, machine, commit, and run_glue's per-width measurements."""
    return {
        "task": task, "run": run, "seed": seed, "main_metric_name": compare.MAIN_METRIC[task],
        "slim": eval_results["slim"], "metrics": eval_results["metrics"],
        "train_runtime_s": eval_results.get("train_runtime_s"), "wall_s": wall_s,
        "command": " ".join(["python", os.path.relpath(cmd[1], REPO), *cmd[2:]]),
        "machine": compare.machine_info(args.device), "commit": compare.git_commit(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def ensure_run(args, task, run, seed, passthrough) -> bool:
    """Run one (task, run, seed) unless its file exists (``compare.run_once``); True when it ran."""
    path = run_file(args.results_dir, task, run, seed)
    cmd = command(args, task, run, seed, passthrough)
    return compare.run_once(path, cmd, dict(os.environ),
                            lambda results, wall: run_record(args, task, run, seed, cmd, results, wall),
                            args.dry_run, label="slim_table")


# --- the table ---------------------------------------------------------------------------------------------------
def load_runs(results_dir: str) -> list[dict]:
    runs = []
    for task in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        folder = os.path.join(results_dir, task)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                with open(os.path.join(folder, name)) as f:
                    runs.append(json.load(f))
    return runs


def dev_metric(record: dict, width: float) -> float | None:
    """The dev main metric (a fraction) of a run file at ``width`` (None when it was not evaluated there)."""
    entry = record["slim"]["widths"].get(str(width))
    if entry is None:
        return None
    return entry["validation"][record["main_metric_name"]]


def width_values(runs, task, run, width, key=dev_metric) -> dict[int, float]:
    return {r["seed"]: v for r in runs if r["task"] == task and r["run"] == run
            for v in [key(r, width)] if v is not None}


def width_cost(runs, task, width) -> dict:
    """FLOP fraction and active parameters at ``width`` (the same for every run that has it)."""
    for r in runs:
        entry = r["task"] == task and r["slim"]["widths"].get(str(width))
        if entry:
            return {"flop_fraction": entry["flop_fraction"], "active_parameters": entry["active_parameters"]}
    return {}


def load_latency(path: str = LATENCY_FILE) -> dict:
    """``{(batch, width): seconds}`` from the slim benchmark's JSON (empty when it has not run)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        bench = json.load(f)
    return {(row["batch_size"], row["width"]): row for row in bench["rows"]}


def part_metric(part: str):
    """``value(record, width)``: the dev main metric of the run's ``part`` ("search" / "gate") at the budget of
    uniform width ``width`` (None where the run has no such entry)."""

    def value(record, width):
        entry = record["slim"].get(part, {}).get("budgets", {}).get(str(width))
        return None if entry is None else entry["validation"][record["main_metric_name"]]

    return value


def part_cost(runs, task, part, width) -> list[float]:
    """The FLOP fractions the ``part`` reached at uniform width ``width``'s budget, one per run."""
    return [r["slim"][part]["budgets"][str(width)]["flop_fraction"] for r in runs
            if r["task"] == task and r["run"] == "slim" and str(width) in r["slim"].get(part, {}).get("budgets", {})]


def budget_rows(runs, task) -> list[dict]:
    """Per budget (the FLOPs of a uniform width < 1): the searched and the gated widths against the uniform width of
    the same slimmable model, paired over seeds (searched / gated − uniform)."""
    rows = []
    for w in WIDTHS[1:]:
        uniform = width_values(runs, task, "slim", w)
        row = {"width": w, "uniform": compare.mean_std(list(uniform.values())) if uniform else None}
        for part in ("search", "gate"):
            values = width_values(runs, task, "slim", w, key=part_metric(part))
            cost = part_cost(runs, task, part, w)
            row[part] = compare.mean_std(list(values.values())) if values else None
            row[f"{part}_cost"] = sum(cost) / len(cost) if cost else None
            row[f"{part}_vs_uniform"] = compare.compare_by_seed(values, uniform)
        rows.append(row)
    return rows


def claims(runs, tasks) -> dict:
    """Per task and width: slim − alone paired over seeds (× 100), its 95 % interval, p, and whether the target
    (the interval's lower end above −``WITHIN``) holds."""
    out = {}
    for task in tasks:
        for w in WIDTHS:
            c = compare.compare_by_seed(width_values(runs, task, "slim", w), width_values(runs, task, f"alone_{w}", w))
            if c is not None:
                c = {**c, "within_target": c["ci_low"] * 100 > -WITHIN}
            out[f"{task}/{w}"] = c
    return out


def summarise(runs, tasks) -> dict:
    table = {}
    for task in tasks:
        rows = []
        for w in WIDTHS:
            slim_v = list(width_values(runs, task, "slim", w).values())
            alone_v = list(width_values(runs, task, f"alone_{w}", w).values())
            rows.append({"width": w, **width_cost(runs, task, w),
                         "slim": compare.mean_std(slim_v) if slim_v else None,
                         "alone": compare.mean_std(alone_v) if alone_v else None})
        table[task] = {"rows": rows, "budgets": budget_rows(runs, task), "majority": compare.majority_baseline(task)}
    return {"tasks": table, "claims": claims(runs, tasks)}


def _claim_cell(c: dict | None) -> str:
    """``compare._claim_cell`` (difference × 100, interval, p, n, verdict) plus ✓ / ✗ for the within-1-point target."""
    return compare._claim_cell(c) + ("" if c is None else " ✓" if c["within_target"] else " ✗")


def markdown(summary: dict, runs, latency: dict) -> str:
    lines = ["# Slimmable MiniLM on GLUE (issue #29)", "",
             "Generated by `python examples/glue/slim_table.py` from the run files in this folder; the protocol is "
             "the script's docstring. Dev metric × 100, mean ± std (n); slim − alone paired over seeds with its 95 % "
             f"t interval and the paired t-test; ✓ where the interval's lower end is above −{WITHIN:g} (the target: "
             "within 1 point of the model trained alone).", ""]
    if runs:
        lines += [f"Machine: {runs[0]['machine']['cpu']} ({runs[0]['machine']['cores']} cores, "
                  f"{runs[0]['machine']['torch_threads']} torch threads), torch {runs[0]['machine']['torch']}.", ""]
    for task, t in summary["tasks"].items():
        metric = compare.MAIN_METRIC[task]
        lines += [f"## {task} ({metric})", "",
                  "| width | FLOPs (× full) | active params (M) | latency b1 / b32 (ms) | slimmable | trained alone | "
                  "slim − alone [95 % CI], p | majority class |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in t["rows"]:
            lat = [latency.get((b, row["width"])) for b in (1, 32)]
            lat_cell = " / ".join(f"{x['ms']:.1f}" if x else "–" for x in lat)
            params = f"{row['active_parameters'] / 1e6:.2f}" if "active_parameters" in row else "–"
            flops = f"{row['flop_fraction']:.3f}" if "flop_fraction" in row else "–"
            claim = _claim_cell(summary["claims"].get(f"{task}/{row['width']}"))
            lines.append(f"| {row['width']:g} | {flops} | {params} | {lat_cell} | {compare._cell(row['slim'])} | "
                         f"{compare._cell(row['alone'])} | {claim} | {t['majority']:.1f} |")
        lines += ["", f"Searched (AutoSlim on the carved rows) and gated (input-dependent width) against the uniform "
                  f"width of the same slimmable model, at the uniform width's FLOPs (the searched / gated FLOP "
                  f"fraction reached in brackets; a claim holds where the interval excludes zero):", "",
                  "| budget = FLOPs of width | uniform | searched | searched − uniform | gated | gated − uniform | "
                  "majority class |", "|---|---|---|---|---|---|---|"]
        for b in t["budgets"]:
            def part(name, b=b):
                cost = b[f"{name}_cost"]
                return compare._cell(b[name]) + (f" ({cost:.3f})" if cost is not None else "")
            lines.append(f"| {b['width']:g} | {compare._cell(b['uniform'])} | {part('search')} | "
                         f"{compare._claim_cell(b['search_vs_uniform'])} | {part('gate')} | {compare._claim_cell(b['gate_vs_uniform'])} "
                         f"| {t['majority']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(summary: dict, runs, latency: dict, task: str, path: str) -> bool:
    """Dev metric against measured latency at batch 1 (left, where ``bench/slim.py`` has run) and against FLOPs
    (right, with the searched and gated widths) for ``task``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = summary["tasks"][task]
    rows = t["rows"]
    if not any(r["slim"] or r["alone"] for r in rows):
        return False
    use_latency = all(latency.get((1, r["width"])) for r in rows)
    fig, axes = plt.subplots(1, 2 if use_latency else 1, figsize=(10 if use_latency else 5.5, 4), squeeze=False)
    panels = ([("latency", axes[0][0])] if use_latency else []) + [("flops", axes[0][-1])]
    for kind, ax in panels:
        xs = [latency[(1, r["width"])]["ms"] if kind == "latency" else r.get("flop_fraction", r["width"])
              for r in rows]
        for key, style, label in (("slim", "o-", "slimmable (one model)"), ("alone", "s--", "each width alone")):
            pts = [(x, r[key]["mean"], r[key]["std"]) for x, r in zip(xs, rows) if r[key]]
            if pts:
                ax.errorbar(*zip(*[(p[0], p[1]) for p in pts]), yerr=[p[2] for p in pts], fmt=style, label=label,
                            capsize=3)
        if kind == "flops":
            for part, marker, label in (("search", "^", "searched (AutoSlim)"), ("gate", "D", "gated (per input)")):
                pts = [(b[f"{part}_cost"], b[part]["mean"]) for b in t["budgets"] if b[part]]
                if pts:
                    ax.plot(*zip(*pts), marker, label=label)
        ax.axhline(t["majority"], color="grey", lw=0.8, ls=":", label="majority class")
        ax.set_xlabel("latency, batch 1 (ms)" if kind == "latency" else "FLOPs (fraction of full width)")
        ax.set_ylabel(f"dev {compare.MAIN_METRIC[task]} × 100")
        ax.legend(fontsize=7)
    fig.suptitle(f"Slimmable MiniLM, {task.upper()}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_tables(args) -> str:
    runs = [r for r in load_runs(args.results_dir) if r["task"] in args.tasks]
    summary = summarise(runs, args.tasks)
    latency = load_latency()
    compare.write_json_atomic(os.path.join(args.results_dir, "slim_table.json"), summary)
    text = markdown(summary, runs, latency)
    with open(os.path.join(args.results_dir, "slim_table.md"), "w") as f:
        f.write(text)
    for task in args.tasks:
        plot(summary, runs, latency, task, os.path.join(args.results_dir, f"slim_table_{task}.png"))
    return text


def main(argv=None):
    args, passthrough = parse_args(argv)
    os.makedirs(args.results_dir, exist_ok=True)
    if not args.tables_only:
        for seed in args.seeds:
            for task in args.tasks:
                for run in args.runs:
                    if ensure_run(args, task, run, seed, passthrough) and not args.dry_run:
                        write_tables(args)
    if not args.dry_run:
        print(write_tables(args))


if __name__ == "__main__":
    main()
