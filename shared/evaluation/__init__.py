"""Evaluation and report: compares finished run directories (evaluate.py) with statistics
(stats.py), figures (figures.py) and the Markdown/JSON report (report.py).

    python -m shared.evaluation RUN_DIR [RUN_DIR ...] --out REPORT_DIR
    python -m shared.evaluation.study_report STUDY_DIR   # a study's report (study_*.py)

Reads run directories only; imports neither TensorFlow nor JAX.
"""
