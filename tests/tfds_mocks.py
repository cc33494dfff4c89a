"""tfds mocked in the tests' process, and the prepare command run inside it: shared by the
prepare tests and the trainers' extra-data tests. A helper module, not a test module: pytest
imports test files under their base name, so a test file imported by another one would run
twice, and a tfds builder defined in it would be registered twice."""

import contextlib
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds

from shared.data.prepare import main


@contextlib.contextmanager
def planted(examples: dict[str, list[dict]]):
    """tfds mocked: builder NAME (real feature specs, nothing on disk) yields examples[NAME],
    serialized and decoded as from its files, whatever the split asked."""
    def as_dataset(builder, split, **kwargs):
        features = builder.info.features
        serialized = [features.serialize_example(e) for e in examples[builder.name]]
        return tf.data.Dataset.from_tensor_slices(serialized).map(features.deserialize_example)

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_dataset_fn=as_dataset):
        yield


def nli(premise: str, hypothesis: str, label: int) -> dict:
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


def prepare(*args: str | Path) -> int:
    """Run the command in this process (mocks hold); its exit code."""
    try:
        main([str(arg) for arg in args])
    except SystemExit as exit_:
        return exit_.code
    return 0
