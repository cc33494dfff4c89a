"""Tokenizer agreement on the real Watson data: rows whose pair ids (token + type ids, nothing
truncated) equal all-MiniLM-L6-v2's own tokenizer.json, and the [UNK] share of word tokens,
with keras-hub's own rules for a Hugging Face folder (what tf_baseline used before issue 12)
and with the folder's own rules (tf_baseline and jax_lora now).

    python -m benchmarks.tokenizer_agreement [WATSON_DIR]   # default ../shared/data/watson
"""
import os
import sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, pandas as pd, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1); tf.config.threading.set_inter_op_parallelism_threads(1)
import keras_hub
from pathlib import Path
from tokenizers import Tokenizer as HF
from shared.cli import exit_on_bad_input
from shared.data.watson import load_train, load_test
from shared.runs.presets import minilm_dir
from tf_baseline.model import load_preprocessor
from tf_baseline.data import text_dataset
from jax_lora.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
W = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data" / "watson"
d, L = minilm_dir(), 512
with exit_on_bad_input():  # a missing or bad data folder: one error: line, exit 2
    frames = {"train": load_train(W), "test": load_test(W)}
    if frames["test"] is None:
        raise FileNotFoundError(f"{W / 'test.csv'}: not found; pass the Watson folder")
frame = pd.concat(frames.values(), ignore_index=True)
part = np.repeat(list(frames), [len(f) for f in frames.values()])
english = (frame["lang_abv"] == "en").to_numpy()
hf = HF.from_file(str(d / "tokenizer.json")); hf.no_truncation(); hf.no_padding()
enc = hf.encode_batch(list(zip(frame.premise, frame.hypothesis)))
assert max(len(e.ids) for e in enc) < L
unk = hf.token_to_id("[UNK]")

def tf_ids(preprocessor):
    batches = list(text_dataset(frame, preprocessor, 2048, labels=False, drop_remainder=False).as_numpy_iterator())
    return np.concatenate([b["token_ids"] for b in batches]), np.concatenate([b["segment_ids"] for b in batches])

before = keras_hub.models.BertTextClassifierPreprocessor.from_preset(str(d), sequence_length=L)
runs = {"before (keras-hub rules, TF)": tf_ids(before), "after (TF)": tf_ids(load_preprocessor(str(d), L))}
j = Tokenizer.from_preset_dir(d, "hf")(frame.premise.tolist(), frame.hypothesis.tolist(), L)
runs["after (JAX)"] = (j["token_ids"], j["segment_ids"])
ref_unk = {en: [0, 0] for en in (True, False)}
for i, e in enumerate(enc):
    ref_unk[bool(english[i])][0] += e.ids.count(unk); ref_unk[bool(english[i])][1] += len(e.ids) - 3
for name, (ids, seg) in runs.items():
    same = np.array([ids[i, :len(e.ids)].tolist() == e.ids and seg[i, :len(e.ids)].tolist() == e.type_ids
                     and not ids[i, len(e.ids):].any() for i, e in enumerate(enc)])
    cells = []
    for p in frames:
        for en, label in ((True, "en"), (False, "non-en")):
            m = (part == p) & (english == en)
            cells.append(f"{p} {label} {same[m].sum()}/{m.sum()} ({100 * same[m].mean():.2f} %)")
    print(f"{name}: identical rows: " + "; ".join(cells))
    for en, label in ((True, "en"), (False, "non-en")):
        mask = ids[english == en]
        n_unk = int((mask == unk).sum()); n_words = int((mask != 0).sum()) - 3 * int((english == en).sum())
        print(f"   [UNK] share {label}: {100 * n_unk / n_words:.2f} % ({n_unk}/{n_words}); "
              f"tokenizer.json {100 * ref_unk[en][0] / ref_unk[en][1]:.2f} % ({ref_unk[en][0]}/{ref_unk[en][1]})")
print("TF after = JAX after on all rows:", bool((runs["after (TF)"][0] == runs["after (JAX)"][0]).all()
                                                and (runs["after (TF)"][1] == runs["after (JAX)"][1]).all()))
