"""What both trainers and the evaluator share, one folder per concern, dependencies pointing one
way (each imports only those before it):

    data/        Watson CSV validation, splits and their fingerprints, the dev carve, the data spec
    runs/        presets and the run-directory contract (resume and reuse rules)
    evaluation/  the evaluator: statistics, figures, report; a study's report
    jobs/        commands that orchestrate runs (compare, study)
    cli.py       command-line pieces every entry point shares

Nothing in here imports TensorFlow or JAX.
"""
