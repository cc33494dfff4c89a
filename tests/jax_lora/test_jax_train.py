"""The trainer: step functions on a tiny model, data parallelism, and whole runs of train.py
on a tiny random preset (run directory, adapter, bad input, kill -9 and resume)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from jax_lora.adapter import ADAPTER, ADAPTER_WEIGHTS, load_adapter
from jax_lora.checkpoint import CHECKPOINTS, CHECKSUMS
from jax_lora.config import TrainConfig, build_parser, parse_config
from jax_lora.input_pipeline import Encoded, encode
from jax_lora.lora import LoraConfig, trainable_filter
from jax_lora.models import BertClassifier, BertConfig
from jax_lora.optim import make_optimizer, trainable_mask
from jax_lora.steps import (TrainState, evaluate, make_eval_step, make_mesh, make_train_step,
                            replicate, shard_batch)
from jax_lora.train import main, prepare
from shared.data.spec import DataSpec, load
from shared.runs.lock import EXIT_LOCKED
from shared.runs.presets import describe_preset
from shared.runs.reuse import config_differences
from shared.runs.run_dir import LOCK, MANIFEST, MANIFEST_KEYS, read_run
from tests.helpers import kill_9_at_checkpoint, trainer_command
from tests.jax_lora.trainer_process import RUN_FLAGS, STEPS_PER_EPOCH

REPO = Path(__file__).resolve().parents[2]
TINY = BertConfig(vocab_size=60, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
                  max_sequence_length=64)
# Subprocess runs compile with LLVM optimisations off: several times faster to compile, and
# every run compared with another one here uses the same flags.
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()}


def fast_compile(jitted):
    """`jitted`, compiled once per input shape with LLVM optimisations off, like the
    subprocess runs: compiling is the slow part of these tests on CPU."""
    executables = {}

    def call(*args):
        key = tuple((x.shape, x.dtype) for x in jax.tree.leaves(args))
        if key not in executables:
            executables[key] = jitted.lower(*args).compile(
                {"xla_backend_optimization_level": 0})
        return executables[key](*args)

    return call


def synthetic(rows: int, seed: int = 0, sequence_length: int = 64) -> Encoded:
    """Random sentence pairs of 5..60 tokens: [CLS]=2 first, segment 1 for the second half."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, rows)
    positions = np.arange(sequence_length)[None]
    mask = (positions < lengths[:, None]).astype(np.int32)
    tokens = rng.integers(5, TINY.vocab_size, (rows, sequence_length)) * mask
    tokens[:, 0] = 2
    segments = ((positions >= lengths[:, None] // 2) * mask).astype(np.int32)
    return Encoded(tokens.astype(np.int32), segments, mask,
                   labels=rng.integers(0, 3, rows).astype(np.int32))


def fresh_state(lora: LoraConfig, lr: float = 1e-2):
    """A tiny model's train state with random numpy weights: eager init would compile one
    small XLA program per parameter shape."""
    graphdef, abstract = nnx.split(nnx.eval_shape(
        lambda: BertClassifier(TINY, lora=lora, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: 0.2 * rng.standard_normal(x.shape, np.float32), abstract)
    mask = trainable_mask(params, trainable_filter(lora))
    method = "lora" if lora.targets else "probe"
    tx = make_optimizer(TrainConfig(lora=lora, lr=lr, method=method), params, mask, total_steps=10)
    return graphdef, tx, mask, TrainState(jnp.int32(0), params, jax.jit(tx.init)(params))


def named(params) -> dict:
    return {".".join(map(str, p)): np.array(v.get_value()) for p, v in nnx.to_flat_state(params)}


@pytest.mark.parametrize("lora", [LoraConfig(rank=4, dropout=0.1),
                                  LoraConfig(targets=(), train_head=True)],
                         ids=["lora", "linear_probe"])
def test_train_steps_move_every_trainable_leaf_and_no_frozen_one(lora):
    graphdef, tx, mask, state = fresh_state(lora)
    before = named(state.params)  # copies: the step donates its input buffers
    mesh = make_mesh()
    step = fast_compile(make_train_step(graphdef, tx, trainable_filter(lora), jax.random.key(1)))
    state = replicate(state, mesh)
    data = synthetic(8)
    losses = []
    for _ in range(4):
        state, metrics = step(state, shard_batch(data.batch(np.arange(8), 64), mesh))
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    after = named(state.params)
    trains = {name: bool(t) for name, t in zip(before, jax.tree.leaves(mask))}
    assert sum(trains.values()) == (2 * 2 * 2 + 2 if lora.targets else 2)
    for name, value in before.items():
        if trains[name]:
            assert not np.array_equal(value, after[name]), f"{name} did not train"
        else:
            assert np.array_equal(value, after[name]), f"frozen {name} changed"
    assert int(state.step) == 4 and losses[-1] < losses[0]


def test_dynamic_padding_gives_the_same_predictions_as_fixed():
    graphdef, _, _, state = fresh_state(LoraConfig(rank=4))
    mesh, data = make_mesh(), synthetic(13, seed=3)
    eval_step = fast_compile(make_eval_step(graphdef))
    fixed = evaluate(eval_step, state.params, data, global_batch=4, mesh=mesh, dynamic=False)
    dynamic = evaluate(eval_step, state.params, data, global_batch=4, mesh=mesh, dynamic=True)
    for a, b in zip(fixed, dynamic):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # Rows come back in their own order: row 5 alone, unpadded, gives the same logits.
    model = nnx.merge(graphdef, state.params)
    row = data.batch(np.array([5]), int(data.lengths[5]))
    alone = model(row["token_ids"], row["segment_ids"], row["padding_mask"])
    np.testing.assert_allclose(dynamic[0][5], alone[0], atol=1e-5, rtol=1e-5)


def test_two_devices_give_the_same_step_as_one():
    script = textwrap.dedent("""
        import json, jax, numpy as np
        from tests.jax_lora.test_jax_train import fresh_state, named, synthetic
        from jax_lora.lora import LoraConfig, trainable_filter
        from jax_lora.steps import make_mesh, make_train_step, replicate, shard_batch
        assert len(jax.devices()) == 2
        data, lora, results = synthetic(8, seed=5), LoraConfig(rank=4, dropout=0.1), []
        for devices in (jax.devices()[:1], jax.devices()):
            graphdef, tx, mask, state = fresh_state(lora)
            mesh = make_mesh(devices)
            step = make_train_step(graphdef, tx, trainable_filter(lora), jax.random.key(1))
            state = replicate(state, mesh)
            for _ in range(2):
                batch = shard_batch(data.batch(np.arange(8), 64), mesh)
                state, metrics = step(state, batch)
            results.append((float(metrics["loss_sum"]), named(state.params)))
        (loss1, params1), (loss2, params2) = results
        diff = max(float(np.abs(params1[k] - params2[k]).max()) for k in params1)
        print(json.dumps({"loss1": loss1, "loss2": loss2, "max_param_diff": diff,
                          "sharded": len(batch["token_ids"].sharding.device_set)}))
        """)
    env = {**SUBPROCESS_ENV, "XLA_FLAGS": SUBPROCESS_ENV["XLA_FLAGS"]
           + " --xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sharded"] == 2
    assert result["loss1"] == pytest.approx(result["loss2"], rel=1e-5)
    assert result["max_param_diff"] < 1e-5


# ---------------------------------------------------------------- flags

def test_flags_map_onto_the_config():
    assert parse_config([]) == TrainConfig()
    defaults = vars(build_parser().parse_args([]))
    for name, value in DataSpec().to_dict().items():  # the flags' defaults are the spec's
        assert defaults[name] == getattr(DataSpec(), name), name
    config = parse_config(["--method", "probe", "--targets", "", "--no-train-head", "--train-pooler", "--rank", "4",
                           "--lora-dropout", "0.1", "--no-dynamic-padding", "--lr", "1e-3",
                           "--schedule", "linear", "--warmup-steps", "5", "--limit", "40"])
    assert config.lora == LoraConfig(rank=4, dropout=0.1, targets=(), train_head=False,
                                     train_pooler=True)
    assert (config.dynamic_padding, config.lr, config.schedule, config.warmup_steps,
            config.data.limit) == (False, 1e-3, "linear", 5, 40)
    assert parse_config(["--targets", "query,key,ffn_out"]).lora.targets == (
        "query", "key", "ffn_out")
    assert TrainConfig().group_by_length and TrainConfig().to_dict()["group_by_length"] is True
    ungrouped = parse_config(["--no-group-by-length"])
    assert ungrouped.to_dict()["group_by_length"] is False
    assert config_differences(TrainConfig().to_dict(), ungrouped.to_dict()) == [
        "group_by_length True -> False"]  # other batches: no resuming
    assert "passes over the training split" in build_parser().format_help()
    remat = parse_config(["--remat", "none"])
    assert TrainConfig().remat == "dots"  # the default: as fast as none here, less memory
    assert remat.remat == "none"
    assert config_differences(TrainConfig().to_dict(), remat.to_dict()) == []


# ---------------------------------------------------------------- whole runs of train.py

def train_command(preset: Path, run_dir: Path) -> list[str]:
    return trainer_command("jax_lora", "--preset", preset, "--run-dir", run_dir, *RUN_FLAGS)



@pytest.fixture(scope="module")
def finished_run(tiny_hf_preset, tmp_path_factory, run_env) -> Path:
    """An uninterrupted run of `python jax_lora/train.py`, the reference for the others."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    done = subprocess.run(train_command(tiny_hf_preset, run_dir), cwd=REPO, env=run_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_run_directory_holds_the_contract(finished_run):
    run = read_run(finished_run)  # raises unless every file and manifest key is in place
    manifest = run.manifest
    assert set(MANIFEST_KEYS) <= set(manifest) and manifest["trainer"] == "jax_lora"
    assert manifest["config"]["lr"] == 2e-4 and manifest["config"]["lora"]["rank"] == 16
    assert manifest["config"]["group_by_length"] is True  # the default: resume test groups too
    assert manifest["devices"]["replicas"] == len(jax.devices())
    assert manifest["params"]["trainable"] == 2 * 2 * 16 * (32 + 32) + (32 * 3 + 3)
    assert manifest["split"]["n_train"] == 42 and len(run.predictions) == 18
    assert run.embeddings.shape == (18, 32)
    assert run.history["epoch"].tolist() == [1, 2]
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2]
    assert all(e["examples_per_s"] > 0 and e["compile_seconds"] >= 0 for e in manifest["epochs"])
    for e in manifest["epochs"]:   # the same meaning as tf_baseline's: the whole epoch
        assert e["seconds"] == pytest.approx(e["train_seconds"] + e["eval_seconds"]
                                             + e["checkpoint_seconds"])
        assert e["checkpoint_seconds"] > 0  # --checkpoint-every saves inside the epoch
        assert e["train_seconds"] >= e["compile_seconds"]
    assert manifest["epochs"][1]["examples_per_s"] == pytest.approx(
        STEPS_PER_EPOCH * 4 / manifest["epochs"][1]["seconds"])
    np.testing.assert_allclose(run.predictions[["p_entailment", "p_neutral",
                                                "p_contradiction"]].sum(axis=1), 1.0, atol=1e-6)
    submission = (finished_run / "submission.csv").read_text().splitlines()
    assert len(submission) == 1 + 60
    steps = sorted(int(p.name) for p in (finished_run / CHECKPOINTS).iterdir())
    assert steps == [2 * STEPS_PER_EPOCH - 2, 2 * STEPS_PER_EPOCH]  # --keep-checkpoints 2


def test_adapter_reproduces_the_predictions(finished_run):
    pretrained = load_adapter(finished_run / ADAPTER)
    run = read_run(finished_run)
    data = load(parse_config(RUN_FLAGS).data)
    assert data.val["id"].tolist() == run.predictions["id"].tolist()
    encoded = encode(pretrained.tokenizer, data.val, 32)
    graphdef, params = nnx.split(pretrained.model)
    logits, cls = evaluate(fast_compile(make_eval_step(graphdef)), params, encoded, global_batch=4,
                           mesh=make_mesh(), dynamic=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, run.predictions[["p_entailment", "p_neutral",
                                                       "p_contradiction"]], atol=1e-6)
    np.testing.assert_allclose(cls, run.embeddings, atol=1e-6)


@pytest.mark.parametrize("flags, field", [
    (["--epochs", "0"], "--epochs"), (["--targets", "query,dense"], "targets"),
    (["--remat", "all"], "--remat"),
    (["--batch-per-device", "100"], "--batch-per-device"),
    (["--sequence-length", "100", "--no-dynamic-padding"], None),  # valid: control case
    (["--sequence-length", "200"], "--sequence-length"),  # tiny preset has 128 positions
    (["--sequence-length", "4"], "--sequence-length 4: must lie in [5, 512]"),  # packing floor
    (["--data-dir", "/nonexistent"], "--data-dir"), (["--preset", "/nonexistent/x"], "--preset")])
def test_bad_input_exits_2_before_writing(tiny_hf_preset, tmp_path, capsys, flags, field):
    run_dir = tmp_path / "run"
    argv = ["--preset", str(tiny_hf_preset), "--run-dir", str(run_dir), *RUN_FLAGS, *flags]
    if field is None:  # the same command line minus the bad flag passes validation
        prepare(parse_config(argv))
        assert not run_dir.exists()
        return
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and not run_dir.exists()
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and field in error and "\n" not in error


def files_of(run_dir: Path) -> dict:
    """Every file of a run directory (relative path -> bytes), to tell that nothing changed."""
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_a_finished_run_with_other_hyperparameters_is_refused(finished_run, tiny_hf_preset,
                                                              tmp_path, capsys):
    run_dir = tmp_path / "finished"  # a copy: the reference run stays as the others expect it
    shutil.copytree(finished_run, run_dir)
    before = files_of(run_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", str(tiny_hf_preset), "--run-dir", str(run_dir), *RUN_FLAGS,
              "--lr", "1e-3"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in error
    assert "holds a finished run with other inputs (lr 0.0002 -> 0.001)" in error
    assert "--restart" in error
    assert files_of(run_dir) == before


def test_rerunning_a_finished_run_keeps_it(finished_run, tiny_hf_preset, tmp_path, capsys):
    run_dir = tmp_path / "finished"  # a copy: the reference run stays as the others expect it
    shutil.copytree(finished_run, run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    main(["--preset", str(tiny_hf_preset), "--run-dir", str(run_dir), *RUN_FLAGS])
    assert "holds this run, finished; kept" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_other_weights_at_the_same_preset_path_are_refused(finished_run, tiny_hf_preset,
                                                           tmp_path, capsys):
    """The run directory records the weights' checksums; a resume or reuse compares them."""
    preset, run_dir = tmp_path / "preset", tmp_path / "run"
    shutil.copytree(tiny_hf_preset, preset)
    shutil.copytree(finished_run, run_dir)
    flags = ["--preset", str(preset), "--run-dir", str(run_dir), *RUN_FLAGS]
    manifest = json.loads((run_dir / MANIFEST).read_text())
    manifest.update(config=parse_config(flags).with_preset_defaults().to_dict(),
                    weights=describe_preset(str(preset)))
    (run_dir / MANIFEST).write_text(json.dumps(manifest))
    main(flags + ["--check"])
    assert "check passed" in capsys.readouterr().out
    with open(preset / "model.safetensors", "ab") as weights:
        weights.write(b"\0")  # other bytes at the same path
    with pytest.raises(SystemExit) as exit_info:
        main(flags + ["--check"])
    assert exit_info.value.code == 2 and "weights checksum" in capsys.readouterr().err


def test_restart_retrains_from_scratch(finished_run, tiny_hf_preset, tmp_path, run_env):
    run_dir = tmp_path / "restarted"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "stale.txt").write_text("left by the old run")
    command = train_command(tiny_hf_preset, run_dir) + ["--epochs", "1", "--restart"]
    done = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = read_run(run_dir)
    assert run.manifest["config"]["epochs"] == 1 and "resumed_at" not in run.manifest
    assert run.history["epoch"].tolist() == [1] and not (run_dir / "stale.txt").exists()
    assert sorted(int(p.name) for p in (run_dir / CHECKPOINTS).iterdir()) == [
        STEPS_PER_EPOCH - 2, STEPS_PER_EPOCH]  # none of the old run's steps 18 and 20


def test_kill_9_then_rerun_ends_bitwise_equal(finished_run, tiny_hf_preset, tmp_path, run_env):
    run_dir = tmp_path / "killed"
    command = train_command(tiny_hf_preset, run_dir)
    kill_after = STEPS_PER_EPOCH + 2  # a checkpoint in the middle of epoch 2
    process = subprocess.Popen(command, cwd=REPO, env=run_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    kill_9_at_checkpoint([process], run_dir / CHECKPOINTS, kill_after)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == -signal.SIGKILL, f"not killed mid-run:\n{output[-2000:]}"
    assert json.loads((run_dir / MANIFEST).read_text())["status"] == "running"

    rerun = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True,
                           text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from step" in rerun.stdout
    resumed = safetensors.numpy.load_file(str(run_dir / ADAPTER / ADAPTER_WEIGHTS))
    reference = safetensors.numpy.load_file(str(finished_run / ADAPTER / ADAPTER_WEIGHTS))
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert np.array_equal(resumed[name], reference[name]), name
    assert read_run(run_dir).history.equals(read_run(finished_run).history)
    assert "resumed_at" in read_run(run_dir).manifest


def test_a_second_trainer_on_the_run_directory_is_refused(finished_run, tiny_hf_preset,
                                                         tmp_path, run_env):
    """Two `python jax_lora/train.py` with the same flags and --run-dir (issue 31): the second
    stops in one line naming the first, exit code 3, touching nothing; once the first is
    killed, the same command takes its lock over and ends as the uninterrupted run."""
    run_dir = tmp_path / "shared"
    command = train_command(tiny_hf_preset, run_dir)
    first = subprocess.Popen(command, cwd=REPO, env=run_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / LOCK).exists() and first.poll() is None:
            assert time.monotonic() < deadline, "the first trainer never took the lock"
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # holds the lock for as long as the test needs
        before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        second = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == EXIT_LOCKED, second.stderr[-3000:]
        assert second.stderr.splitlines() == [
            f"error: --run-dir {run_dir}: in use by process {first.pid} on host "
            f"{socket.gethostname()} ({run_dir / LOCK}); wait for it to finish or stop it, or "
            f"pass another --run-dir"]
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    finally:
        first.kill()  # kill -9: its lock stays behind
        first.wait()
    third = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of process {first.pid} on " in third.stdout
    assert not (run_dir / LOCK).exists()  # released at the end
    resumed = safetensors.numpy.load_file(str(run_dir / ADAPTER / ADAPTER_WEIGHTS))
    reference = safetensors.numpy.load_file(str(finished_run / ADAPTER / ADAPTER_WEIGHTS))
    for name in reference:
        assert np.array_equal(resumed[name], reference[name]), name


def test_remat_run_trains_the_same_adapters(finished_run, tiny_hf_preset, tmp_path, run_env):
    """`--remat layers` recomputes each layer in the backward pass (with the memory-optimised
    scheduler on CPU): the same adapters and validation predictions as the reference run."""
    run_dir = tmp_path / "remat"
    done = subprocess.run([*train_command(tiny_hf_preset, run_dir), "--remat", "layers"],
                          cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_run(run_dir).manifest["config"]["remat"] == "layers"
    trained = safetensors.numpy.load_file(str(run_dir / ADAPTER / ADAPTER_WEIGHTS))
    reference = safetensors.numpy.load_file(str(finished_run / ADAPTER / ADAPTER_WEIGHTS))
    for name in reference:
        np.testing.assert_allclose(trained[name], reference[name], atol=1e-5, err_msg=name)
    columns = ["p_entailment", "p_neutral", "p_contradiction"]
    np.testing.assert_allclose(read_run(run_dir).predictions[columns],
                               read_run(finished_run).predictions[columns], atol=1e-5)


def test_damaged_checkpoint_resumes_from_the_previous_one(finished_run, tiny_hf_preset,
                                                          tmp_path, run_env):
    """Issue 31's case: the data files under the newest checkpoint's ocdbt.process_0/d/ cut to
    100 bytes, and no checksum record (a run from before it): orbax's bare Exception is
    classified by its cause, the rerun says so in one line, resumes from the checkpoint before
    and ends exactly where the uninterrupted run ended."""
    run_dir = tmp_path / "damaged"
    shutil.copytree(finished_run, run_dir)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    (run_dir / MANIFEST).write_text(json.dumps({**manifest, "status": "running"}))
    newest, previous = 2 * STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH - 2
    (run_dir / CHECKPOINTS / str(newest) / CHECKSUMS).unlink()
    data = list((run_dir / CHECKPOINTS / str(newest) / "state" / "ocdbt.process_0" / "d")
                .iterdir())
    assert data, "no data files under ocdbt.process_0/d: orbax's layout changed"
    for path in data:
        path.write_bytes(path.read_bytes()[:100])
    command = train_command(tiny_hf_preset, run_dir)
    rerun = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = rerun.stderr.splitlines()  # nothing else: no leftover reads, no orbax log
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: checkpoint {run_dir / CHECKPOINTS / str(newest)} is damaged ("), rerun.stderr
    assert f"resumed from step {previous}" in rerun.stdout
    resumed = safetensors.numpy.load_file(str(run_dir / ADAPTER / ADAPTER_WEIGHTS))
    reference = safetensors.numpy.load_file(str(finished_run / ADAPTER / ADAPTER_WEIGHTS))
    for name in reference:
        assert np.array_equal(resumed[name], reference[name]), name

    # Nothing restores: one line naming the damage and the way out, no traceback.
    (run_dir / MANIFEST).write_text(json.dumps({**manifest, "status": "running"}))
    for record in (run_dir / CHECKPOINTS).glob(f"*/{CHECKSUMS}"):  # one garbled byte each
        record.write_bytes(record.read_bytes().replace(b'"sha256"', b'"sha255"'))
    hopeless = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True,
                              timeout=300)
    lines = hopeless.stderr.splitlines()
    assert hopeless.returncode == 2 and len(lines) == 1, hopeless.stderr[-3000:]
    assert lines[0].startswith("error: no checkpoint of the run can be restored")
    assert "--restart" in lines[0]
    assert f"{CHECKSUMS} (the checksum record) cannot be read" in lines[0]
