"""What both trainers and the evaluator share, one folder or file per concern, dependencies
pointing one way: each imports only those listed before it (tests/shared/test_layers.py holds
the code to this list).

    data/             Watson CSV validation, splits and their fingerprints, the dev carve, the
                      data spec, extra rows and their overlap with Watson
    cli.py            command-line pieces every entry point shares: config dataclasses as flags,
                      bad-input exits; `python -m shared.cli split`
    runs/             presets, tokenizer rules and the run-directory contract (resume, reuse,
                      lock, checksums)
    contamination.py  the data layer's overlap check as a command (python -m shared.contamination)
    evaluation/       the evaluator: statistics, figures, report; a study's report
    jobs/             commands that orchestrate runs (compare, study)

Nothing in here imports TensorFlow or JAX, except the tfds side of data/ (prepare.py and its
builder tfds_watson.py), which runs in its own process.
"""
