"""The Watson competition files as a tfds dataset, `contradictory_my_dear_watson` (issue #18).

Importing this module registers the builder. Its data are the competition's own files, read
through shared.data.watson (the same validation, texts byte-for-byte as the files hold them),
so tfds sees what the CSV path sees:

    import tensorflow_datasets as tfds
    import shared.data.tfds_watson  # registers the builder
    config = tfds.download.DownloadConfig(manual_dir="/kaggle/input/contradictory-my-dear-watson")
    train = tfds.load("contradictory_my_dear_watson", split="train",
                      download_and_prepare_kwargs={"download_config": config})

Only the prepare command (`python -m shared.data.prepare --watson DIR`) imports this: tfds
needs TensorFlow, which stays out of the JAX trainer's process and the evaluator.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from shared.data.watson import KAGGLE_DATA_DIR, LABEL_NAMES, load_test, load_train

# Test rows have no label; tfds's ClassLabel accepts -1 as "no label" (the convention of its
# own unlabeled splits, e.g. glue's test), so test rows keep the train rows' features.
NO_LABEL = -1


class ContradictoryMyDearWatson(tfds.core.GeneratorBasedBuilder):
    """Kaggle's "Contradictory, My Dear Watson": multilingual NLI pairs in 15 languages."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: train.csv and test.csv as Kaggle ships them, in file order.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Pass as manual_dir the folder that holds the competition's train.csv and test.csv (test.csv
    is optional), e.g. {KAGGLE_DATA_DIR} on Kaggle, or download them from
    https://www.kaggle.com/competitions/contradictory-my-dear-watson/data.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Premise/hypothesis pairs in 15 languages labelled entailment, "
                        "neutral or contradiction; test rows have label -1 (no label).",
            features=tfds.features.FeaturesDict({
                "id": text, "premise": text, "hypothesis": text, "lang_abv": text,
                "language": text, "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            }),
            supervised_keys=None,
            homepage="https://www.kaggle.com/competitions/contradictory-my-dear-watson",
            # The starter notebook's split is the first 70% of train.csv in file order: reading
            # must give the rows in that order, not tfds's hashed one.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = Path(dl_manager.manual_dir)
        splits = {"train": self._generate_examples(manual_dir, "train")}
        if (manual_dir / "test.csv").exists():
            splits["test"] = self._generate_examples(manual_dir, "test")
        return splits

    def _generate_examples(self, manual_dir: Path, part: str):
        """(row index, row) in file order: integer keys keep that order under
        disable_shuffling (tfds sorts by key)."""
        if part == "train":
            frame = load_train(manual_dir)
        else:
            frame = load_test(manual_dir).assign(label=NO_LABEL)
        for index, row in enumerate(frame.itertuples(index=False)):
            yield index, row._asdict()
