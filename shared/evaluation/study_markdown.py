"""report.md of a study (shared.evaluation.study_report): every number comes from the
report.json dict it renders, formatted as the run comparison's report.md formats them."""

from __future__ import annotations

from shared.data.watson import LABEL_NAMES
from shared.evaluation.report import fmt_ci, fmt_count, fmt_num, fmt_signed, md_table
from shared.evaluation.study_curves import STALL_TOLERANCE, UNIFORM_LOSS
from shared.evaluation.study_figures import FIGURE_TITLES


def render(result: dict) -> str:
    lines = ["# Study report", ""] + _header(result)
    for section in (_methods, _pairs, _equivalence, _cross_framework, _selection, _time_to_target,
                    _per_language, _premise, _compute, _figures):
        lines += section(result)
    return "\n".join(lines)


def _lr(value) -> str:
    return "n/a" if value is None else f"{value:g}"


def _header(result: dict) -> list[str]:
    study, split = result["study"], result["split"]
    settings, code = study["settings"], study["code"]
    commit = code.get("commit")
    commit = "not recorded" if commit is None else f"`{commit[:12]}`" + (
        " (uncommitted changes)" if code.get("dirty") else "")
    timed = {}
    for method, timing in study["timing"].items():
        if isinstance(timing, dict) and timing.get("machine"):
            timed.setdefault(timing["machine"], []).append(method)
    machines = "; ".join(f"{machine} ({', '.join(methods)})" for machine, methods in
                         timed.items()) or "none recorded"
    command = "not recorded" if study["command"] is None else f"`{study['command']}`"
    lines = [f"- Command: {command}", f"- Code: commit {commit}" + (
                 "; runs whose manifest records another commit: " + ", ".join(
                     f"`{o['run_dir']}` (`{o['commit']}`)" for o in result["other_code"])
                 if result.get("other_code") else ""),
             f"- Preset: {settings.get('preset', 'n/a')}, sequence length "
             f"{settings.get('sequence_length', 'n/a')}, seeds "
             f"{', '.join(map(str, settings.get('seeds') or [])) or 'n/a'}",
             f"- Step timings measured on: {machines}",
             f"- Validation: {split['n_val']:,} rows, split fingerprint "
             f"`{split['fingerprint'][:16]}…`, shared by every run"]
    if not result["missing"]:
        return lines + ["- Missing runs: none", ""]
    lines.append(f"- Missing runs ({len(result['missing'])}, not counted anywhere below):")
    lines += [f"  - {m['stage']} {m['method']} lr {_lr(m['lr'])} seed {m['seed']} "
              f"(`{m['run_dir']}`): {m['status']}" + (f" ({m['error']})" if m["error"] else "")
              for m in result["missing"]]
    return lines + [""]


def accuracy_cell(accuracy: dict) -> str:
    if accuracy["n"] == 0:
        return "no finished final run"
    if accuracy["half_width"] is None:
        return f"{fmt_num(accuracy['mean'])} (1 seed, no interval)"
    return f"{fmt_num(accuracy['mean'])} ± {fmt_num(accuracy['half_width'])} {fmt_ci(accuracy['ci'])}"


