"""jax_lora with --extra-train (issue #18): the extra rows train, the copies of test pairs do not,
the manifest and the evaluator's report say what each run trained on, and an edited prepared
folder stops the run before it starts."""

import json
import shutil

from shared.data.extra import EXTRA_CSV
from shared.data.spec import DataSpec, load
from shared.data.watson import SAMPLE_DATA_DIR
from shared.evaluation.evaluate import evaluate
from shared.runs.run_dir import MANIFEST
from tests.conftest import PLANTED_EXTRA
from tests.jax_lora.trainer_process import run_trainer

FLAGS = ["--data-dir", str(SAMPLE_DATA_DIR), "--limit", "100", "--batch-per-device", "4",
         "--sequence-length", "32", "--epochs", "1", "--no-predict-test"]


def test_extra_rows_train_and_the_report_tells_the_runs_apart(tiny_hf_preset, extra_train,
                                                             tmp_path, run_env):
    plain, extra = tmp_path / "plain", tmp_path / "extra"
    run_trainer(tiny_hf_preset, plain, *FLAGS, env=run_env)
    done = run_trainer(tiny_hf_preset, extra, *FLAGS, "--extra-train", str(extra_train),
                       env=run_env)
    assert ("extra rows: 43 from mock_nli:train; 2 exact and 1 near copies of validation/test "
            "pairs dropped; 40 joined the training part") in done.stdout

    watson_train = len(load(DataSpec(data_dir=SAMPLE_DATA_DIR, limit=100)).train)
    manifests = {d.name: json.loads((d / MANIFEST).read_text()) for d in (plain, extra)}
    assert manifests["plain"]["steps"] == watson_train // 4
    assert manifests["extra"]["steps"] == (watson_train + 43 - PLANTED_EXTRA) // 4
    recorded = manifests["extra"]["data"]["extra"]
    assert recorded["joined"] == 40 and recorded["dropped"] == PLANTED_EXTRA
    assert manifests["extra"]["split"] == manifests["plain"]["split"]  # same validation rows

    result = evaluate([plain, extra], tmp_path / "report", bootstrap=1000)
    assert result["training_sets"] == 2
    words = [run["recipe"]["training_data"]["words"] for run in result["runs"]]
    assert words == ["Watson training part",
                     "Watson training part + 40 extra rows (mock_nli:train) (3 overlapping "
                     "validation/test pairs dropped)"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**The runs trained on different rows**" in report and "Contaminated" not in report

    # Kept when asked again; an edited prepared file stops the run with one line.
    again = run_trainer(tiny_hf_preset, extra, *FLAGS, "--extra-train", str(extra_train),
                        env=run_env)
    assert "holds this run, finished; kept" in again.stdout
    edited = tmp_path / "edited"
    shutil.copytree(extra_train, edited)
    (edited / EXTRA_CSV).write_text((edited / EXTRA_CSV).read_text() + "\n")
    failed = run_trainer(tiny_hf_preset, tmp_path / "never", *FLAGS, "--extra-train",
                         str(edited), env=run_env, check=False)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "changed since it was prepared" in failed.stderr
    assert not (tmp_path / "never").exists()
