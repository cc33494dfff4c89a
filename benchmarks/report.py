"""From worker results to the results document (JSON) and its Markdown rendering.

Derived here, from the same formulas for every configuration: examples/s, FLOPs per step,
achieved GFLOP/s and % of the measured matmul peak, and the ratios to configurations 1 and 5.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.spec import CONFIG_BY_NAME, get_shape, step_flops

REFERENCES = ("tf_full", "torch_peft")  # ratios are given against configurations 1 and 5
SUBJECT = "jax_lora"  # the configuration the targets are about
TARGETS = {  # name: (threshold, comparison, what)
    "speedup_vs_tf_full": (1.5, ">=", "steps/s vs TF full fine-tune (1)"),
    "speedup_vs_torch_peft": (1.3, ">=", "steps/s vs PyTorch + PEFT LoRA (5)"),
    "pct_of_peak": (50.0, ">=", "achieved GFLOP/s, % of the fp32 matmul peak"),
    "rss_vs_tf_full": (0.4, "<=", "peak RSS / TF full fine-tune's"),
    "epoch_speedup": (10.0, ">=", "default-recipe epoch vs the exact TF replica"),
}


def derive(result: dict, peak_gflops: float | None) -> dict:
    """Add the computed metrics to an `ok` worker result."""
    job = result["job"]
    shape, config = get_shape(job["shape"]), CONFIG_BY_NAME[job["config"]]
    median = result["median_step_s"]
    flops = step_flops(shape, job["batch"], job["seq_len"], config.method, config.cls_only)
    full_flops = step_flops(shape, job["batch"], job["seq_len"], "full")
    metrics = {
        "steps_per_s": 1.0 / median,
        "examples_per_s": job["batch"] / median,
        "model_flops_per_step": flops,
        "full_ft_flops_per_step": full_flops,
        "achieved_gflops": flops / median / 1e9,
        "full_ft_equivalent_gflops": full_flops / median / 1e9,
    }
    if peak_gflops:
        metrics["pct_of_peak"] = 100 * metrics["achieved_gflops"] / peak_gflops
    return {**result, "number": config.number, "label": config.label, "method": config.method,
            "shape_spec": shape.to_dict(), "metrics": metrics}


def add_ratios(results: list[dict]) -> None:
    """Per shape: steps/s and peak RSS relative to configurations 1 and 5, where they ran."""
    for result in results:
        if result["status"] != "ok":
            continue
        for ref_name in REFERENCES:
            ref = next((r for r in results if r["status"] == "ok"
                        and r["job"]["config"] == ref_name
                        and r["job"]["shape"] == result["job"]["shape"]), None)
            if ref is not None:
                result["metrics"][f"speedup_vs_{ref_name}"] = (
                    ref["median_step_s"] / result["median_step_s"])
                result["metrics"][f"rss_vs_{ref_name}"] = (
                    result["peak_rss_bytes"] / ref["peak_rss_bytes"])


def check_targets(results: list[dict], epoch: dict | None) -> list[dict]:
    rows = []
    for result in results:
        if result["status"] != "ok" or result["job"]["config"] != SUBJECT:
            continue
        rows += [_target(name, result["metrics"][name], result["job"]["shape"])
                 for name in TARGETS if name in result["metrics"]]
    if epoch and epoch.get("status") == "ok":
        rows.append(_target("epoch_speedup", epoch["speedup"], epoch["shape"]))
    return rows


def _target(name: str, value: float, shape: str) -> dict:
    threshold, comparison, what = TARGETS[name]
    met = value >= threshold if comparison == ">=" else value <= threshold
    return {"target": name, "what": what, "shape": shape, "value": value,
            "threshold": f"{comparison} {threshold}", "met": met}


def base_dtypes(results: list[dict]) -> list[dict]:
    """Per shape, each JAX LoRA configuration's stored base (8-10 against 3, float32): bytes
    of the frozen kernels, the logits' largest gap from float32's on the same real rows, step
    time and peak RSS. Empty unless a base-dtype configuration ran."""
    ok = [r for r in results if r["status"] == "ok" and r["info"].get("base_dtype")
          and CONFIG_BY_NAME[r["job"]["config"]].method == "lora_adapter"]
    rows = []
    for shape in dict.fromkeys(r["job"]["shape"] for r in ok):
        same = [r for r in ok if r["job"]["shape"] == shape]
        if all(r["info"]["base_dtype"] == "float32" for r in same):
            continue
        reference = next((r for r in same if r["info"]["base_dtype"] == "float32"), None)
        for r in same:
            logits, gap, scale = r["info"].get("real_rows_logits"), None, None
            if logits is not None and reference is not None and reference["info"].get(
                    "real_rows_logits") is not None:
                ref = np.asarray(reference["info"]["real_rows_logits"])
                gap, scale = float(np.abs(np.asarray(logits) - ref).max()), float(np.abs(ref).max())
            frozen = r["info"]["frozen_kernel_bytes"]
            rows.append({"shape": shape, "config": r["job"]["config"],
                         "base_dtype": r["info"]["base_dtype"],
                         "frozen_stored_bytes": frozen["stored"],
                         "frozen_float32_bytes": frozen["float32"],
                         "logit_gap": gap, "logit_scale": scale,
                         "rows": len(logits) if logits is not None else 0,
                         "median_step_s": r["median_step_s"],
                         "peak_rss_bytes": r["peak_rss_bytes"]})
    return rows


def build(*, command: str, machine: dict, suite: str, settings: dict, peak: dict,
          results: list[dict], epoch: dict | None) -> dict:
    peak_gflops = peak.get("peak_fp32_gflops")
    results = [derive(r, peak_gflops) if r["status"] == "ok" else r for r in results]
    add_ratios(results)
    return {"schema": "watson-peft-benchmarks/1", "suite": suite, "command": command,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine, "settings": settings, "matmul_peak": peak,
            "results": results, "epoch_estimate": epoch,
            "base_dtypes": base_dtypes(results),
            "targets": check_targets(results, epoch)}


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(doc: dict) -> str:
    s, m, peak = doc["settings"], doc["machine"], doc["matmul_peak"]
    lines = [f"# Benchmarks: `{doc['suite']}` suite", "",
             f"Command: `{doc['command']}`  ", f"Date (UTC): {doc['date_utc']}, git "
             f"{m['git_commit'][:12]}{' (dirty tree)' if m['git_dirty'] else ''}  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}  ",
             f"Batch {s['batch']}, sequence length {s['seq_len']}, median of {s['steps']} steps "
             f"after {s['warmup']} warm-up steps, each configuration in its own process.", ""]
    loads = [x for r in doc["results"] for x in r.get("load_avg_1min", [])]
    if loads:
        lines += [f"Machine load (1-min average) around the workers: {min(loads):.1f} to "
                  f"{max(loads):.1f}. A worker alone brings it to about {m['cores']} (one "
                  f"thread per core); well above that, other processes competed and the "
                  f"timings are noisy.", ""]
    if s["jobs"] > 1:
        lines += [f"**Smoke run: {s['jobs']} configurations ran at once, so these timings are "
                  f"not comparable.**", ""]
    if peak["status"] == "ok":
        probes = ", ".join(f"{k} {v:.1f}" for k, v in peak["gflops"].items())
        lines += [f"fp32 matmul peak: **{peak['peak_fp32_gflops']:.1f} GFLOP/s** "
                  f"({peak['peak_backend']}, {peak['size']}² matmul, best of {peak['repeats']}; "
                  f"all probes in GFLOP/s: {probes}).", ""]
    for shape in s["shapes"]:
        lines += [f"## {shape}", "",
                  "| # | configuration | ms/step | examples/s | × steps/s vs 1 | × vs 5 "
                  "| GFLOP/step | GFLOP/s | % peak | peak RSS MiB | RSS / 1 | trainable params |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in doc["results"] if r["job"]["shape"] == shape):
            config = CONFIG_BY_NAME[r["job"]["config"]]
            if r["status"] != "ok":
                why = r.get("reason") or r.get("error", "")
                lines.append(f"| {config.number} | {config.label} | {r['status']}: {why} "
                             + "| " * 9 + "|")
                continue
            x = r["metrics"]
            lines.append(
                f"| {config.number} | {config.label} | {r['median_step_s'] * 1e3:.1f} "
                f"| {x['examples_per_s']:.2f} | {_fmt(x.get('speedup_vs_tf_full'), '.2f')} "
                f"| {_fmt(x.get('speedup_vs_torch_peft'), '.2f')} "
                f"| {x['model_flops_per_step'] / 1e9:.1f} | {x['achieved_gflops']:.1f} "
                f"| {_fmt(x.get('pct_of_peak'), '.0f')} | {r['peak_rss_bytes'] / 2**20:.0f} "
                f"| {_fmt(x.get('rss_vs_tf_full'), '.2f')} | {r['trainable_params']:,} |")
        lines.append("")
    lines += base_dtype_lines(doc.get("base_dtypes") or [])
    lines += epoch_lines(doc["epoch_estimate"])
    if doc["targets"]:
        lines += ["## Targets (JAX LoRA)", "", "| target | shape | measured | needed | met |",
                  "|---|---|---:|---:|---|"]
        lines += [f"| {t['what']} | {t['shape']} | {t['value']:.2f} | {t['threshold']} "
                  f"| {'yes' if t['met'] else '**no**'} |" for t in doc["targets"]]
        lines.append("")
    return "\n".join(lines)


def base_dtype_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Stored base (jax_lora --base-dtype)", "",
             "Frozen kernels: the encoder's projections and the pooler, as stored (codes and "
             "scales). Logit gap: the largest |logit − float32's| over the real validation "
             "rows (the base and the fresh head, before any step; mBERT's weights are random).",
             "", "| shape | base | frozen kernels MiB | vs float32 | rows | max logit gap "
             "| max |logit| | ms/step | × float32's | peak RSS MiB | Δ RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ref = next((r for r in rows if r["shape"] == row["shape"]
                    and r["base_dtype"] == "float32"), row)
        lines.append(
            f"| {row['shape']} | {row['base_dtype']} | {row['frozen_stored_bytes'] / 2**20:.1f} "
            f"| {row['frozen_stored_bytes'] / row['frozen_float32_bytes']:.3f} | {row['rows']} "
            f"| {_fmt(row['logit_gap'], '.2e')} | {_fmt(row['logit_scale'], '.3f')} "
            f"| {row['median_step_s'] * 1e3:.1f} "
            f"| {row['median_step_s'] / ref['median_step_s']:.2f} "
            f"| {row['peak_rss_bytes'] / 2**20:.0f} "
            f"| {(row['peak_rss_bytes'] - ref['peak_rss_bytes']) / 2**20:+.0f} |")
    return lines + [""]


def epoch_lines(epoch: dict | None) -> list[str]:
    if epoch is None:
        return []
    if epoch.get("status") != "ok":
        return ["## Epoch estimate", "", f"Skipped: {epoch.get('reason', '')}", ""]
    lines = ["## Epoch estimate (default recipes, real Watson train split)", "",
             epoch["note"], "",
             "| trainer | batch | steps | padded lengths (length×steps) | PFLOP | epoch (min) |",
             "|---|---:|---:|---|---:|---:|"]
    for row in epoch["trainers"]:
        micro = row.get("micro_batches", 1)
        batch = (f"{row['batch']} (timed as {micro} × {row['batch'] // micro}: "
                 f"{row['batch']} rows ran out of memory)" if micro > 1 else row["batch"])
        lines.append(f"| {row['label']} | {batch} | {row['steps']} "
                     f"| {row['lengths_summary']} | {row['epoch_flops'] / 1e15:.2f} "
                     f"| {row['epoch_s'] / 60:.1f} |")
    lines += ["", f"JAX LoRA epoch is **{epoch['speedup']:.1f}×** faster than the TF replica's "
                  f"(it needs {epoch['flops_ratio']:.1f}× fewer matmul FLOPs).", ""]
    return lines
