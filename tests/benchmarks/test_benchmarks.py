"""The benchmark harness end to end on a tiny shape: every installed configuration (the default
five and jax_lora's other methods) runs 2 steps in its own process and the results document has
the promised fields and consistent numbers. Not a timing test: no assertion depends on how fast
anything ran."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import epoch, report, run
from benchmarks.report import REFERENCES
from benchmarks.run import REQUIRED_MODULES
from benchmarks.spec import (CONFIG_BY_NAME, CONFIGS, DEFAULT_CONFIGS, LORA_RANK, LORA_TARGETS,
                             MBERT, NUM_CLASSES, TINY, forward_flops, step_flops)

REPO = Path(__file__).resolve().parent.parent.parent
BATCH, SEQ_LEN, STEPS = 2, 16, 2
RESULT_FIELDS = {"job", "status", "median_step_s", "step_times_s", "peak_rss_bytes",
                 "trainable_params", "total_params", "info", "metrics", "wall_s"}
METRIC_FIELDS = {"steps_per_s", "examples_per_s", "model_flops_per_step",
                 "full_ft_flops_per_step", "achieved_gflops", "full_ft_equivalent_gflops",
                 "pct_of_peak"}


def installed(config) -> bool:
    return all(importlib.util.find_spec(name) for name in REQUIRED_MODULES[config.framework])


def bert_params(shape) -> int:
    """Every parameter of BertTextClassifier at this shape (no adapters), counted by hand."""
    h, f = shape.hidden_dim, shape.intermediate_dim
    embeddings = (shape.vocab_size + 512 + 2) * h + 2 * h  # token, position, segment, LayerNorm
    layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
    return embeddings + shape.num_layers * layer + (h * h + h) + (h * NUM_CLASSES + NUM_CLASSES)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # Every configuration, the default five and those measured only when named.
    command = [sys.executable, "benchmarks/run.py", "--suite", "quick", "--shapes", "tiny",
               "--configs", ",".join(c.name for c in CONFIGS),
               "--steps", str(STEPS), "--warmup", "1", "--batch", str(BATCH),
               "--seq-len", str(SEQ_LEN), "--peak-size", "128", "--jobs", str(len(CONFIGS)),
               "--out", str(out)]
    # The workers compile more than they run here: XLA's cheapest codegen halves the test's time
    # (TF's jit_compile reads XLA_FLAGS too). The configurations run at once (--jobs).
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0 "
                                      "--xla_llvm_disable_expensive_passes=true"}
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "quick.json").read_text()), (out / "quick.md").read_text()


def test_every_installed_configuration_ran_and_others_skipped(quick_run):
    doc, _ = quick_run
    assert doc["schema"] == "watson-peft-benchmarks/1"
    assert doc["command"].startswith("python benchmarks/run.py --suite quick")
    assert {"cpu", "cores", "memory_gib", "platform", "git_commit"} <= set(doc["machine"])
    assert doc["matmul_peak"]["status"] == "ok"
    assert doc["matmul_peak"]["peak_fp32_gflops"] == max(
        v for k, v in doc["matmul_peak"]["gflops"].items() if k.endswith("fp32"))
    by_config = {r["job"]["config"]: r for r in doc["results"]}
    assert list(by_config) == [c.name for c in CONFIGS]
    for config in CONFIGS:
        result = by_config[config.name]
        if not installed(config):
            assert result["status"] == "skipped" and "not installed" in result["reason"]
            continue
        assert result["status"] == "ok", result
        assert RESULT_FIELDS <= set(result) and METRIC_FIELDS <= set(result["metrics"])
        assert len(result["step_times_s"]) == STEPS
        assert result["peak_rss_bytes"] > 50 * 2**20  # a Python process with a framework loaded


def test_derived_numbers_follow_from_the_measurements(quick_run):
    doc, _ = quick_run
    peak = doc["matmul_peak"]["peak_fp32_gflops"]
    ran = {r["job"]["config"]: r for r in doc["results"] if r["status"] == "ok"}
    for name, result in ran.items():
        metrics, median = result["metrics"], result["median_step_s"]
        flops = step_flops(TINY, BATCH, SEQ_LEN, result["method"],
                           CONFIG_BY_NAME[name].cls_only)
        assert metrics["model_flops_per_step"] == flops
        assert metrics["examples_per_s"] == pytest.approx(BATCH / median)
        assert metrics["achieved_gflops"] == pytest.approx(flops / median / 1e9)
        assert metrics["pct_of_peak"] == pytest.approx(100 * flops / median / 1e9 / peak)
        for ref in REFERENCES:
            if ref in ran:
                assert metrics[f"speedup_vs_{ref}"] == pytest.approx(
                    ran[ref]["median_step_s"] / median)
                assert metrics[f"rss_vs_{ref}"] == pytest.approx(
                    result["peak_rss_bytes"] / ran[ref]["peak_rss_bytes"])
    if "tf_full" in ran:
        assert ran["tf_full"]["metrics"]["speedup_vs_tf_full"] == 1.0


def test_parameter_counts_match_the_shape(quick_run):
    doc, _ = quick_run
    ran = {r["job"]["config"]: r for r in doc["results"] if r["status"] == "ok"}
    h, layers, heads = TINY.hidden_dim, TINY.num_layers, TINY.num_heads
    head = h * NUM_CLASSES + NUM_CLASSES
    adapters = layers * 2 * LORA_RANK * (h + h)  # PEFT-style A [H, r] and B [r, H] on Q and V
    magnitudes = layers * 2 * h  # DoRA: one m [H] per adapted projection, whatever r is
    # keras-hub factorises per head: A [H, heads, r], B [r, head_dim]; Q/V biases train too.
    keras_adapters = layers * 2 * (h * heads * LORA_RANK + LORA_RANK * (h // heads) + h)
    expected = {"tf_full": (bert_params(TINY), bert_params(TINY)),
                "tf_lora": (keras_adapters + head, None),
                "jax_lora": (adapters + head, bert_params(TINY) + adapters),
                "jax_full": (bert_params(TINY), bert_params(TINY)),
                "torch_peft": (adapters + head, None),
                "jax_dora": (adapters + magnitudes + head,
                             bert_params(TINY) + adapters + magnitudes),
                # the head alone trains; no adapters in the model
                "jax_probe": (h * 3 + 3, bert_params(TINY))}
    for stored in ("jax_lora_bf16", "jax_lora_int8", "jax_qlora_nf4"):
        expected[stored] = expected["jax_lora"]  # a stored kernel counts as its weights
    for name, result in ran.items():
        trainable, total = expected[name]
        assert result["trainable_params"] == trainable, name
        if total is not None:
            assert result["total_params"] == total, name


def test_markdown_quotes_every_configuration(quick_run):
    doc, markdown = quick_run
    assert doc["command"] in markdown
    for result in doc["results"]:
        label = next(c.label for c in CONFIGS if c.name == result["job"]["config"])
        assert label in markdown
    # The targets are JAX LoRA's: measured, and quoted, exactly when it is installed.
    jax_lora = installed(CONFIG_BY_NAME["jax_lora"])
    assert bool(doc["targets"]) == jax_lora
    assert ("## Targets (JAX LoRA)" in markdown) == jax_lora
    for target in doc["targets"]:
        assert f"| {target['what']} | {target['shape']} |" in markdown


def test_flops_formula():
    # Full fine-tuning: 3x the forward pass. With H=32, F=64, L=2 the projections and FFN
    # hold 2·(4·32² + 2·32·64) = 16,384 weights: 6 · 16,384 · tokens (the 6·N·D rule).
    tokens = BATCH * SEQ_LEN
    forward = forward_flops(TINY, BATCH, SEQ_LEN)
    assert forward["projections"] + forward["ffn"] == 2 * 16_384 * tokens
    assert step_flops(TINY, BATCH, SEQ_LEN, "full") == 3 * sum(forward.values())
    lora = step_flops(TINY, BATCH, SEQ_LEN, "lora_adapter")
    merged = step_flops(TINY, BATCH, SEQ_LEN, "lora_merged")
    frozen = 2 * (forward["projections"] + forward["ffn"] + forward["pooler"])
    trained = 3 * (forward["attention"] + forward["head"])
    # The first layer's input is the frozen embeddings: no input gradient for its query, key
    # and value projections (3 · 2·tokens·H²) or adapters (2 · 2·tokens·r·H), no key gradient.
    first = 3 * 2 * tokens * 32 * 32 + 2 * BATCH * SEQ_LEN * SEQ_LEN * 32
    assert lora == (frozen + trained - first + 3 * 4 * 2 * tokens * LORA_RANK * 2 * 32
                    - 2 * 2 * tokens * LORA_RANK * 32)
    assert merged == (frozen + trained - first + 4 * 2 * tokens * 32 * 32
                      + 3 * 4 * 2 * 32 * 32 * LORA_RANK)
    # jax_lora's last layer computes the [CLS] row only: tokens - batch fewer rows through
    # query, output, FFN and attention queries there, 2·(2H² + 2HF + 2TH) FLOPs each.
    short = forward_flops(TINY, BATCH, SEQ_LEN, cls_only=True)
    per_row = 2 * (2 * 32 * 32 + 2 * 32 * 64 + 2 * SEQ_LEN * 32)
    assert sum(forward.values()) - sum(short.values()) == (tokens - BATCH) * per_row
    assert (step_flops(TINY, BATCH, SEQ_LEN, "full", cls_only=True)
            == 3 * sum(short.values()))
    # ... and its query adapter sees BATCH rows instead of tokens in that layer
    assert lora - step_flops(TINY, BATCH, SEQ_LEN, "lora_adapter", cls_only=True) == (
        2 * (2 * 2 * 32 * 32 + 2 * 32 * 64 * 2) * (tokens - BATCH)
        + 3 * 2 * SEQ_LEN * 32 * 2 * (tokens - BATCH)
        + 3 * 2 * LORA_RANK * 2 * 32 * (tokens - BATCH))
    # DoRA: LoRA's matmuls + A·B ([H, r]·[r, H]) for the column norm on each of the 2L
    # adapted projections, forward only (the norm is stop_gradient): per step, not per token.
    dora = step_flops(TINY, BATCH, SEQ_LEN, "dora")
    assert dora - lora == 2 * 2 * (2 * 32 * LORA_RANK * 32)
    assert (step_flops(TINY, 1, 3, "dora", cls_only=True)
            - step_flops(TINY, 1, 3, "lora_adapter", cls_only=True)) == dora - lora
    # Probe: the whole forward pass + the head's weight gradient (2·B·H·C), nothing else.
    assert step_flops(TINY, BATCH, SEQ_LEN, "probe") == (
        sum(forward.values()) + 2 * BATCH * 32 * NUM_CLASSES)
    assert step_flops(TINY, BATCH, SEQ_LEN, "probe", cls_only=True) == (
        sum(short.values()) + 2 * BATCH * 32 * NUM_CLASSES)
    with pytest.raises(ValueError, match="method"):
        step_flops(TINY, BATCH, SEQ_LEN, "half")


@pytest.mark.parametrize("shape, batch, seq_len", [(TINY, BATCH, SEQ_LEN), (MBERT, 16, 128)])
@pytest.mark.parametrize("cls_only", [True, False])
def test_flops_order_of_the_methods(shape, batch, seq_len, cls_only):
    """The head alone < adapters < adapters + DoRA's norm <= everything, at the test's shape
    and at mBERT's measured one."""
    flops = {method: step_flops(shape, batch, seq_len, method, cls_only)
             for method in ("probe", "lora_adapter", "dora", "full")}
    assert flops["probe"] < flops["lora_adapter"] < flops["dora"] <= flops["full"], flops
    assert flops["probe"] > sum(forward_flops(shape, batch, seq_len, cls_only).values())


