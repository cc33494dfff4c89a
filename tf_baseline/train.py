r"""Full fine-tuning of multilingual BERT with keras-hub: the Kaggle KerasNLP starter notebook.

    python tf_baseline/train.py                 # bert_base_multi, 3 epochs, Kaggle split
    MINILM=$(python -c 'from shared.runs.presets import minilm_dir; print(minilm_dir())')
    python tf_baseline/train.py --preset $MINILM --sequence-length 64 --epochs 1 --limit 300 \
        --run-dir /tmp/tfcheck --quiet          # offline: MiniLM on the embedded sample

Expected (the notebook's published figures for its saved runs, TPU v3-8, ~39 s per epoch):
validation accuracy 0.56–0.61 after each of the 3 epochs, varying run to run.
The run directory (shared/runs/run_dir.py) gets the manifest, predictions.csv (all validation
rows), history.csv, submission.csv, cls_embeddings.npy, and preset/ (the trained classifier,
reloadable by `predict`).
Killed runs resume from run_dir/backup when the same command is run again.

API: `train(config) -> run_dir`, `predict(run_dir, frame) -> probabilities`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `python tf_baseline/train.py` puts this folder, not the repo, first on sys.path: `shared` and
# `tf_baseline` would then come from wherever an editable install points (another checkout).
if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no CUDA chatter

import shutil  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from shared.cli import trainer_main  # noqa: E402
from shared.data.spec import Data  # noqa: E402
from shared.runs.encoder import EncoderNumbers, encoder_numbers  # noqa: E402
from shared.runs.lock import lock_run_dir, unlock_run_dir  # noqa: E402
from shared.runs.reuse import NEW, RESUME, clear_run_dir, code_version, plan_run  # noqa: E402
from shared.runs.run_dir import (HISTORY_COLUMNS, RunWriter, library_versions,  # noqa: E402
                                 peak_host_rss_mb, predictions_frame, softmax, submission_frame)
from tf_baseline.callbacks import (EpochRecorder, backup_callbacks, check_backup,  # noqa: E402
                                   peak_gpu_memory_mb)
from tf_baseline.config import TrainConfig, parse_config  # noqa: E402
from tf_baseline.data import text_dataset  # noqa: E402
from tf_baseline.model import (check_one_worker, check_sequence_length, count_params,  # noqa: E402
                               describe_strategy, inference_model, load_classifier,
                               load_preprocessor, make_strategy, save_preset)
from tf_baseline.schedule import check_warmup, learning_rate  # noqa: E402

TRAINER = "tf_baseline"
PRESET_DIR = "preset"  # the trained classifier inside a run directory
BACKUP_DIR = "backup"  # resume state; removed once the run has finished
PREDICT_BATCH = 64  # rows per predict batch when no strategy sets one


@dataclass
class Setup:
    """Everything validated and built: what remains cannot fail on bad input."""
    config: TrainConfig
    data: Data
    weights: dict  # shared.runs.presets.describe_preset
    state: str  # shared.runs.reuse: NEW or RESUME
    strategy: tf.distribute.Strategy
    preprocessor: object
    classifier: keras.Model
    numbers: EncoderNumbers  # shared.runs.encoder: GELU, epsilon, dropout, tokenizer, pooler

    @property
    def global_batch(self) -> int:
        return self.config.batch_per_replica * self.strategy.num_replicas_in_sync

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: whole global batches (the notebook drops the rest)."""
        return len(self.data.train) // self.global_batch