def _methods(result: dict) -> list[str]:
    rows = []
    for row in result["methods"]:
        accuracy = row["accuracy"]
        lr = (_lr(row["chosen_lr"]) if row["chosen_lr"] is not None
              else "n/a" if row["recipe_lr"] is None
              else f"{_lr(row['recipe_lr'])} (recipe, not selected)")
        spread = ("" if accuracy["n"] == 0
                  else f"{fmt_num(accuracy['min'])}–{fmt_num(accuracy['max'])}")
        rows.append([row["method"], str(row["trainer"]), lr,
                     ", ".join(map(str, row["seeds"])) or "none",
                     fmt_count(row["trainable_params"]), accuracy_cell(accuracy), spread,
                     fmt_num(row["macro_f1_mean"]), fmt_num(row["best_step_mean"], 1),
                     fmt_num(row["best_dev_accuracy_mean"])])
    baselines = result["baselines"]
    majority = baselines["majority"]
    rows += [["*majority class (baseline)*", f"always {LABEL_NAMES[majority['label']]}", "", "",
              "", fmt_num(majority["accuracy"]), "", "", "", ""],
             ["*chance (baseline)*", "uniform guessing", "", "", "",
              fmt_num(baselines["chance"]["accuracy"]), "", "", "", ""]]
    t_values = sorted({(row["accuracy"]["n"], row["accuracy"]["t"]) for row in result["methods"]
                       if row["accuracy"]["t"] is not None})
    stated = ("; ".join(f"with {n} seeds t = {t:.2f}" for n, t in t_values)
              or "no method has 2 or more seeds")
    return ["## Final runs per method", "",
            "Validation accuracy over each method's final runs (one per seed): mean ± "
            "half-width and the 95 % Student-t interval, half-width t·sd/√n with sd over the "
            f"seeds ({stated}). It describes seed-to-seed variation only; the paired "
            "comparisons below also account for the validation rows. Best step and best dev "
            "accuracy are the trainer's (manifest `best`), means over seeds.", ""] + md_table(
        ["method", "trainer", "learning rate", "seeds", "trainable parameters",
         "accuracy: mean ± half-width [95 % t-interval]", "min–max", "macro-F1 (mean)",
         "best step (mean)", "best dev accuracy (mean)"], rows) + _stalled(result)


def _stalled(result: dict) -> list[str]:
    lines = [f"- **Stalled at chance:** {row['method']} seed {run['seed']}: its training loss "
             f"stayed within {STALL_TOLERANCE:g} of ln 3 = {UNIFORM_LOSS:.4f} (the loss of "
             f"predicting 1/3 for every label) from step {run['stalled_from']:,} to its last "
             f"evaluation at step {run['evaluated_to']:,}"
             + (", where patience stopped it" if run.get("stopped") == "patience" else "")
             + f". It did not learn: its figures measure a failed run, not {row['method']} at "
             "its best."
             for row in result["methods"] for run in row["per_seed"]
             if run.get("stalled_from") is not None]
    return lines + [""] if lines else []


def _pairs(result: dict) -> list[str]:
    rows = []
    for pair in result["pairs"]:
        if not pair["seeds"]:
            rows.append([f"{pair['b']} vs {pair['a']}", "no common seed", "", "", "", "", "",
                         ""])
            continue
        test = pair["mcnemar"]
        rows.append([f"{pair['b']} vs {pair['a']}", ", ".join(map(str, pair["seeds"])),
                     fmt_num(pair["accuracy_a"]), fmt_num(pair["accuracy_b"]),
                     f"{fmt_signed(pair['accuracy_diff'])} {fmt_ci(pair['accuracy_diff_ci'], True)}",
                     _seed_diffs(pair), f"{test['only_a']} / {test['only_b']}",
                     f"{test['p_value']:.4g}"])
    if not rows:
        return ["## Paired comparisons (seeds pooled)", "", "Fewer than two methods have "
                "finished final runs: nothing to compare.", ""]
    options = result["options"]
    return ["## Paired comparisons (seeds pooled)", "",
            "“B vs A” is B − A, A the target method first. Seed s of A is paired with seed s "
            "of B (only seeds both finished) and the validation rows of every pair are "
            "pooled. Two intervals answer two questions. The row bootstrap "
            f"({options['bootstrap_resamples']:,} resamples, seed {options['seed']}) resamples "
            "validation rows, each with all its seed pairs (rows, not row × seed cells, are the "
            "independent unit); it holds the trained models fixed, so it says how sure the "
            "validation rows make the difference between these runs. The t-interval over the "
            "per-seed differences lets the seeds vary, so it says how sure the seeds make the "
            "difference between the methods; with few seeds it is wide (t = 4.30 for 3). "
            "McNemar is the exact test on the pooled discordant cells (A only / B only); "
            "pooling seeds counts each row several times, so its p-value is optimistic.",
            ""] + md_table(
        ["pair", "seeds paired", "accuracy A (pooled)", "accuracy B (pooled)",
         "Δ accuracy [95 % row-bootstrap CI]", "Δ per seed; mean [95 % t-interval]",
         "right: A only / B only", "McNemar p (optimistic)"], rows)