def test_new_configurations_are_opt_in():
    """Without --configs the suites run the issue's five; jax_dora and jax_probe are chosen by
    name, and every JAX configuration maps to a jax_lora --method."""
    assert run.parse_args([]).configs == ",".join(DEFAULT_CONFIGS)
    _, configs, _ = run.resolve(run.parse_args([]))
    assert [c.name for c in configs] == ["tf_full", "tf_lora", "jax_lora", "jax_full",
                                         "torch_peft"]
    _, configs, _ = run.resolve(run.parse_args(["--configs", "jax_dora,jax_probe"]))
    assert [(c.number, c.method, c.cls_only) for c in configs] == [(6, "dora", True),
                                                                   (7, "probe", True)]
    assert LORA_TARGETS == ("query", "value")  # the magnitudes count above assumes 2 targets


@pytest.mark.parametrize("config_name", ["jax_lora", "jax_dora", "jax_probe", "jax_full"])
def test_compiled_step_dots_match_the_formula(tmp_path, config_name):
    """The FLOPs of the dots in each JAX method's compiled step (as benchmarks.bench_jax builds
    it, read off the HLO) equal spec.step_flops, with the two corrections that
    test_trace_matmul_flops_agree_with_the_formula explains, which exist only when the
    backward pass runs through the layers (not for the probe)."""
    from benchmarks import random_preset, trace_jax
    from benchmarks.bench_jax import JAX_METHODS, setup
    from benchmarks.worker import Job
    from jax_lora.steps import make_train_step

    assert set(JAX_METHODS) == {c.name for c in CONFIGS if c.framework == "jax"}
    random_preset.write(TINY, tmp_path / "tiny")
    jax_setup = setup(Job(config_name, "tiny", BATCH, SEQ_LEN, 1, 0, str(tmp_path / "tiny")),
                      JAX_METHODS[config_name])
    batch = jax_setup.device_batch(TINY, BATCH, SEQ_LEN, 0)
    compiled = make_train_step(jax_setup.graphdef, jax_setup.tx, jax_setup.trainable,
                               jax_setup.dropout_base, options=jax_setup.options).lower(
                                   jax_setup.state, batch).compile()
    hlo_flops = sum(flops for _, flops in trace_jax.matmuls(compiled.as_text()).values())
    config = CONFIG_BY_NAME[config_name]
    expected = step_flops(TINY, BATCH, SEQ_LEN, config.method, config.cls_only)
    if config.method != "probe":
        outer_products = 2 * 2 * BATCH * SEQ_LEN * TINY.hidden_dim
        recomputed = forward_flops(TINY, BATCH, SEQ_LEN, cls_only=True)["attention"] // 2
        hlo_flops += outer_products - recomputed
    assert hlo_flops == expected


