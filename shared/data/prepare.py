"""Read NLI data through tfds once and write the plain files the trainers read (issue #18).

tfds needs TensorFlow, which stays out of the JAX trainer's process and the evaluator, so only
this command imports it (inside the functions: `--help` stays fast).

    python -m shared.data.prepare --extra-train SPECS --out FOLDER [--tfds-data-dir DIR]
                                  [--language CODE] [--max-text-chars N]
    python -m shared.data.prepare --watson MANUAL_DIR --out FOLDER [--tfds-data-dir DIR]

e.g.
    python -m shared.data.prepare --extra-train multi_nli:train[:20000],xnli:validation \\
        --out data/extra/mnli20k_xnli          # then: a trainer's --extra-train data/extra/...
    python -m shared.data.prepare --watson /kaggle/input/contradictory-my-dear-watson \\
        --out data/watson_tfds                 # then: a trainer's --data-dir data/watson_tfds

--extra-train: SPECS are comma-separated sources NAME[:VERSION]:SPLIT, NAME a tfds builder,
maybe with a config (glue/mnli), VERSION x.y.z, SPLIT a tfds split with slicing
(train[:20000], validation, train[:10%]+validation). Rows become Watson rows (extra.py's
format): labels mapped by their ClassLabel names to 0 entailment, 1 neutral, 2 contradiction;
Text premises/hypotheses give one row per example in --language; XNLI's translations one row
per language present on both sides. Ids are SPEC:INDEX (SPEC:INDEX:LANG), INDEX the example's
position in the split as read, so they never collide with Watson's 10-hex ids. Rows Watson's
validator would refuse (empty, control characters, longer than --max-text-chars) are skipped
and counted per source in extra.json.

Where tfds data come from: without --tfds-data-dir, tfds's default folder (TFDS_DATA_DIR, else
~/tensorflow_datasets), and a source not prepared there yet is downloaded and prepared; with
--tfds-data-dir, the sources must already be prepared in DIR (e.g. a read-only Kaggle input):
nothing is downloaded, so an offline run fails at once instead of after a network timeout.

--watson: the competition's files through the `contradictory_my_dear_watson` builder
(shared/data/tfds_watson.py), written back as train.csv/test.csv: the same rows, ids, texts,
labels and split fingerprint as reading MANUAL_DIR directly. tfds cannot tell when the files
in MANUAL_DIR change, so the builder's data are regenerated on every run (in a temporary folder,
or kept in --tfds-data-dir).

Bad input: one line `prepare: ...` on stderr naming the source and what to do, exit code 2,
nothing written.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shared.data.extra import EXTRA_COLUMNS, write_prepared
from shared.data.split import SplitSpec, make_split
from shared.data.watson import (CONTROL_CHARACTERS, DEFAULT_MAX_TEXT_CHARS, LABEL_NAMES,
                                TEST_COLUMNS, TRAIN_COLUMNS, DataError, load_test, load_train)

EXIT_BAD_INPUT = 2
WATSON_BUILDER = "contradictory_my_dear_watson"
# Watson's language names; XNLI's 15 languages are exactly these.
LANGUAGE_NAMES = {"ar": "Arabic", "bg": "Bulgarian", "de": "German", "el": "Greek",
                  "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
                  "ru": "Russian", "sw": "Swahili", "th": "Thai", "tr": "Turkish", "ur": "Urdu",
                  "vi": "Vietnamese", "zh": "Chinese"}
# Why a row is skipped, in the order Watson's validator checks.
SKIP_REASONS = ("control_character", "empty", "too_long")
# NAME[:VERSION]:SPLIT. A split holds colons of its own (train[:20000]), a name and a version
# never do, so the first colon not followed by x.y.z: starts the split.
SOURCE_SPEC = re.compile(r"(?P<name>[a-z][a-z0-9_]*(?:/[\w.+-]+)?)"
                         r"(?::(?P<version>\d+\.\d+\.\d+))?:(?P<split>[^,\s]+)")
SPEC_HELP = ("NAME[:VERSION]:SPLIT, e.g. multi_nli:train[:20000] or "
             "glue/mnli:2.0.0:validation_matched")


class PrepareError(ValueError):
    """Bad input to the prepare command; the message is one line naming what to fix."""


@dataclass(frozen=True)
class Source:
    """One --extra-train source."""
    spec: str             # as written: the rows' `source` and the prefix of their ids
    name: str             # tfds builder, maybe with a config: glue/mnli
    version: str | None   # x.y.z [default: the builder's]
    split: str            # tfds split string, slicing allowed

    @property
    def builder_name(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


def parse_sources(specs: str) -> list[Source]:
    """SPECS (comma-separated NAME[:VERSION]:SPLIT) as Sources; PrepareError when malformed."""
    sources = []
    for spec in (part.strip() for part in specs.split(",")):
        match = SOURCE_SPEC.fullmatch(spec)
        if match is None:
            raise PrepareError(f"--extra-train {spec!r}: not {SPEC_HELP}")
        if spec in (source.spec for source in sources):
            raise PrepareError(f"--extra-train {spec}: listed twice; list each source once")
        sources.append(Source(spec, match["name"], match["version"], match["split"]))
    return sources


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _tfds():
    """tensorflow_datasets, imported on first use, with the Watson builder registered."""
    import tensorflow_datasets as tfds
    from absl import logging

    import shared.data.tfds_watson  # noqa: F401  (registers the builder)

    logging.set_verbosity(logging.ERROR)  # tfds's notes would bury the summary and errors
    tfds.disable_progress_bar()
    return tfds


def _require_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"--out {out}: exists and is not an empty folder; pass a new folder")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- --extra-train

def _open_builder(tfds, source: Source, data_dir: Path | None):
    """The source's builder, its label mapping and text kinds, checked before any download."""
    try:
        tfds.core.ReadInstruction.from_spec(source.split)
    except ValueError:
        raise PrepareError(f"{source.spec}: split {source.split!r} is not a tfds split; write "
                           f"e.g. train, train[:20000], train[:10%]+validation") from None
    try:
        builder = tfds.builder(source.builder_name,
                               data_dir=None if data_dir is None else str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise PrepareError(f"{source.spec}: tfds has no builder {source.name.split('/')[0]!r}; "
                           f"check the name at https://www.tensorflow.org/datasets/catalog"
                           ) from None
    except (ValueError, AssertionError) as err:  # unknown config or version
        raise PrepareError(f"{source.spec}: {first_line(err)}") from None
    return builder, _label_mapping(tfds, source, builder), _text_kinds(tfds, source, builder)


def _feature(builder, name: str):
    features = builder.info.features
    return features[name] if name in features.keys() else None


def _label_mapping(tfds, source: Source, builder) -> list[int]:
    """Watson's label for each of the builder's label ids, matched by name."""
    feature = _feature(builder, "label")
    if not isinstance(feature, tfds.features.ClassLabel):
        raise PrepareError(f"{source.spec}: the builder has no ClassLabel feature 'label' to map "
                           f"by name; choose an NLI builder labelled entailment, neutral, "
                           f"contradiction")
    names = list(feature.names)
    folded = [name.lower() for name in names]
    if sorted(folded) != sorted(LABEL_NAMES):
        raise PrepareError(f"{source.spec}: label names are {', '.join(names)}, not "
                           f"{', '.join(LABEL_NAMES)} (any order); only such builders map to "
                           f"Watson's labels")
    return [LABEL_NAMES.index(name) for name in folded]


def _text_kinds(tfds, source: Source, builder) -> tuple[str, str]:
    """How premise and hypothesis are stored: text, translation (lang -> text, XNLI's premise)
    or variable (TranslationVariableLanguages, XNLI's hypothesis)."""
    def kind(feature) -> str | None:
        if isinstance(feature, tfds.features.TranslationVariableLanguages):
            return "variable"
        if isinstance(feature, tfds.features.Translation):
            return "translation"
        return "text" if isinstance(feature, tfds.features.Text) else None

    features = (_feature(builder, "premise"), _feature(builder, "hypothesis"))
    kinds = (kind(features[0]), kind(features[1]))
    if kinds not in (("text", "text"), ("translation", "translation"),
                     ("translation", "variable")):
        found = "/".join("missing" if f is None else type(f).__name__ for f in features)
        raise PrepareError(f"{source.spec}: features premise/hypothesis are {found}; supported: "
                           f"Text/Text, or Translation/Translation(VariableLanguages)")
    return kinds


def _dataset(tfds, source: Source, builder, download: bool, data_dir: Path | None):
    if download:
        try:
            builder.download_and_prepare()
        except Exception as err:  # network, disk, checksums: the remedy is the same
            raise PrepareError(f"{source.spec}: download and preparation failed "
                               f"({type(err).__name__}: {first_line(err)}); check the network, "
                               f"or prepare {source.name} where it works and pass "
                               f"--tfds-data-dir") from None
    try:
        return builder.as_dataset(split=source.split, shuffle_files=False)
    except AssertionError:  # tfds's "could not find data in DIR"
        raise PrepareError(f"{source.spec}: not prepared in --tfds-data-dir {data_dir}; prepare "
                           f"it there (tfds build {source.name} --data_dir {data_dir}) or omit "
                           f"--tfds-data-dir to download it") from None
    except ValueError as err:  # unknown split, slice out of range
        splits = ", ".join(builder.info.splits) or "unknown"
        raise PrepareError(f"{source.spec}: split {source.split!r}: {first_line(err)} (splits: "
                           f"{splits})") from None


def _pairs(example, kinds: tuple[str, str], language: str) -> list[tuple[str, str, str]]:
    """(language code, premise, hypothesis) of one example: one, or one per language both
    sides hold."""
    if kinds[0] == "text":
        return [(language, _text(example["premise"]), _text(example["hypothesis"]))]
    premises = {code: _text(text) for code, text in example["premise"].items()}
    hypothesis = example["hypothesis"]
    translations = (zip(hypothesis["language"], hypothesis["translation"])
                    if kinds[1] == "variable" else hypothesis.items())
    return [(code, premises[code], _text(text))
            for code, text in ((_text(code), text) for code, text in translations)
            if code in premises]


def _skip_reason(texts: tuple[str, str], max_text_chars: int) -> str | None:
    """Why Watson's validator would refuse these texts (the first reason), or None."""
    if any(re.search(CONTROL_CHARACTERS, text) for text in texts):
        return "control_character"
    if any(not text.strip() for text in texts):
        return "empty"
    if any(len(text) > max_text_chars for text in texts):
        return "too_long"
    return None


def read_source(tfds, source: Source, builder, dataset, labels: list[int],
                kinds: tuple[str, str], language: str,
                max_text_chars: int) -> tuple[list[tuple], dict]:
    """The source's Watson rows (EXTRA_COLUMNS order) and its record for extra.json."""
    rows = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for index, example in enumerate(tfds.as_numpy(dataset)):
        label = int(example["label"])
        if not 0 <= label < len(labels):
            raise PrepareError(f"{source.spec}: row {index} has label {label}, outside the "
                               f"builder's classes 0..{len(labels) - 1} (an unlabeled split?); "
                               f"choose a labeled split")
        repeats = collections.Counter()
        for code, premise, hypothesis in _pairs(example, kinds, language):
            repeats[code] += 1  # a language may repeat in TranslationVariableLanguages
            reason = _skip_reason((premise, hypothesis), max_text_chars)
            if reason is not None:
                skipped[reason] += 1
                continue
            suffix = "" if kinds[0] == "text" else f":{code}" + (
                "" if repeats[code] == 1 else f":{repeats[code] - 1}")
            rows.append((f"{source.spec}:{index}{suffix}", premise, hypothesis, code,
                         LANGUAGE_NAMES.get(code, code), labels[label], source.spec))
    info = builder.info
    record = {"spec": source.spec, "builder": info.name, "config": info.config_name or None,
              "version": str(info.version), "split": source.split, "rows": len(rows),
              "skipped": skipped, "label_names": list(info.features["label"].names),
              "languages": [language] if kinds[0] == "text"
              else sorted({row[3] for row in rows})}
    return rows, record


def prepare_extra(specs: str, out: Path, tfds_data_dir: Path | None = None,
                  language: str = "en", max_text_chars: int = DEFAULT_MAX_TEXT_CHARS):
    """Read every source and write them as one prepared folder (extra.write_prepared)."""
    sources, out = parse_sources(specs), Path(out)
    if not language.strip() or re.search(CONTROL_CHARACTERS, language) or "," in language:
        raise PrepareError(f"--language {language!r}: give a language code such as en or fr")
    if not 1 <= max_text_chars <= DEFAULT_MAX_TEXT_CHARS:
        # extra.write_prepared reads the folder back with the trainers' cap: longer rows fail
        raise PrepareError(f"--max-text-chars {max_text_chars}: must lie in 1.."
                           f"{DEFAULT_MAX_TEXT_CHARS}")
    _require_new_folder(out)
    tfds = _tfds()
    # Every source is checked (split syntax, builder, labels, features) before any download.
    opened = [(source, *_open_builder(tfds, source, tfds_data_dir)) for source in sources]
    rows, records = [], []
    for source, builder, labels, kinds in opened:
        dataset = _dataset(tfds, source, builder, tfds_data_dir is None, tfds_data_dir)
        source_rows, record = read_source(tfds, source, builder, dataset, labels, kinds,
                                          language, max_text_chars)
        rows += source_rows
        records.append(record)
    if not rows:
        raise PrepareError(f"--extra-train {specs}: no rows left to write (every row skipped, "
                           f"or empty splits); choose other splits")
    extra = write_prepared(pd.DataFrame(rows, columns=list(EXTRA_COLUMNS)), records, out)
    for record in records:
        skipped = ", ".join(f"{n} {reason}" for reason, n in record["skipped"].items() if n)
        print(f"{record['spec']}: {record['rows']} rows ({record['builder']} "
              f"{record['version']}, {','.join(record['languages'])}), skipped "
              f"{skipped or 'none'}")
    print(f"wrote {len(extra.rows)} rows from {len(records)} source(s) to {extra.folder} "
          f"(sha256 {extra.fingerprint[:12]})")
    return extra


# ---------------------------------------------------------------- --watson

def read_watson(manual_dir: Path, tfds_data_dir: Path | None = None) -> dict[str, pd.DataFrame]:
    """Watson's parts ("train", and "test" when MANUAL_DIR has test.csv) through the tfds
    builder, as frames in the CSV path's columns and order."""
    manual_dir = Path(manual_dir)
    if not (manual_dir / "train.csv").is_file():
        raise PrepareError(f"--watson {manual_dir}: no train.csv there; pass the folder holding "
                           f"the competition's train.csv and test.csv")
    tfds = _tfds()
    with tempfile.TemporaryDirectory(prefix="tfds-watson-") as scratch:
        builder = tfds.builder(WATSON_BUILDER, data_dir=str(tfds_data_dir or scratch))
        # Regenerate: tfds cannot see that the files in manual_dir changed since last time.
        config = tfds.download.DownloadConfig(
            manual_dir=str(manual_dir),
            download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS)
        builder.download_and_prepare(download_config=config)
        parts = {}
        for part, columns in (("train", TRAIN_COLUMNS), ("test", TEST_COLUMNS)):
            if part in builder.info.splits:
                examples = tfds.as_numpy(builder.as_dataset(split=part, shuffle_files=False))
                parts[part] = pd.DataFrame(
                    [[int(example[c]) if c == "label" else _text(example[c]) for c in columns]
                     for example in examples], columns=list(columns))
    return parts


def prepare_watson(manual_dir: Path, out: Path, tfds_data_dir: Path | None = None) -> dict:
    """Write Watson, read through tfds, as train.csv/test.csv in `out`, all or nothing; the
    files are read back and must give the frames tfds gave."""
    out = Path(out)
    _require_new_folder(out)
    parts = read_watson(manual_dir, tfds_data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for part, frame in parts.items():
            frame.to_csv(staging / f"{part}.csv", index=False)
        written = {"train": load_train(staging), "test": load_test(staging)}
        for part, frame in parts.items():
            if not written[part].equals(frame):
                raise DataError(f"{part}.csv: reads back differently from what tfds gave; "
                                f"report this (texts with unusual quoting or line breaks?)")
        os.replace(staging, out)  # replaces an empty folder too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    split = make_split(written["train"], SplitSpec())
    sizes = " and ".join(f"{part}.csv ({len(frame)} rows)" for part, frame in parts.items())
    print(f"wrote {sizes} to {out.resolve()}; kaggle split fingerprint {split.fingerprint}")
    return written


# ---------------------------------------------------------------- python -m shared.data.prepare

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.data.prepare",
        description="Read NLI data through tensorflow-datasets and write plain files: extra "
                    "training rows (--extra-train) or Watson's train.csv/test.csv (--watson).",
        epilog="e.g. --extra-train multi_nli:train[:20000],xnli:validation --out "
               "data/extra/mnli_xnli")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--extra-train", metavar="SPECS",
                      help=f"comma-separated tfds sources, each {SPEC_HELP}; written as "
                           f"extra.csv + extra.json for a trainer's --extra-train FOLDER")
    what.add_argument("--watson", type=Path, metavar="MANUAL_DIR",
                      help="folder with the competition's train.csv (and test.csv), read "
                           "through the contradictory_my_dear_watson builder and written as "
                           "train.csv/test.csv for a trainer's --data-dir")
    parser.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                        help="new (or empty) folder to write; appears only when complete")
    parser.add_argument("--tfds-data-dir", type=Path, default=None, metavar="DIR",
                        help="tfds data folder where the --extra-train sources are already "
                             "prepared (nothing is downloaded), or where --watson keeps the "
                             "builder's data [default: tfds's, downloading what is missing; "
                             "--watson: a temporary folder]")
    parser.add_argument("--language", default=None, metavar="CODE",
                        help="language code of --extra-train sources with plain-text "
                             "premises (XNLI's rows carry their own) [default: en]")
    parser.add_argument("--max-text-chars", type=int, default=None, metavar="N",
                        help="--extra-train: skip rows with a text longer than this (counted "
                             f"in extra.json) [default: {DEFAULT_MAX_TEXT_CHARS}, the most "
                             "allowed]")
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.watson is not None and (args.language, args.max_text_chars) != (None, None):
        parser.error("--language and --max-text-chars apply to --extra-train only")
    try:
        if args.watson is not None:
            prepare_watson(args.watson, args.out, args.tfds_data_dir)
        else:
            prepare_extra(args.extra_train, args.out, args.tfds_data_dir,
                          "en" if args.language is None else args.language,
                          DEFAULT_MAX_TEXT_CHARS if args.max_text_chars is None
                          else args.max_text_chars)
    except ValueError as err:  # PrepareError, DataError (both one line), and tfds's
        print(f"prepare: {first_line(err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