def _equivalence(result: dict) -> list[str]:
    """The TOST over seeds of every pair with two or more seed pairs, on all rows and on the
    English rows and the rest; the verdict is the test's."""
    plan = result.get("equivalence")
    if plan is None:  # a report.json from before the test
        return []
    tested = [(pair, "all") for pair in result["pairs"] if (pair.get("tost") or {}).get("p")
              is not None]
    tested += [(pair, pair["rows"]) for pair in result.get("english_pairs") or []
               if (pair.get("tost") or {}).get("p") is not None]
    margin = plan["margin"]
    lines = ["## Equivalence over seeds (TOST)", ""]
    fixed = ("fixed in the study's plan before its final runs" if plan["fixed_in_plan"] else
             "**not fixed in this study's plan: the report's default, applied after the runs**,"
             " so read the verdicts as a description, not as a pre-registered test")
    primary = plan.get("primary")
    lines += [f"Two one-sided t-tests on the per-seed differences (B − A, seed s paired with "
              f"seed s), margin ±{margin:g} ({fixed}), each at α = "
              f"{_alpha(tested)}: equivalent when both reject, i.e. when the 90 % t-interval "
              "lies inside the margin; otherwise *different* when the 95 % t-interval excludes "
              "0, else *not shown equivalent*. What varies between seeds: "
              + ("initialisation, data order and the dev part (each seed its own)"
                 if plan.get("dev_part_per_seed") else
                 "initialisation and data order (one dev part for every seed)")
              + "; the validation rows do not."
              + (f" Primary comparison (the plan's): {primary[1]} vs {primary[0]}, all rows."
                 if primary else ""), ""]
    if not tested:
        return lines + ["No pair has two or more seed pairs: no test.", ""]
    rows = [[part, f"{pair['b']} vs {pair['a']}", ", ".join(map(str, pair["seeds"])),
             fmt_signed(pair["tost"]["mean"]), fmt_ci(pair["tost"]["ci_90"], True),
             fmt_ci(pair["tost"]["ci_95"], True), f"{pair['tost']['p']:.3g}",
             pair["tost"]["verdict"]] for pair, part in tested]
    return lines + md_table(["rows", "pair", "seeds paired", "Δ accuracy (mean over seeds)",
                             "90 % t-interval (TOST)", "95 % t-interval", "TOST p",
                             "verdict"], rows)


def _alpha(tested: list) -> str:
    alphas = {pair["tost"]["alpha"] for pair, _ in tested}
    return ", ".join(f"{a:g}" for a in sorted(alphas)) or "0.05"


def _seed_diffs(pair: dict) -> str:
    """The per-seed differences, and their t-interval when two or more seeds pair."""
    diffs = ", ".join(fmt_signed(d) for d in pair.get("seed_diffs") or [])
    t = pair.get("seed_diff_t")
    if not diffs or t is None:  # a report.json from before the per-seed column
        return "n/a"
    if t["ci"] is None:
        return f"{diffs} (1 seed, no interval)"
    return f"{diffs}; {fmt_signed(t['mean'])} {fmt_ci(t['ci'], True)}"


