"""Which rows of extra NLI training data (MultiNLI, XNLI, ...) repeat Watson's validation or
test pairs (issue #18): training on them would inflate every validation and test number.
`python -m shared.contamination` runs the check as a command.

Each extra row gets one overlap kind, the first that holds:
  exact           its normalized premise and hypothesis equal a Watson pair's (dropped)
  near_duplicate  its pair similarity to some Watson pair is >= the threshold (dropped)
  premise_only    its normalized premise equals a Watson premise, the pair is new (kept,
                  counted: Watson itself repeats premises across its split)
  none
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer

from shared.data.watson import DataError

KINDS = ("exact", "near_duplicate", "premise_only", "none")
DROPPED_KINDS = ("exact", "near_duplicate")
# Watson files reject control characters, so the record separator cannot occur in a text.
PAIR_JOINER = "\x1e"
# Hashed features per half: collisions among the few hundred n-grams of a pair are rare.
HASHED_FEATURES = 2**20
# Extra rows compared at once: a 2,000 x 8,831 float32 similarity block is ~70 MB.
CHUNK_ROWS = 2_000
EXAMPLES_PER_KIND = 5


def normalize(text: str) -> str:
    """NFKC, casefolded, whitespace runs collapsed to one space, stripped: the form in which two
    copies of a text compare equal. "??" artefacts stay; they are part of Watson's text."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass
class Report:
    """What `check` found, one row of `rows` per extra row (same order).

    rows: overlap (one of KINDS), similarity (best pair similarity to any Watson row),
    watson_part and watson_id (the Watson row the overlap refers to: the identical pair, a row
    with the same premise, or else the most similar row), source, language.
    """
    threshold: float
    ngram: tuple[int, int]
    rows: pd.DataFrame
    examples: dict  # kind (and "closest_kept") -> a few rows beside their Watson match

    @property
    def drop_mask(self) -> np.ndarray:
        """True for the extra rows to drop: exact and near-duplicate copies of Watson pairs."""
        return self.rows["overlap"].isin(DROPPED_KINDS).to_numpy()

    @property
    def counts(self) -> pd.DataFrame:
        """Per (source, language): rows, one column per overlap kind, and dropped."""
        counts = pd.crosstab([self.rows["source"], self.rows["language"]], self.rows["overlap"])
        counts = counts.reindex(columns=list(KINDS), fill_value=0)
        counts.insert(0, "rows", counts.sum(axis=1))
        counts["dropped"] = counts[list(DROPPED_KINDS)].sum(axis=1)
        counts.columns.name = None
        return counts

    def to_dict(self) -> dict:
        counts = self.counts.reset_index()
        return {"threshold": self.threshold, "ngram": list(self.ngram), "rows": len(self.rows),
                "dropped": int(self.drop_mask.sum()),
                "counts": json.loads(counts.to_json(orient="records")),
                "examples": self.examples}


def _examples(rows: pd.DataFrame, extra: pd.DataFrame, matched_texts: pd.DataFrame) -> dict:
    """A few rows of each kind beside their Watson match, for a reader to judge the threshold:
    the near duplicates closest to it, and the most similar rows kept ("closest_kept")."""
    shown = rows.assign(premise=extra["premise"].to_numpy(),
                        hypothesis=extra["hypothesis"].to_numpy(),
                        watson_premise=matched_texts["premise"].to_numpy(),
                        watson_hypothesis=matched_texts["hypothesis"].to_numpy(),
                        similarity=rows["similarity"].astype(float).round(4))
    by_kind = {kind: shown[shown["overlap"] == kind] for kind in KINDS[:3]}
    by_kind["near_duplicate"] = by_kind["near_duplicate"].sort_values("similarity", kind="stable")
    dropped = shown["overlap"].isin(DROPPED_KINDS)
    by_kind["closest_kept"] = shown[~dropped].sort_values("similarity", ascending=False,
                                                          kind="stable")
    return {kind: frame.head(EXAMPLES_PER_KIND).to_dict(orient="records")
            for kind, frame in by_kind.items()}


