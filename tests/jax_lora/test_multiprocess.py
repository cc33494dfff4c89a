"""Two trainer processes joined by jax.distributed on localhost (one CPU device each, gloo
collectives) train as one process with two devices does: the same losses, dev evaluations,
predictions and adapter, also when both are killed mid-run and rerun."""

import contextlib
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import jaxlib._jax
import numpy as np
import pytest
import safetensors.numpy

from jax_lora.adapter import ADAPTER, ADAPTER_WEIGHTS
from jax_lora.checkpoint import CHECKPOINTS
from jax_lora.config import TrainConfig, parse_config
from jax_lora.distributed import ProcessConfig, initialize
from shared.data.watson import SAMPLE_DATA_DIR
from shared.runs.run_dir import read_run
from tests.helpers import kill_9_at_checkpoint, trainer_command
from tests.jax_lora.trainer_process import run_trainer

REPO = Path(__file__).resolve().parents[2]
# CPU processes exchange gradients through gloo; a jaxlib built without it cannot run this.
pytestmark = pytest.mark.skipif(not hasattr(jaxlib._jax, "make_gloo_tcp_collectives"),
                                reason="this jaxlib has no gloo CPU collectives")
# 42 training rows / 8 (4 per device, 2 devices) = 5 steps per epoch; a dev part evaluated
# every 2 steps, so the best checkpoint and early decisions are made from gathered outputs.
# A learning rate that moves the tiny model, so that predictions differ from step to step.
FLAGS = ["--data-dir", str(SAMPLE_DATA_DIR), "--limit", "80", "--batch-per-device", "4",
         "--sequence-length", "32", "--epochs", "3", "--checkpoint-every", "2",
         "--keep-checkpoints", "2", "--dev-fraction", "0.2", "--eval-every", "2", "--lr", "1e-2",
         "--quiet"]
STEPS_PER_EPOCH = 5
TOLERANCE = 1e-5
SECONDS = 400  # for one run of both processes


@pytest.mark.parametrize("flags, message", [
    (["--num-processes", "2"], "--process-id None: --num-processes 2 needs each process's"),
    (["--num-processes", "2", "--process-id", "2"], "--process-id 2: must lie in 0 .. 1"),
    (["--process-id", "1"], "--process-id 1: a single process is process 0"),
    (["--num-processes", "-1"], "--num-processes -1: must be >= 0"),
])
def test_bad_process_flags_are_one_line_errors(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(flags)


def test_several_processes_need_a_coordinator(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="--num-processes 2: needs --coordinator-address"):
        initialize(ProcessConfig(num_processes=2, process_id=0), {})


def test_the_process_layout_is_not_a_hyperparameter():
    """The processes of one run differ in --process-id yet ask for the same run, which may
    also resume under another layout."""
    layout = ["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2"]
    first, second = (parse_config(layout + ["--process-id", index]) for index in "01")
    assert first.to_dict() == second.to_dict() == TrainConfig().to_dict()


def device_flags(env: dict, count: int) -> dict:
    """`env` with `count` CPU devices per process."""
    flags = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={count}"
    return {**env, "XLA_FLAGS": flags}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def two_processes(preset: Path, run_dir: Path, env: dict, logs: Path, flags=((), ())):
    """Processes 0 and 1 of one run, one CPU device each (`flags`: each one's own extra
    flags); whatever still runs on exit is killed."""
    command = trainer_command("jax_lora", "--preset", preset, "--run-dir", run_dir, *FLAGS,
                              "--coordinator-address", f"127.0.0.1:{free_port()}",
                              "--num-processes", "2")
    started = []
    try:
        for index in range(2):
            log = (logs / f"process{index}.log").open("w")
            started.append(subprocess.Popen(command + [*flags[index], "--process-id", str(index)],
                                            cwd=REPO,
                                            env=device_flags(env, 1), stdout=log,
                                            stderr=subprocess.STDOUT, text=True))
            log.close()
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)


