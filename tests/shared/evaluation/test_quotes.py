"""Documents quote committed reports: a block equals its file, a study report.md its JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.evaluation import quotes, study_markdown

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("document", ["RESULTS.md", "benchmarks/BENCHMARKS.md"])
def test_the_projects_documents_quote_their_files(document):
    assert quotes.problems(REPO / document) == []


def test_a_changed_figure_is_caught_and_write_restores_the_block(tmp_path):
    (tmp_path / "results").mkdir()
    report = tmp_path / "results" / "report.md"
    report.write_text("# Report\n\n| method | accuracy |\n|---|---|\n| lora | 0.4224 |\n")
    document = tmp_path / "RESULTS.md"
    document.write_text("Intro.\n<!-- begin results/report.md -->\nold\n"
                        "<!-- end results/report.md -->\nOutro.\n")
    assert "differs from the file" in quotes.problems(document)[0]
    quotes.write(document)
    assert quotes.problems(document) == []
    assert "## Report" in document.read_text() and document.read_text().endswith("Outro.\n")
    document.write_text(document.read_text().replace("0.4224", "0.5224"))  # a hand edit
    assert len(quotes.problems(document)) == 1
    done = subprocess.run([sys.executable, "-m", "shared.evaluation.quotes", str(document)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and "block results/report.md: differs" in done.stderr


def test_a_study_report_must_be_what_its_json_renders_to(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    result = {"study": {"command": "python -m shared.jobs.study"}, "figure": 0.4224}
    monkeypatch.setattr(study_markdown, "render",
                        lambda r: f"# Study\n\naccuracy {r['figure']}\n")
    (folder / "report.json").write_text(json.dumps(result))
    (folder / "report.md").write_text("# Study\n\naccuracy 0.4224\n")
    document = tmp_path / "RESULTS.md"
    document.write_text("<!-- begin results/report.md -->\n<!-- end results/report.md -->\n")
    quotes.write(document)
    assert quotes.problems(document) == []
    (folder / "report.md").write_text("# Study\n\naccuracy 0.9999\n")  # edited by hand
    quotes.write(document)
    assert quotes.problems(document) == [
        f"{folder / 'report.md'}: differs from what report.json beside it renders to; "
        f"rebuild the report instead of editing it"]


def test_a_quoted_reports_figures_and_links_still_point_at_its_files(tmp_path):
    """report.md's `fig.png` is `results/study/report/fig.png` from RESULTS.md; links with a
    scheme, absolute paths and anchors stay as they are."""
    folder = tmp_path / "results" / "study" / "report"
    folder.mkdir(parents=True)
    (folder / "report.md").write_text(
        "# Study\n\n![Dev accuracy](dev_accuracy.png)\n\nSee [the runs](../final/runs.md), "
        "[PEFT](https://github.com/huggingface/peft), [top](#study) and [root](/README.md).\n")
    document = tmp_path / "RESULTS.md"
    path = "results/study/report/report.md"
    document.write_text(f"<!-- begin {path} -->\n<!-- end {path} -->\n")
    quotes.write(document)
    text = document.read_text()
    assert "![Dev accuracy](results/study/report/dev_accuracy.png)" in text
    assert "[the runs](results/study/report/../final/runs.md)" in text
    assert ("[PEFT](https://github.com/huggingface/peft), [top](#study) and "
            "[root](/README.md)") in text
    assert quotes.problems(document) == []
    document.write_text(text.replace("](results/study/report/dev", "](dev"))  # unpointed
    assert "differs from the file" in quotes.problems(document)[0]
