"""Configurations 1 and 2: the tf_baseline code path, full fine-tune or keras-hub `enable_lora`.

The model comes from tf_baseline.model (its strategy, BertTextClassifier.from_preset under the
strategy scope, enable_lora(16) inside it), compiled as tf_baseline/train.py compiles it.
Timed: `train_on_batch` on a fixed, already tokenized batch held as tf tensors, i.e. the
compiled train function that `fit` runs each step, without tokenization or tf.data work.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.spec import LORA_RANK, NUM_CLASSES, Config, Shape  # noqa: E402
from benchmarks.worker import Bench, Job, fake_batch, run_worker  # noqa: E402
from tf_baseline.config import TrainConfig  # noqa: E402
from tf_baseline.model import count_params, load_classifier, make_strategy  # noqa: E402


def build(job: Job, config: Config, shape: Shape) -> Bench:
    recipe = TrainConfig(preset=job.preset)
    keras.utils.set_random_seed(job.seed)
    strategy = make_strategy(recipe.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    lora_rank = LORA_RANK if config.method == "lora_merged" else None
    classifier = load_classifier(job.preset, strategy, lora_rank)
    # As tf_baseline/train.py compiles (optimizer and loss of the notebook, jit_compile left
    # at Keras' "auto", i.e. XLA).
    with strategy.scope():
        classifier.compile(optimizer=keras.optimizers.Adam(recipe.lr_per_replica * replicas),
                           loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                           metrics=["accuracy"])

    def make_step(seq_len: int):
        batch = fake_batch(shape, job.batch, seq_len, job.seed)
        labels = tf.one_hot(batch.pop("labels"), NUM_CLASSES)
        features = {name: tf.constant(value) for name, value in batch.items()}
        return lambda: classifier.train_on_batch(features, labels)

    params = count_params(classifier)
    return Bench(make_step, params["trainable"], params["total"],
                 {"framework": "tensorflow", "tensorflow": tf.__version__,
                  "keras": keras.__version__, "keras_hub": keras_hub.__version__,
                  "dtype": keras.config.floatx(), "replicas": replicas,
                  "strategy": type(strategy).__name__,
                  "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                  "step": "Model.train_on_batch (compiled train function, jit_compile=auto)"})


if __name__ == "__main__":
    run_worker(build)
