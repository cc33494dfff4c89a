"""keras-hub's XLMRobertaTokenizer with the ids of a Hugging Face folder's tokenizer.json.

keras-hub segments text with SentencePiece (tf_text) on sentencepiece.bpe.model; Hugging Face's
fast tokenizer, the one transformers and sentence-transformers load, runs tokenizer.json's
Unigram model (the `tokenizers` library). Both find a highest-scoring segmentation, but they
break ties between equal-scoring ones differently: "...." + "Si" is "..." + "." in SentencePiece
and "." + "..." in tokenizer.json; on multilingual-e5-small that gave other ids on 2 of the
17,315 Watson rows. They also differ on literal special tokens in text ("<s>", "<mask>"), which
tokenizer.json keeps whole. So for a BERT with XLM-R's tokenizer whose folder has a
tokenizer.json (tf_baseline.model.load_preprocessor), the ids come from it: this class runs the
`tokenizers` library (through tf.py_function inside tf.data) and keeps keras-hub's vocabulary,
special ids and packing; it refuses a tokenizer.json whose ids are not keras-hub's. A saved
preset carries the file as assets/tokenizer/hf_tokenizer.json beside vocabulary.spm.
"""

from __future__ import annotations

from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras_hub.src.utils.tensor_utils import preprocessing_function

HF_TOKENIZER_ASSET = "hf_tokenizer.json"  # beside keras-hub's vocabulary.spm in a saved preset
SERIALIZATION_PACKAGE = "watson_peft"  # keras registry prefix of tf_baseline's keras-hub classes


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class HFJsonXLMRobertaTokenizer(keras_hub.tokenizers.XLMRobertaTokenizer):
    """XLMRobertaTokenizer(proto) whose `tokenize` gives the ids of the tokenizer.json file at
    `tokenizer_json` (None until load_assets, as keras-hub's proto). Text to ids only: no
    sequence_length, no bos/eos (the preprocessor's packer adds <s> and </s>)."""

    def __init__(self, proto, tokenizer_json=None, **kwargs):
        super().__init__(proto, **kwargs)
        if self.sequence_length or self.add_bos or self.add_eos:
            raise ValueError("HFJsonXLMRobertaTokenizer: sequence_length, add_bos and add_eos "
                             "are not supported; pack with the preprocessor")
        self.file_assets = [*self.file_assets, HF_TOKENIZER_ASSET]
        self._json_text, self._hf = None, None
        if tokenizer_json is not None:
            self.set_tokenizer_json(tokenizer_json)

    def set_tokenizer_json(self, path) -> None:
        from tokenizers import Tokenizer

        text = Path(path).read_text(encoding="utf-8")
        hf = Tokenizer.from_str(text)
        hf.no_truncation()
        hf.no_padding()
        ids, vocabulary = hf.get_vocab(), self.get_vocabulary()
        wrong = next((token for index, token in enumerate(vocabulary)
                      if ids.get(token) != index), None)
        if wrong is not None or len(ids) != len(vocabulary):
            raise ValueError(f"{path}: its ids are not the SentencePiece model's under "
                             f"keras-hub's fairseq shift ({len(ids)} vs {len(vocabulary)} "
                             f"tokens; first differing {wrong!r}); pass the folder's own "
                             f"tokenizer.json")
        self._json_text, self._hf = text, hf

    def save_assets(self, dir_path):
        super().save_assets(dir_path)
        Path(dir_path, HF_TOKENIZER_ASSET).write_text(self._json_text, encoding="utf-8")

    def load_assets(self, dir_path):
        super().load_assets(dir_path)
        self.set_tokenizer_json(Path(dir_path, HF_TOKENIZER_ASSET))

    def encode(self, texts: list[str]) -> list[list[int]]:
        """tokenizer.json's ids of each text, without special tokens around it."""
        if self._hf is None:
            raise ValueError("HFJsonXLMRobertaTokenizer: no tokenizer.json set")
        return [encoding.ids for encoding in self._hf.encode_batch(texts,
                                                                   add_special_tokens=False)]

    def tokenize(self, inputs):
        self._check_vocabulary()
        if self._use_tf_workflow():
            return self._tokenize_json_tf(inputs)
        texts = np.asarray(keras.ops.convert_to_numpy(inputs) if keras.ops.is_tensor(inputs)
                           else inputs, dtype=object)
        ids = self.encode([t.decode("utf-8") if isinstance(t, bytes) else t
                           for t in texts.reshape(-1)])
        return ids if texts.ndim else ids[0]

    @preprocessing_function
    def _tokenize_json_tf(self, inputs):
        inputs = tf.convert_to_tensor(inputs)

        def encode_flat(texts):
            ids = self.encode([text.decode("utf-8") for text in texts.numpy()])
            flat = np.fromiter((i for row in ids for i in row), np.int32,
                               sum(len(row) for row in ids))
            return flat, np.array([len(row) for row in ids], np.int64)

        flat, lengths = tf.py_function(encode_flat, [tf.reshape(inputs, [-1])],
                                       [tf.int32, tf.int64])
        tokens = tf.RaggedTensor.from_row_lengths(tf.ensure_shape(flat, [None]),
                                                  tf.ensure_shape(lengths, [None]))
        tokens = tf.cast(tokens, self.compute_dtype)
        return tokens[0] if inputs.shape.rank == 0 else tokens

