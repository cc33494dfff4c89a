"""Contamination check: extra rows that copy Watson pairs exactly or nearly are flagged and
dropped, rows that only share a premise are counted and kept, unrelated rows pass."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.contamination import main
from shared.data.contamination import check, drop_overlaps, normalize
from shared.data.spec import DataSpec, load
from shared.data.watson import SAMPLE_DATA_DIR, load_train

REPO = Path(__file__).resolve().parents[3]
EXTRA_COLUMNS = ["premise", "hypothesis", "language", "source"]


@pytest.fixture(scope="module")
def sample():
    data = load(DataSpec(data_dir=SAMPLE_DATA_DIR))
    return {"validation": data.val, "test": data.test}


def extra_rows(pairs, source="mnli", language="English") -> pd.DataFrame:
    return pd.DataFrame([(p, h, language, source) for p, h in pairs], columns=EXTRA_COLUMNS)


def watson_row(watson, part, index) -> tuple[str, str, str]:
    row = watson[part].iloc[index]
    return row["id"], row["premise"], row["hypothesis"]


def with_artefact(text: str) -> str:
    """Watson's encoding artefact: the middle letter of the text replaced by "??"."""
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    middle = letters[len(letters) // 2]
    return text[:middle] + "??" + text[middle + 1:]


def with_word_changed(text: str) -> str:
    words = text.split(" ")
    words[len(words) // 2] = "banana"
    return " ".join(words)


def unrelated_rows(frame: pd.DataFrame, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Premises paired with hypotheses written for another premise: new pairs, known premises."""
    rng = np.random.default_rng(seed)
    premises, hypotheses = rng.permutation(len(frame)), rng.permutation(len(frame))
    pairs = [(frame["premise"].iat[i], frame["hypothesis"].iat[j])
             for i, j in zip(premises, hypotheses)
             if frame["premise"].iat[i] != frame["premise"].iat[j]]
    return pairs[:n]


def test_normalize_folds_width_case_and_whitespace_but_keeps_artefacts():
    assert normalize("  Ｔｈｅ\u00a0STRASSE\t\n ist  ﬁne ") == "the strasse ist fine"
    assert normalize("Straße") == normalize("STRASSE")
    assert normalize("Atat??rk  was here.") == "atat??rk was here."


def test_exact_pairs_match_through_case_whitespace_and_nfkc(sample):
    row_id, premise, hypothesis = watson_row(sample, "validation", 1)
    test_id, test_premise, test_hypothesis = watson_row(sample, "test", 0)
    variants = [(premise, hypothesis), (premise.upper(), "  " + hypothesis.lower() + " "),
                (premise.replace(" ", " \t "), hypothesis.replace("T", "Ｔ")),
                (test_premise, test_hypothesis)]
    report = check(extra_rows(variants), sample)
    assert report.rows["overlap"].tolist() == ["exact"] * 4
    assert report.rows["watson_id"].tolist() == [row_id] * 3 + [test_id]
    assert report.rows["watson_part"].tolist() == ["validation"] * 3 + ["test"]
    assert report.drop_mask.tolist() == [True] * 4
    assert report.rows["similarity"].min() > 0.999


def test_shared_premise_with_new_hypothesis_is_counted_not_dropped(sample):
    row_id, premise, _ = watson_row(sample, "validation", 1)
    new = "The council voted to build a second bridge across the river next spring."
    report = check(extra_rows([(premise, new)]), sample)
    assert report.rows["overlap"].tolist() == ["premise_only"]
    assert report.rows["watson_id"].tolist() == [row_id]
    assert not report.drop_mask.any()
    assert report.counts.loc[("mnli", "English"), "premise_only"] == 1


@pytest.mark.parametrize("edit", [
    lambda p, h: (with_artefact(p), h),
    lambda p, h: (p, with_artefact(h)),
    lambda p, h: (with_word_changed(p), h),
], ids=["artefact-in-premise", "artefact-in-hypothesis", "word-changed-in-premise"])
def test_near_duplicates_score_above_threshold(sample, edit):
    row_id, premise, hypothesis = watson_row(sample, "validation", 2)  # premise 135 chars
    report = check(extra_rows([edit(premise, hypothesis)]), sample)
    assert report.rows["overlap"].tolist() == ["near_duplicate"]
    assert report.rows["watson_id"].tolist() == [row_id]
    assert 0.9 <= report.rows["similarity"].iat[0] < 0.999
    assert report.drop_mask.tolist() == [True]


def test_unrelated_pairs_are_not_flagged(sample):
    pairs = unrelated_rows(load_train(SAMPLE_DATA_DIR), 200)
    report = check(extra_rows(pairs), sample)
    assert len(report.rows) == 200
    assert not report.drop_mask.any()
    # many of these premises are Watson's validation premises: counted, and still kept
    assert report.counts["premise_only"].sum() > 20
    assert report.rows["similarity"].max() < 0.9


def test_drop_overlaps_drops_exact_and_near_rows_only(sample):
    _, premise, hypothesis = watson_row(sample, "validation", 2)
    _, other_premise, _ = watson_row(sample, "validation", 4)
    pairs = [(premise, hypothesis), (with_artefact(premise), hypothesis),
             (other_premise, "Nothing in this sentence was ever in Watson's data.")]
    pairs += unrelated_rows(load_train(SAMPLE_DATA_DIR), 20)
    extra = extra_rows(pairs)
    report = check(extra, sample)
    kept, dropped = drop_overlaps(extra, report)
    assert dropped == 2 and len(kept) == len(extra) - 2
    assert kept["premise"].iat[0] == other_premise
    with pytest.raises(ValueError, match="report covers 23 rows, extra has 22"):
        drop_overlaps(extra.iloc[1:], report)


def test_counts_are_per_source_and_language(sample):
    _, premise, hypothesis = watson_row(sample, "validation", 2)
    extra = pd.concat([extra_rows([(premise, hypothesis)], "xnli", "fr"),
                       extra_rows([(premise, hypothesis), ("A brand new premise here.", "No.")],
                                  "mnli", "en")], ignore_index=True)
    counts = check(extra, sample).counts
    assert counts.loc[("xnli", "fr")].to_dict() == {
        "rows": 1, "exact": 1, "near_duplicate": 0, "premise_only": 0, "none": 0, "dropped": 1}
    assert counts.loc[("mnli", "en"), ["rows", "exact", "none"]].tolist() == [2, 1, 1]


def test_cli_prints_table_and_writes_json(sample, tmp_path):
    _, premise, hypothesis = watson_row(sample, "validation", 2)
    extra = extra_rows([(premise, hypothesis), (with_artefact(premise), hypothesis)]
                       + unrelated_rows(load_train(SAMPLE_DATA_DIR), 10))
    extra = extra.rename(columns={"language": "lang_abv"})  # either language column works
    extra.to_csv(tmp_path / "extra.csv", index=False)
    out = tmp_path / "report.json"
    flags = ["--extra", str(tmp_path / "extra.csv"), "--data-dir", str(SAMPLE_DATA_DIR),
             "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "shared.contamination", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # The command's old name, in the data layer, only says where it went.
    old = subprocess.run([sys.executable, "-m", "shared.data.contamination", *flags],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert old.returncode == 1 and "python -m shared.contamination" in old.stderr
    assert "near_duplicate" in done.stdout and "dropped 2 of 12 extra rows" in done.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert (report["rows"], report["dropped"], report["threshold"]) == (12, 2, 0.9)
    assert report["watson_rows"] == {"validation": 280, "test": 87}
    assert report["counts"][0]["exact"] == 1 and report["counts"][0]["near_duplicate"] == 1
    near = report["examples"]["near_duplicate"][0]
    assert near["watson_premise"] == premise and near["premise"] == with_artefact(premise)


def test_cli_refuses_a_csv_without_source_column(tmp_path, capsys):
    path = tmp_path / "extra.csv"
    path.write_text("premise,hypothesis,language\nA cat.,A pet.,English\n", encoding="utf-8")
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit) as info:
        main(["--extra", str(path), "--data-dir", str(SAMPLE_DATA_DIR), "--out", str(out)])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(path) in error
    assert "missing column(s) source" in error
    assert not out.exists()


def test_check_refuses_bad_threshold(sample):
    with pytest.raises(ValueError, match="--threshold 1.5: must lie in"):
        check(extra_rows([("a", "b")]), sample, threshold=1.5)


def test_real_data_flags_exactly_the_planted_copies(watson_dir):
    data = load(DataSpec(data_dir=watson_dir))
    watson = {"validation": data.val, "test": data.test}
    unrelated = extra_rows((unrelated_rows(load_train(SAMPLE_DATA_DIR), 2_000) * 3)[:2_000])
    long_rows = data.val[data.val["premise"].str.len() > 120]
    exact = long_rows.iloc[:5]
    near = long_rows.iloc[5:10].assign(premise=lambda f: f["premise"].map(with_artefact))
    planted = pd.concat([exact, near])[EXTRA_COLUMNS[:3]].assign(source="planted")
    rows = pd.concat([unrelated, planted]).sample(frac=1, random_state=0)
    report = check(rows, watson)
    assert len(rows) == 2_010
    flagged = np.flatnonzero(report.drop_mask)
    assert flagged.tolist() == np.flatnonzero(rows["source"].to_numpy() == "planted").tolist()
    assert report.counts.loc["planted", ["exact", "near_duplicate"]].sum().tolist() == [5, 5]