def prepare(config: TrainConfig) -> Setup | None:
    """Data, strategy and model, with every check that bad input can fail; writes nothing
    (but may repair a damaged resume state in run_dir/backup, as Keras' own fallback would).
    None when nothing is left to do: a --check, or this very run found finished in the run
    directory (shared/runs/reuse.py)."""
    check_one_worker(os.environ.get("TF_CONFIG"))
    plan = plan_run(TRAINER, config)
    if plan is None:
        return None
    data, weights, state = plan
    keras.backend.clear_session()  # fresh layer names, so a resumed run's state paths match
    keras.utils.set_random_seed(config.seed)  # head init and dropout
    strategy = make_strategy(config.cpu_replicas)
    print(f"replicas: {strategy.num_replicas_in_sync} ({type(strategy).__name__})")
    setup = Setup(config, data, weights, state, strategy,
                  load_preprocessor(config.preset, config.sequence_length),
                  load_classifier(config.preset, strategy, config.lora_rank),
                  encoder_numbers(config.preset))
    check_sequence_length(setup.preprocessor, setup.classifier)
    for part, frame in (("training", data.train), ("validation", data.val)):
        if len(frame) < setup.global_batch:  # the notebook drops incomplete batches
            raise ValueError(f"--batch-per-replica {config.batch_per_replica}: a global batch "
                             f"of {setup.global_batch} rows exceeds the {len(frame)} {part} "
                             f"rows; use more rows or a smaller batch")
    check_warmup(config.warmup_steps, setup.steps_per_epoch, config.epochs)
    lock_run_dir(config.run_dir)  # every check passed: from here on this process writes it
    if state == RESUME:  # a damaged backup: Keras' previous one, or one line and --restart
        check_backup(Path(config.run_dir) / BACKUP_DIR, setup.steps_per_epoch)
    return setup


def run(setup: Setup, callbacks=()) -> Path:
    """Fit, predict, write the run directory. `callbacks` go after the run's own."""
    config, data, strategy, classifier = (setup.config, setup.data, setup.strategy,
                                          setup.classifier)
    replicas = strategy.num_replicas_in_sync
    run_dir = Path(config.run_dir)

    # Data: the notebook's pipeline; incomplete batches dropped for fit and its validation.
    train_ds = text_dataset(data.train, setup.preprocessor, setup.global_batch, labels=True,
                            drop_remainder=True)
    val_ds = text_dataset(data.val, setup.preprocessor, setup.global_batch, labels=True,
                          drop_remainder=True)
    steps = setup.steps_per_epoch
    print(f"data: {len(data.train)} train / {len(data.val)} validation rows, global batch "
          f"{setup.global_batch}, {steps} steps per epoch")
    if data.extra is not None:
        print(f"data: {data.extra.summary()}")

    # Optimizer and loss: the notebook's, the learning rate scaled by the replica count
    # (the peak of --warmup-steps and --schedule linear, over the run's steps x epochs).
    peak = config.lr_per_replica * replicas
    with strategy.scope():
        rate = learning_rate(peak, config.schedule, config.warmup_steps, steps * config.epochs)
        classifier.compile(optimizer=keras.optimizers.Adam(rate),
                           loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                           metrics=["accuracy"])

    if setup.state == NEW:
        clear_run_dir(run_dir)  # --restart: nothing of the old run survives
    writer = RunWriter(run_dir)
    writer.start(trainer=TRAINER, config=config.to_dict(), weights=setup.weights,
                 code=code_version(), split=data.split.describe(), data=data.describe(),
                 versions=library_versions("tensorflow", "keras", "keras-hub", "keras-nlp",
                                           "tokenizers"),
                 devices=describe_strategy(strategy), params=count_params(classifier))
    writer.update(preprocessing=describe_preprocessor(setup.preprocessor),
                  model={"pooling": setup.numbers.default_pooling,
                         "encoder_numbers": setup.numbers.to_dict()},
                  training={"optimizer": type(classifier.optimizer).__name__,
                            "learning_rate": peak, "global_batch": setup.global_batch,
                            "steps_per_epoch": steps, "loss": type(classifier.loss).__name__,
                            "from_logits": classifier.loss.from_logits})
    backup = run_dir / BACKUP_DIR
    if backup.is_dir():
        print(f"resuming from {backup}")

    # Fit. Order matters: the record and the exact state of an epoch exist before its backup.
    classifier.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                   verbose=0 if config.quiet else "auto",
                   callbacks=[EpochRecorder(writer, steps * setup.global_batch),
                              *backup_callbacks(backup), *callbacks])

    # Outputs: predictions cover every validation and test row.
    save_preset(classifier, setup.preprocessor, run_dir / PRESET_DIR, setup.numbers)
    with strategy.scope():
        model = inference_model(classifier)
    # One pass over validation + test rows: predict costs a trace per call.
    rows = pd.concat([data.val, data.test]) if data.test is not None else data.val
    all_probs, all_cls = predict_arrays(model, setup.preprocessor, rows, setup.global_batch)
    probs, cls = all_probs[:len(data.val)], all_cls[:len(data.val)]
    writer.write_predictions(predictions_frame(data.val, probs))
    writer.write_embeddings(cls)
    writer.write_history(pd.DataFrame(writer.manifest["epochs"])[list(HISTORY_COLUMNS)])
    if data.test is not None:
        writer.write_submission(submission_frame(data.test, all_probs[len(data.val):]))
    # Peaks over every process the run took (a resumed run's epochs were partly elsewhere).
    epochs = writer.manifest["epochs"]
    writer.finish(peak_host_rss_mb=_peak(epochs, "peak_host_rss_mb", peak_host_rss_mb()),
                  peak_accelerator_mem_mb=_peak(epochs, "peak_accelerator_mem_mb",
                                                peak_gpu_memory_mb()))
    shutil.rmtree(backup, ignore_errors=True)
    unlock_run_dir(run_dir)
    accuracy = float((probs.argmax(axis=1) == data.val["label"].to_numpy()).mean())
    print(f"validation accuracy {accuracy:.4f} on all {len(data.val)} rows "
          f"(last epoch {epochs[-1]['seconds']:.1f} s); run directory {run_dir}")
    return run_dir


