"""Data and splits: the Watson CSV files validated (watson.py), train/validation splits with
fingerprints (split.py), and the data spec that says which rows a run sees (spec.py).

The bottom layer: imports nothing else of the project.
"""
