"""tf.data pipelines over the validated Watson frames, preprocessed as the notebook's fit does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

from shared.data.watson import LABEL_NAMES
from tf_baseline.model import text_normalizer


def text_dataset(frame: pd.DataFrame, preprocessor, batch_size: int, *, labels: bool,
                 drop_remainder: bool) -> tf.data.Dataset:
    """Batches of token ids (+ one-hot labels) for fit, evaluate or predict.

    The notebook's pipeline is `from_tensor_slices(((premise, hypothesis), one_hot))
    .batch(16 * replicas, drop_remainder=True).cache().prefetch(AUTOTUNE)`, with the preset's
    preprocessor attached to the classifier, so Keras maps it over each batch. Here it runs
    inside the pipeline instead (before cache, so epochs 2-3 skip tokenizing), because
    under MirroredStrategy Keras' fit builds the model from the first batch reduced across
    replicas (`strategy.reduce("MEAN", batch)`), and the preprocessor's bool `padding_mask`
    makes that an AddN on bool, which TensorFlow has no kernel for. The backbone declares
    its padding_mask input int32 and casts the mask to int32 before attention anyway, so the
    cast changes no number (a test compares the logits).

    A preprocessor for a Hugging Face model has a text normaliser attached (model.
    load_preprocessor): the texts go through it first, in Python, since it is the `tokenizers`
    library's code, not a TensorFlow op.
    """
    normalizer = text_normalizer(preprocessor)
    texts = {column: _texts(frame[column], normalizer) for column in ("premise", "hypothesis")}
    if labels:
        one_hot = tf.one_hot(frame["label"].to_numpy(), len(LABEL_NAMES))
        dataset = tf.data.Dataset.from_tensor_slices((texts, one_hot))
    else:
        dataset = tf.data.Dataset.from_tensor_slices(texts)
    return (dataset.batch(batch_size, drop_remainder=drop_remainder)
            .map(lambda *element: _preprocess(preprocessor, *element),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .cache()
            .prefetch(tf.data.AUTOTUNE))


def _texts(column: pd.Series, normalizer) -> np.ndarray:
    texts = column.tolist()
    return np.asarray(texts if normalizer is None else normalizer(texts), dtype=str)


def _preprocess(preprocessor, texts: dict, one_hot=None):
    # Two positional arguments on purpose: keras-hub reads a lone 2-tuple argument as
    # (x, y), which would drop the hypothesis.
    features = preprocessor((texts["premise"], texts["hypothesis"]), None)
    features["padding_mask"] = tf.cast(features["padding_mask"], tf.int32)
    return features if one_hot is None else (features, one_hot)
