"""Data and splits: the Watson CSV files validated (watson.py), train/validation splits with
fingerprints and the dev carve (split.py), extra training rows as prepared files (extra.py) and
their overlap with Watson's validation and test pairs (contamination.py), and the data spec
that says which rows a run sees (spec.py). The tfds side, in its own process: the prepare
command (prepare.py) and Watson's tfds builder (tfds_watson.py).

The bottom layer: imports nothing else of the project, and holds no command that needs an
upper layer (the overlap check's command is shared/contamination.py).
"""
