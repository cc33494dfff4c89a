"""The run contract: pretrained-weight presets (presets.py) and the run directory every trainer
writes and the evaluator reads (run_dir.py), with the rules for resuming and reusing runs.

Builds on shared.data; imports neither trainer.
"""