def _cross_framework(result: dict) -> list[str]:
    checks = result.get("cross_framework") or []
    if not checks:
        return []
    lines = ["## Cross-framework check", "",
             "A method trained at another's recipe (the same learning rate, for the whole "
             "epochs that method's same-seed final run needed to reach its best dev step) in "
             "the other trainer. Its runs draw their own initial head and dropout, like another "
             "seed, so both trainers train the same model the same way if its accuracy lies "
             "within the source's seed-to-seed spread. It is judged at its last step, the "
             "source at its best dev step.", ""]
    rows = []
    for check in checks:
        spread = check["source_accuracy"]
        source = (f"{fmt_num(spread['mean'])} " + (fmt_ci(spread["ci"]) if spread["ci"]
                                                   else "(1 seed, no interval)")
                  + f", {fmt_num(spread['min'])}–{fmt_num(spread['max'])} over "
                    f"{spread['n']} seed{'s' if spread['n'] != 1 else ''}")
        paired = check["paired"]
        for run in check["runs"]:
            rows.append([f"{check['method']} ({check['trainer']})",
                         f"{check['source']} ({check['source_trainer']})", str(run["seed"]),
                         fmt_num(run["accuracy"]), source, _yes_no(run["in_range"]),
                         _yes_no(run["in_interval"]),
                         "" if paired is None else f"{fmt_signed(paired['diff'])} "
                         f"{fmt_ci(paired['ci'], True)} (seed"
                         f"{'s' if len(paired['seeds']) > 1 else ''} "
                         f"{', '.join(map(str, paired['seeds']))})"])
        if not check["runs"]:
            rows.append([f"{check['method']} ({check['trainer']})",
                         f"{check['source']} ({check['source_trainer']})", "none",
                         "no finished final run", source, "", "", ""])
    return lines + md_table(
        ["run", "recipe of", "seed", "accuracy", "recipe's method: mean [95 % t-interval], "
         "min–max", "inside min–max", "inside t-interval",
         "Δ accuracy vs the same seeds [95 % CI]"], rows)


def _yes_no(value) -> str:
    return "n/a (fewer than 2 seeds)" if value is None else "yes" if value else "no"


def _selection(result: dict) -> list[str]:
    lines = ["## Learning-rate selection", ""]
    if not result["selection"]:
        return lines + ["No selection trial finished.", ""]
    # Successive halving's trials carry their budget: a rate trains at several.
    budgets = any("budget" in row for row in result["selection"])
    rows = [[row["method"], _lr(row["lr"])] + ([fmt_count(row.get("budget"))] if budgets else [])
            + [str(row["seed"]), fmt_num(row["best_dev_accuracy"]),
               fmt_num(row["best_dev_loss"]), fmt_count(row["best_step"]),
               fmt_count(row["steps"]), str(row["stopped"] or "n/a"),
               "**chosen**" if row["chosen"] else ""]
            for row in result["selection"]]
    halving = (" Successive halving: every rate at the first budget, the best rates again at "
               "the next (a new run, its schedule fitted to that budget); the chosen rate and "
               "budget are the best trial's among the rates that reached the last rung."
               if budgets else "")
    return lines + [
        "Each trial trains on the training rows minus the dev part and is judged on the dev "
        "part only (never the validation rows): its best dev accuracy, the dev loss at that "
        f"step, and the steps it trained before stopping.{halving}", ""] + md_table(
        ["method", "learning rate"] + (["budget (steps)"] if budgets else [])
        + ["seed", "best dev accuracy", "its dev loss", "best step", "steps trained",
           "stopped by", "chosen"], rows) + _notes(
        _grid_edges(result["selection"]) + _selection_checks(result.get("selection_checks")))


def _notes(lines: list[str]) -> list[str]:
    return lines + [""] if lines else []


def _grid_edges(selection: list[dict]) -> list[str]:
    """A line per method whose chosen rate is the lowest or highest it tried: its best rate
    may lie outside the grid, and the comparison may understate it."""
    lines = []
    for method in dict.fromkeys(row["method"] for row in selection):
        rates = sorted(row["lr"] for row in selection if row["method"] == method)
        chosen = [row["lr"] for row in selection if row["method"] == method and row["chosen"]]
        if len(rates) < 2 or not chosen or rates[0] < chosen[0] < rates[-1]:
            continue
        side, beyond = ("lowest", "below") if chosen[0] == rates[0] else ("highest", "above")
        lines.append(f"- **At the edge of its grid:** {method}'s chosen rate {_lr(chosen[0])} is "
                     f"the {side} it tried; its best rate may lie {beyond} it, and its figures "
                     "below may understate the method.")
    return lines


