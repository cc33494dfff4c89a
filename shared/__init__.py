"""What both trainers and the evaluator share: data, split, run contract, evaluator.

Nothing in here imports TensorFlow or JAX.
"""