@pytest.mark.parametrize("flags, field", [(["--configs", "tf_full,nope"], "--configs"),
                                          (["--shapes", "huge"], "--shapes"),
                                          (["--steps", "0"], "--steps")])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, capsys, flags, field):
    with pytest.raises(SystemExit) as exit_info:
        run.main([*flags, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"error: {field}") and stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_epoch_estimate_sums_measured_steps_over_the_recipes_batches(watson_dir):
    """The epoch arithmetic on the real split, with step times that grow with length (the
    workers themselves are exercised above)."""
    jobs = []

    def run_config(config, job):
        jobs.append(job)
        seconds = {length: length / 100 for length in (job.seq_len, *job.extra_seq_lens)}
        return {"status": "ok", "median_step_s": seconds[job.seq_len],
                "extra_seq_lens": {str(k): {"median_step_s": v} for k, v in seconds.items()}}

    estimate = epoch.estimate(watson_dir, "unused-preset", warmup=1, steps=3,
                              run_config=run_config)
    assert estimate["status"] == "ok" and estimate["source"]["rows"] == 8484
    tf_row, jax_row = estimate["trainers"]
    assert (tf_row["steps"], tf_row["steps_per_length"]) == (530, {"512": 530})
    assert tf_row["epoch_s"] == pytest.approx(530 * 5.12)
    assert jax_row["steps"] == 530 == sum(jax_row["steps_per_length"].values())
    assert jax_row["epoch_s"] == pytest.approx(
        sum(int(k) / 100 * n for k, n in jax_row["steps_per_length"].items()))
    from jax_lora.input_pipeline import BUCKETS
    assert set(jax_row["steps_per_length"]) <= {str(length) for length in BUCKETS}
    assert estimate["speedup"] == pytest.approx(tf_row["epoch_s"] / jax_row["epoch_s"])
    assert tf_row["epoch_flops"] == 530 * step_flops(MBERT, 16, 512, "full")
    assert estimate["flops_ratio"] == pytest.approx(
        tf_row["epoch_flops"] / jax_row["epoch_flops"])
    assert f"**{estimate['speedup']:.1f}×** faster" in "\n".join(report.epoch_lines(estimate))
    assert [(j.config, j.shape, j.batch) for j in jobs] == [("tf_full", "mbert", 16),
                                                            ("jax_lora", "mbert", 16)]


def test_epoch_estimate_skips_without_data(tmp_path):
    estimate = epoch.estimate(tmp_path, "unused-preset", warmup=1, steps=3, run_config=None)
    assert estimate["status"] == "skipped" and str(tmp_path) in estimate["reason"]


def test_a_configuration_whose_packages_are_missing_is_skipped(monkeypatch):
    # Names that exist nowhere, so the outcome does not depend on what this venv holds.
    monkeypatch.setitem(run.REQUIRED_MODULES, "torch", ("no_such_torch", "no_such_peft"))
    job = run.Job("torch_peft", "tiny", BATCH, SEQ_LEN, STEPS, 1, "unused-preset")
    result = run.run_config(run.CONFIG_BY_NAME["torch_peft"], job)
    assert result["status"] == "skipped"
    assert result["reason"] == ("not installed: no_such_torch, no_such_peft "
                                "(bash benchmarks/setup_peer.sh)")


def test_results_are_quoted_between_the_suites_markers(tmp_path, monkeypatch):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("intro\n<!-- begin results/quick.md -->\nold\n<!-- end results/quick.md -->\n"
                   "<!-- begin results/full.md -->\nkept\n<!-- end results/full.md -->\n")
    monkeypatch.setattr(run, "DOC", doc)
    run.quote_in_doc("quick", "# Benchmarks\n\n| a |\n")
    assert doc.read_text() == ("intro\n<!-- begin results/quick.md -->\n## Benchmarks\n\n| a |\n"
                               "<!-- end results/quick.md -->\n<!-- begin results/full.md -->\n"
                               "kept\n<!-- end results/full.md -->\n")
    # A folder inside results/ has blocks of its own; other folders are never quoted.
    assert run.doc_block(run.RESULTS, "full") == "full"
    assert run.doc_block(run.RESULTS / "methods", "full") == "methods/full"
    assert run.doc_block(tmp_path, "full") is None
    doc.write_text("<!-- begin results/methods/full.md -->\nold\n"
                   "<!-- end results/methods/full.md -->\n")
    run.quote_in_doc("methods/full", "# Benchmarks\n")
    assert doc.read_text() == ("<!-- begin results/methods/full.md -->\n## Benchmarks\n"
                               "<!-- end results/methods/full.md -->\n")


def run_profile(out: Path, variants: str, *flags: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.profile_jax", "--shape", "tiny",
               "--batch", str(BATCH), "--seq-len", str(SEQ_LEN), "--steps", str(STEPS),
               "--warmup", "1", "--variants", variants, "--out", str(out), *flags]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / f"profile_jax_tiny{'_ab' if flags else ''}.json").read_text())
    rows = {row["variant"]: row for row in doc["variants"]}
    assert list(rows) == variants.split(",")
    assert all(row["status"] == "ok" and len(row["step_times_s"]) == STEPS
               for row in rows.values())
    return rows


