"""Jobs that orchestrate runs: each trainer in its own process, then the evaluator.

    python -m shared.jobs.compare      # the main job (scripts/demo.sh)
    python -m shared.jobs.study        # the fair study: rates chosen on dev, seeds, early stop
    python -m shared.jobs.study_export # a study's evidence (no checkpoints), to commit
"""