def check(extra: pd.DataFrame, watson: dict[str, pd.DataFrame], *, threshold: float = 0.9,
          ngram: tuple[int, int] = (3, 5)) -> Report:
    """Find the extra rows that repeat a Watson pair exactly, nearly, or by premise only.

    `extra` has premise, hypothesis, source and language (or lang_abv); `watson` maps a part
    name ("validation", "test") to frames with id, premise and hypothesis.

    Pair similarity: the mean of the premise's and the hypothesis's cosine similarities over
    character 3-5-gram counts of the normalized texts, so a short hypothesis weighs as much as
    a long premise (on one concatenated text, a row sharing a Watson premise but with another
    hypothesis scored >= 0.9 in 25% of such pairs in Watson's train.csv; with the mean, 4.7%).
    Threshold 0.9, measured on 6,000 rows of Watson's train.csv: the best match of a row among
    rows with other premises never reached 0.70 (sample: 0.74); one letter replaced by "??"
    scores >= 0.9 in 94% of rows when in the premise, 90% in the hypothesis (sample: 98%,
    95%); one word changed, 82% / 65% (a one-word edit of a short hypothesis is often another
    NLI pair, e.g. "won" -> "lost", so missing some of those is wanted); rows sharing a premise
    but with another hypothesis, 4.7%. Lower thresholds catch more edits but drop more such
    pairs (0.85: 97% / 96% artefacts, 9.4% shared-premise pairs). The default leans to
    dropping: a wrong drop costs one row of up to ~400k extra rows, a missed copy inflates the
    validation and test scores.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold {threshold}: must lie in (0, 1]")
    require_columns(extra, "extra rows")
    reference = _reference(watson)
    premises = [normalize(text) for text in extra["premise"]]
    hypotheses = [normalize(text) for text in extra["hypothesis"]]
    best, similarity = _nearest(premises, hypotheses, reference, ngram)

    pair_at = _first_position(reference["pair_key"])
    premise_at = _first_position(reference["premise_key"])
    exact_at = pd.Series(_pair_keys(premises, hypotheses)).map(pair_at)
    same_premise_at = pd.Series(premises).map(premise_at)
    exact = exact_at.notna().to_numpy()
    near = ~exact & (similarity >= threshold)
    premise_only = ~exact & ~near & same_premise_at.notna().to_numpy()
    overlap = np.select([exact, near, premise_only], KINDS[:3], KINDS[3])
    matched = np.where(exact, exact_at.fillna(-1), np.where(premise_only,
                       same_premise_at.fillna(-1), best)).astype(int)
    rows = pd.DataFrame({
        # as text: a missing value (NaN) would silently fall out of the per-group counts
        "source": extra["source"].astype(str).to_numpy(),
        "language": language_column(extra).astype(str).to_numpy(),
        "overlap": overlap, "similarity": similarity,
        "watson_part": reference["part"].to_numpy()[matched],
        "watson_id": reference["id"].to_numpy()[matched]})
    examples = _examples(rows, extra, reference.iloc[matched])
    return Report(threshold, tuple(ngram), rows, examples)


def drop_overlaps(extra: pd.DataFrame, report: Report) -> tuple[pd.DataFrame, int]:
    """`extra` without the rows `report` flags (exact and near duplicates), and how many went."""
    if len(report.rows) != len(extra):
        raise ValueError(f"report covers {len(report.rows)} rows, extra has {len(extra)}; run "
                         f"check on these rows")
    drop = report.drop_mask
    return extra[~drop], int(drop.sum())


def require_columns(frame: pd.DataFrame, where: str) -> None:
    """Raise a one-line DataError naming what `frame` (read from `where`) lacks."""
    missing = [c for c in ("premise", "hypothesis", "source") if c not in frame.columns]
    if "language" not in frame.columns and "lang_abv" not in frame.columns:
        missing.append("language (or lang_abv)")
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; columns are "
                        f"{','.join(map(str, frame.columns))}, expected premise, hypothesis, "
                        f"language or lang_abv, source")


def language_column(frame: pd.DataFrame) -> pd.Series:
    return frame["language"] if "language" in frame.columns else frame["lang_abv"]


def _reference(watson: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Watson's parts as one frame: part, id, the texts as written, normalized, and as keys."""
    parts = []
    for part, frame in watson.items():
        missing = [c for c in ("id", "premise", "hypothesis") if c not in frame.columns]
        if missing:
            raise DataError(f"Watson part {part!r}: missing column(s) {', '.join(missing)}")
        parts.append(pd.DataFrame({
            "part": part, "id": frame["id"].to_numpy(),
            "premise": frame["premise"].to_numpy(), "hypothesis": frame["hypothesis"].to_numpy(),
            "premise_key": [normalize(text) for text in frame["premise"]],
            "hypothesis_key": [normalize(text) for text in frame["hypothesis"]]}))
    reference = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if reference.empty:
        raise DataError("Watson parts hold no rows; pass a data folder with train.csv")
    reference["pair_key"] = _pair_keys(reference["premise_key"], reference["hypothesis_key"])
    return reference


def _pair_keys(premises, hypotheses) -> list[str]:
    return [p + PAIR_JOINER + h for p, h in zip(premises, hypotheses)]


def _first_position(keys: pd.Series) -> pd.Series:
    """Key -> position of its first row (Watson repeats some pairs and many premises)."""
    first = ~keys.duplicated()
    return pd.Series(np.flatnonzero(first.to_numpy()), index=keys[first].to_numpy())


def _pair_vectors(premises: list[str], hypotheses: list[str], ngram) -> sp.csr_matrix:
    """Premise and hypothesis n-gram vectors side by side, each of length sqrt(1/2), so the
    dot product of two pairs is the mean of their premise and hypothesis cosines. Hashed, not
    fitted: extra rows vectorize chunk by chunk and n-grams Watson lacks still count."""
    hasher = HashingVectorizer(analyzer="char", ngram_range=tuple(ngram), lowercase=False,
                               alternate_sign=False, n_features=HASHED_FEATURES,
                               dtype=np.float32)
    halves = sp.hstack([hasher.transform(premises), hasher.transform(hypotheses)], format="csr")
    return halves * np.float32(np.sqrt(0.5))


def _nearest(premises: list[str], hypotheses: list[str], reference: pd.DataFrame,
             ngram) -> tuple[np.ndarray, np.ndarray]:
    """Each extra pair's most similar Watson row (position) and that similarity, in chunks so
    memory stays flat however many extra rows there are."""
    watson = _pair_vectors(reference["premise_key"].tolist(),
                           reference["hypothesis_key"].tolist(), ngram).T.tocsr()
    best = np.zeros(len(premises), dtype=int)
    similarity = np.zeros(len(premises), dtype=np.float32)
    for start in range(0, len(premises), CHUNK_ROWS):
        stop = start + CHUNK_ROWS
        block = (_pair_vectors(premises[start:stop], hypotheses[start:stop], ngram)
                 @ watson).toarray()
        best[start:stop] = block.argmax(axis=1)
        similarity[start:stop] = block[np.arange(len(block)), best[start:stop]]
    # float32 sums put identical pairs at 1 +- 1e-7; the threshold compares cleanly at 1.0
    return best, np.minimum(similarity, 1.0)


if __name__ == "__main__":  # the command's old name: say where it went, do not pass silently
    raise SystemExit("python -m shared.data.contamination is now python -m shared.contamination "
                     "(same flags)")