def test_profile_runs_its_variants_on_a_tiny_shape(tmp_path):
    """The JAX profile's recipe and old-dropout variants, 2 steps each: rows, mask timings;
    then --ab, where variants share a process: a patched variant built first must not leak
    into the recipe (XLA's temporary memory of the recipe step is the same either way)."""
    rows = run_profile(tmp_path, "recipe,bernoulli_dropout")
    assert set(rows["recipe"]["attention_mask_ms"]) == {"jax_lora", "bernoulli"}
    assert not rows["recipe"]["shared_process"]
    text = (tmp_path / "profile_jax_tiny.md").read_text()
    assert "| bernoulli_dropout |" in text and "One dropout mask" in text

    shared = run_profile(tmp_path, "bernoulli_dropout,full_last_layer,headmajor_attention,recipe",
                         "--ab")
    assert all(row["shared_process"] for row in shared.values())
    assert shared["recipe"]["temp_bytes"] == rows["recipe"]["temp_bytes"]
    assert shared["bernoulli_dropout"]["temp_bytes"] == rows["bernoulli_dropout"]["temp_bytes"]
    assert "alternated their steps" in (tmp_path / "profile_jax_tiny_ab.md").read_text()


def test_ops_table_has_every_operation_and_rejects_bad_flags(capsys):
    from benchmarks import ops_jax

    ops_jax.main(["--shape", "tiny", "--batch", str(BATCH), "--seq-len", str(SEQ_LEN),
                  "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 10  # header + one row per operation
    assert all(float(row.split("|")[2]) > 0 for row in rows[1:])
    with pytest.raises(SystemExit) as exit_info:
        ops_jax.main(["--repeats", "0"])
    assert exit_info.value.code == 2 and "--repeats 0: must be >= 1" in capsys.readouterr().err


def test_trace_matmul_flops_agree_with_the_formula(tmp_path, capsys):
    """The traced step's dots, read off the compiled HLO, carry the FLOPs that
    spec.step_flops counts for jax_lora (first-layer savings and [CLS]-only last layer
    included); the report has both tables."""
    from benchmarks import profile_jax, trace_jax

    doc = trace_jax.profile("tiny", BATCH, SEQ_LEN, warmup=1, steps=1)
    hlo_flops = sum(flops for _, flops in doc["matmuls"].values())
    # The last layer's key and value gradients contract over its single query row: outer
    # products, which XLA writes as multiplies rather than dots (2·B·T·H FLOPs each).
    outer_products = 2 * 2 * BATCH * SEQ_LEN * TINY.hidden_dim
    # The recipe's --remat dots recomputes each layer's Q·Kᵀ in the backward pass: half of the
    # forward attention FLOPs, which the count (model FLOPs) leaves out.
    recomputed = forward_flops(TINY, BATCH, SEQ_LEN, cls_only=True)["attention"] // 2
    assert hlo_flops + outer_products == step_flops(TINY, BATCH, SEQ_LEN, "lora_adapter",
                                                    cls_only=True) + recomputed
    assert set(doc["matmuls"]) <= set(doc["operations"])  # every dot ran inside the trace
    assert doc["wall_s_per_step"] > 0 and sum(doc["operations"].values()) > 0
    trace_jax.main(["--shape", "tiny", "--batch", str(BATCH), "--seq-len", str(SEQ_LEN),
                    "--steps", "1", "--warmup", "1", "--out", str(tmp_path)])
    text = (tmp_path / "trace_jax_tiny.md").read_text()
    assert "| operation kind |" in text and "| matmul (lhs · rhs → out) |" in text
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    for module, flags in ((trace_jax, ["--steps", "0"]), (trace_jax, ["--warmup", "-1"]),
                          (profile_jax, ["--steps", "0"]), (profile_jax, ["--warmup", "-1"])):
        with pytest.raises(SystemExit) as exit_info:
            module.main([*flags, "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2, (module, flags)
    assert not (tmp_path / "bad").exists()


def test_epoch_estimate_times_half_batches_when_a_worker_runs_out_of_memory(watson_dir):
    """A tf_full worker killed by SIGKILL at batch 16 (the OOM killer) is timed again at 8 and
    each recipe step counts as two of those; the report says so."""
    jobs = []

    def run_config(config, job):
        jobs.append((job.config, job.batch))
        if job.config == "tf_full" and job.batch == 16:
            return {"status": "failed", "returncode": -9, "error": "killed by signal 9"}
        seconds = {length: job.batch * length / 1000 for length in (job.seq_len,
                                                                     *job.extra_seq_lens)}
        return {"status": "ok", "median_step_s": seconds[job.seq_len],
                "extra_seq_lens": {str(k): {"median_step_s": v} for k, v in seconds.items()}}

    estimate = epoch.estimate(watson_dir, "unused-preset", warmup=1, steps=3,
                              run_config=run_config)
    assert jobs == [("tf_full", 16), ("tf_full", 8), ("jax_lora", 16)]
    tf_row, jax_row = estimate["trainers"]
    assert (tf_row["batch"], tf_row["micro_batches"], jax_row["micro_batches"]) == (16, 2, 1)
    assert tf_row["epoch_s"] == pytest.approx(530 * 2 * 8 * 512 / 1000)
    assert "timed as 2 × 8" in "\n".join(report.epoch_lines(estimate))


def test_a_killed_worker_is_reported_as_killed(monkeypatch):
    def killed(*args, **kwargs):
        return subprocess.CompletedProcess(args, -9, stdout="", stderr="an unrelated warning\n")

    monkeypatch.setattr(run.subprocess, "run", killed)
    result = run.run_module("benchmarks.bench_tf", [])
    assert result["status"] == "failed" and result["returncode"] == -9
    assert result["error"].startswith("killed by signal 9 (SIGKILL: out of memory?")


def test_a_failed_worker_reports_the_line_that_names_its_exception(monkeypatch):
    """JAX ends a traceback with a note about filtered frames; the error must name the
    exception instead."""
    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
              "TypeError: attend() got an unexpected keyword argument 'compute_dtype'\n"
              "--------------------\n"
              "For simplicity, JAX has removed its internal frames from the traceback\n")

    def failed(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(run.subprocess, "run", failed)
    result = run.run_module("benchmarks.bench_jax", [])
    assert result["status"] == "failed" and result["returncode"] == 1
    assert result["error"].startswith("TypeError: attend() got an unexpected keyword")