def wait_all(started, logs: Path) -> list[str]:
    """Each process's output, once all have exited 0 within SECONDS."""
    deadline = time.monotonic() + SECONDS
    for process in started:
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    outputs = [(logs / f"process{index}.log").read_text() for index in range(len(started))]
    for process, output in zip(started, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Losses, dev evaluations, predictions, [CLS] vectors and adapter within TOLERANCE."""
    run, expected = read_run(run_dir), read_run(reference)
    for frame, columns in (("history", ["train_loss", "train_accuracy"]),
                           ("evals", ["step", "train_loss", "dev_loss", "dev_accuracy"]),
                           ("predictions", ["p_entailment", "p_neutral", "p_contradiction"])):
        np.testing.assert_allclose(getattr(run, frame)[columns].to_numpy(float),
                                   getattr(expected, frame)[columns].to_numpy(float),
                                   atol=TOLERANCE, rtol=0, err_msg=frame)
    np.testing.assert_allclose(run.embeddings, expected.embeddings, atol=TOLERANCE, rtol=0)
    adapter = safetensors.numpy.load_file(str(run_dir / ADAPTER / ADAPTER_WEIGHTS))
    reference_adapter = safetensors.numpy.load_file(str(reference / ADAPTER / ADAPTER_WEIGHTS))
    assert adapter.keys() == reference_adapter.keys()
    for name, value in reference_adapter.items():
        np.testing.assert_allclose(adapter[name], value, atol=TOLERANCE, rtol=0, err_msg=name)
    assert run.manifest["best"]["step"] == expected.manifest["best"]["step"]


@pytest.fixture(scope="module")
def one_process_two_devices(tiny_hf_preset, tmp_path_factory, run_env) -> Path:
    """The reference: one process with two forced host devices, the same global batch."""
    run_dir = tmp_path_factory.mktemp("runs") / "one_process"
    run_trainer(tiny_hf_preset, run_dir, *FLAGS, env=device_flags(run_env, 2))
    devices = read_run(run_dir).manifest["devices"]
    assert (devices["processes"], devices["replicas"]) == (1, 2)
    return run_dir


def test_two_processes_train_as_one_process_with_two_devices(one_process_two_devices,
                                                             tiny_hf_preset, tmp_path, run_env):
    run_dir = tmp_path / "two_processes"
    with two_processes(tiny_hf_preset, run_dir, run_env, tmp_path) as started:
        outputs = wait_all(started, tmp_path)
    assert all("on 2 cpu device(s)" in output for output in outputs)
    devices = read_run(run_dir).manifest["devices"]  # written by process 0 alone
    assert (devices["processes"], devices["replicas"], len(devices["devices"])) == (2, 2, 2)
    assert_same_run(run_dir, one_process_two_devices)


def test_both_killed_mid_run_then_rerun_end_the_same(one_process_two_devices, tiny_hf_preset,
                                                     tmp_path, run_env):
    run_dir = tmp_path / "killed"
    kill_after = STEPS_PER_EPOCH + 2  # a checkpoint in the middle of epoch 2
    with two_processes(tiny_hf_preset, run_dir, run_env, tmp_path) as started:
        kill_9_at_checkpoint(started, run_dir / CHECKPOINTS, kill_after, SECONDS)
        for process in started:
            process.wait(timeout=60)
        output = (tmp_path / "process0.log").read_text()
        assert [p.returncode for p in started] == [-signal.SIGKILL] * 2, output[-2000:]
    with two_processes(tiny_hf_preset, run_dir, run_env, tmp_path) as started:
        outputs = wait_all(started, tmp_path)
    assert all("resumed from step" in output for output in outputs), outputs[0][-2000:]
    assert "resumed_at" in read_run(run_dir).manifest
    assert_same_run(run_dir, one_process_two_devices)


def test_processes_given_other_flags_stop_in_one_line_naming_them(tiny_hf_preset, tmp_path,
                                                                  run_env):
    """Before any collective: each process names the fields that differ, and exits 2 within
    seconds, not after JAX's timeouts. A flag only one process gives counts too; --quiet may
    differ."""
    flags = (["--lr", "1e-3", "--no-quiet"], ["--lr", "2e-3", "--rank", "8"])
    began = time.monotonic()
    with two_processes(tiny_hf_preset, tmp_path / "run", run_env, tmp_path, flags) as started:
        for process in started:
            process.wait(timeout=120)
    outputs = [(tmp_path / f"process{index}.log").read_text() for index in range(2)]
    assert [p.returncode for p in started] == [2, 2], outputs
    for me, other in ((0, 1), (1, 0)):
        errors = [line for line in outputs[me].splitlines() if line.startswith("error: ")]
        assert errors == [f"error: process {me} of 2 was given other flags than the others: "
                          f"lora.rank {(16, 8)[me]} here, {(16, 8)[other]} in process {other}; "
                          f"lr {(0.001, 0.002)[me]} here, {(0.001, 0.002)[other]} in process "
                          f"{other}; start every process with the same flags (only "
                          f"--process-id differs)"], outputs[me][-2000:]
        assert "Traceback" not in outputs[me]
    assert time.monotonic() - began < 120
    assert not (tmp_path / "run").exists()  # nothing written