def _peak(epochs: list[dict], key: str, now: float | None) -> float | None:
    return max((v for v in [now] + [e[key] for e in epochs] if v is not None), default=None)


def train(config: TrainConfig, callbacks=()) -> Path:
    """The whole run; resumes `config.run_dir` when it holds an unfinished run of `config`,
    keeps it when it holds this run finished."""
    setup = prepare(config)
    return run(setup, callbacks) if setup is not None else Path(config.run_dir)


def predict_arrays(model: keras.Model, preprocessor, frame: pd.DataFrame,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities [n, 3], [CLS] vectors [n, hidden]) for every row of `frame`."""
    dataset = text_dataset(frame, preprocessor, batch_size, labels=False, drop_remainder=False)
    outputs = model.predict(dataset, verbose=0)
    return softmax(outputs["logits"]), outputs["cls"]


def predict(run_dir: Path, frame: pd.DataFrame, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Class probabilities [n, 3] of a finished run's classifier, on one device."""
    preset = str(Path(run_dir) / PRESET_DIR)
    strategy = tf.distribute.get_strategy()
    model = inference_model(load_classifier(preset, strategy))
    probs, _ = predict_arrays(model, load_preprocessor(preset, None), frame, batch_size)
    return probs


def describe_preprocessor(preprocessor) -> dict:
    """lowercase/strip_accents are keras-hub's BERT tokenizer's own (None for SentencePiece,
    whose model holds its rules); with a text normaliser (a Hugging Face BERT model:
    model.load_preprocessor) they are off and `text_normalizer` holds the rules."""
    tokenizer = preprocessor.tokenizer
    normalizer = getattr(preprocessor, "text_normalizer", None)  # model.text_normalizer
    return {"sequence_length": preprocessor.sequence_length, "truncate": preprocessor.truncate,
            "tokenizer": type(tokenizer).__name__,
            "lowercase": getattr(tokenizer, "lowercase", None),
            "strip_accents": getattr(tokenizer, "strip_accents", None),
            "vocabulary_size": tokenizer.vocabulary_size(),
            "text_normalizer": normalizer.describe() if normalizer is not None else None}


def main(argv=None) -> None:
    trainer_main(parse_config, prepare, run, argv)


if __name__ == "__main__":
    main()