def _selection_checks(checks: dict | None) -> list[str]:
    """A line naming the methods whose trials did not separate the chosen rate from the
    runner-up, and one for the trials still improving when the step budget stopped them."""
    if not checks:
        return []
    close = [m for m in checks["margins"] if m["within_noise"]]
    lines = []
    for n in dict.fromkeys(m["dev_rows"] for m in close):  # one line per dev-part size
        group = [m for m in close if m["dev_rows"] == n]
        listed = "; ".join(f"{m['method']} {_lr(m['chosen_lr'])} vs {_lr(m['runner_up_lr'])}: "
                           f"{fmt_signed(m['margin'])}" for m in group)
        lines.append(f"- **Within dev noise:** the chosen rate's margin in best dev accuracy "
                     f"over the runner-up ({listed}) is less than the 95 % half-width of one "
                     f"accuracy on {fmt_count(n)} dev rows (up to ±"
                     f"{group[0]['widest_half_width']:.3f}): the trials did not clearly "
                     "separate these rates (the runs keep no per-row dev predictions for a "
                     "paired test).")
    rising = checks["still_rising"]
    if rising:
        lines.append(f"- **Still rising when the budget ended:** {len(rising)} of "
                     f"{checks['trials']} trials had their best dev accuracy at their last "
                     "step, where the step budget stopped them: their curves still rose. A "
                     "budget this short favours rates that learn fast early over rates that "
                     "would end higher.")
    return lines


def _time_to_target(result: dict) -> list[str]:
    target = result["time_to_target"]
    lines = ["## Time to target", ""]
    if target["target"] is None:
        return lines + [f"Skipped: the target method {target['target_method']} has no finished "
                        f"final run with a best dev accuracy (manifest `best`; a dev part).", ""]
    rows = []
    for row in target["methods"]:
        if row["evaluated_to"] is None:
            rows.append([row["method"], "no evals.csv", "", ""])
        elif row["step"] is None:
            rows.append([row["method"], f"not reached within {row['evaluated_to']:,} steps",
                         "", ""])
        else:
            rows.append([row["method"], f"{row['step']:,}",
                         "no step timing" if row["seconds"] is None else fmt_num(row["seconds"], 1),
                         row["machine"] or ""])
    machines = {row["machine"] for row in target["methods"] if row["machine"]}
    caution = (" **The step timings come from different machines: compare seconds only "
               "within one machine.**" if len(machines) > 1 else "")
    return lines + [
        f"Target: {target['target_fraction']:g} × {target['target_method']}'s mean best dev "
        f"accuracy {fmt_num(target['target_best_dev_accuracy'])} = {fmt_num(target['target'])}. "
        "Each method's first evaluated step at which its mean dev accuracy over seeds reaches "
        "it (a seed that stopped early keeps its last dev accuracy afterwards); seconds = "
        f"step × the step time the study measured on the machine named.{caution}",
        ""] + md_table(["method", "step", "seconds", "timed on"], rows)


def _per_language(result: dict) -> list[str]:
    table = result["per_language"]
    methods = list(table["all"]["accuracy"])
    if not methods:
        return ["## Per-language accuracy", "", "No finished final run.", ""]
    rows = [[row["language"], str(row["n"]), f"±{row['widest_half_width']:.3f}",
             fmt_num(row["majority_accuracy"])] +
            [fmt_num(row["accuracy"][m]) for m in methods] for row in table["rows"]]
    other = table.get("non_english")
    if other:
        rows.append(["**all but English**", f"{other['n']:,}",
                     f"±{other['widest_half_width']:.3f}", fmt_num(other["majority_accuracy"])]
                    + [fmt_num(other["accuracy"][m]) for m in methods])
    rows.append(["**all**", f"{table['all']['n']:,}", "",
                 fmt_num(table["all"]["majority_accuracy"])]
                + [fmt_num(table["all"]["accuracy"][m]) for m in methods])
    return ["## Per-language accuracy", "",
            "Mean validation accuracy over each method's seeds, per language, beside the "
            "accuracy of always answering that language's most frequent label; chance is "
            "0.3333 in every row. “±” is the half-width of a 95 % interval of an accuracy "
            "near 0.5 on that many rows (1.96·√(0.25/n), its widest): a language's accuracies "
            "closer than that are not told apart by its rows.", ""] + md_table(
        ["language", "n", "±", "majority class"] + methods, rows) + _english_pairs(result)


def _english_pairs(result: dict) -> list[str]:
    """The paired comparisons against the target, on the English rows and on the rest."""
    # A report.json from before the table has none; a pair without common seeds has no row.
    pairs = [pair for pair in result.get("english_pairs") or [] if pair["seeds"]]
    if not pairs:
        return []
    rows = [[f"{pair['b']} vs {pair['a']}", pair["rows"], f"{pair['n']:,}",
             ", ".join(map(str, pair["seeds"])),
             f"{fmt_signed(pair['accuracy_diff'])} {fmt_ci(pair['accuracy_diff_ci'], True)}",
             _seed_diffs(pair)] for pair in pairs]
    return ["", f"Each method against {pairs[0]['a']} on the English rows and on the rest, "
            "paired and pooled as in the paired comparisons above (the same two intervals).",
            ""] + md_table(["pair", "rows", "n", "seeds paired",
                            "Δ accuracy [95 % row-bootstrap CI]",
                            "Δ per seed; mean [95 % t-interval]"], rows)


def _premise(result: dict) -> list[str]:
    premise = result["premise"]
    lines = ["## Premise seen / unseen", ""]
    if not premise["available"]:
        return lines + [f"Skipped: {premise['note']}.", ""]
    if not all("strata" in row for row in premise["methods"]):  # an older report.json
        return lines + ["Not shown: this report.json predates the within-language table, and "
                        "the pooled seen − unseen gap mixes languages; rebuild the report.", ""]
    share = premise.get("english_share") or {}
    rows = [[row["method"], stratum["rows"], _span(stratum["n_seen"]),
             _span(stratum["n_unseen"]), fmt_num(stratum["seen"]), fmt_num(stratum["unseen"]),
             fmt_signed(stratum["gap"]), fmt_num(stratum["majority_seen"]),
             fmt_num(stratum["majority_unseen"])]
            for row in premise["methods"] for stratum in row["strata"]]
    composition = ""
    if share.get("seen") and share.get("unseen"):
        composition = (f" English makes up {_share(share['seen'])} of the seen rows and "
                       f"{_share(share['unseen'])} of the unseen ones, so a gap over all rows "
                       "would mix the difference between languages into the premise effect "
                       "(Simpson's paradox); it is not shown.")
    return lines + [
        "Mean accuracy over seeds on the validation rows whose premise the run trained on "
        "(seen) and on the rest (unseen), within English and within the other languages, "
        "beside the majority-class accuracy of the same rows; chance is 0.3333. Seen is judged "
        f"against the {premise['note']}.{composition} A within-language gap that is positive "
        "would mean the model leans on premises it has memorised; the rows per cell are few "
        "outside English, and no interval is given.", ""] + md_table(
        ["method", "rows", "seen n", "unseen n", "accuracy seen", "accuracy unseen",
         "seen − unseen", "majority class seen", "majority class unseen"], rows)


def _share(bounds: list[float]) -> str:
    low, high = (round(100 * x) for x in bounds)
    return f"{low} %" if low == high else f"{low}–{high} %"


def _span(counts: list[int]) -> str:
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}–{high}"


def _compute(result: dict) -> list[str]:
    rows = result.get("compute") or []
    if not rows:
        return []
    total = sum(row["hours"] for row in rows)
    timed = sorted({t["machine"] for t in result["study"]["timing"].values()
                    if isinstance(t, dict) and t.get("machine")})
    return ["## Compute used", "",
            f"{total:.1f} hours of training in the finished selection trials and final runs: "
            "the sum of their manifests' epoch seconds (training steps, dev evaluations and "
            "checkpoints; time lost to interruptions, start-up and the final predictions are "
            "not counted, nor are the timing runs). The runs do not record their machine; the "
            "step timings were measured on " + (", ".join(timed) or "no recorded machine")
            + ".", ""] + md_table(
        ["stage", "method", "finished runs", "hours"],
        [[row["stage"], row["method"], str(row["runs"]), f"{row['hours']:.2f}"]
         for row in rows])


def _figures(result: dict) -> list[str]:
    lines = ["## Figures", ""]
    for name, title in FIGURE_TITLES.items():
        figure = result["figures"][name]
        lines += [f"### {title}", "",
                  f"![{title}]({figure['file']})" if "file" in figure
                  else f"Skipped: {figure['skipped']}.", ""]
    return lines
