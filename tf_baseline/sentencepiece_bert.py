"""BERT layers with XLM-R's SentencePiece tokenizer and no pooler (multilingual-e5-small and its
family), in keras-hub, and the numbers keras-hub's BERT config cannot express.

keras-hub 0.32 has the parts but not the whole:
- its BertBackbone hard-codes tanh-GELU and LayerNorm epsilon 1e-12 (e5: exact GELU, config.
  json's epsilon). `apply_encoder_numbers` sets what shared.runs.encoder decides on the built
  layers; a saved preset carries them in encoder_numbers.json, which the loader re-applies;
- its Hugging Face BERT converter picks XLMRobertaTokenizer for these folders but ports
  `pooler.dense.*`, which they lack: `load_hf_backbone` uses the converter's own mapping with
  the pooler left out (pooled_dense zeroed and frozen: nothing reads it);
- XLMRobertaTextClassifierPreprocessor packs `<s> a </s></s> b </s>` but drops the segment ids
  BertBackbone takes: `BertSentencePiecePreprocessor` gives all zeros, the token type ids of
  Hugging Face's XLMRobertaTokenizer (row 0 of the token-type table is added to every token);
  with a folder's tokenizer.json its ids are that file's (`with_tokenizer_json`,
  hf_json_tokenizer.py says why);
- BertTextClassifier reads the pooler: `BertMeanTextClassifier` reads the mean of the last
  layer over the padding mask (BertTextEmbedder's mean pooling), then dropout and Dense.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import keras_hub
from keras_hub.src.models.bert.bert_backbone import bert_kernel_initializer
from keras_hub.src.utils.keras_utils import gelu_approximate
from keras_hub.src.utils.transformers import convert_bert
from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

from shared.runs.encoder import EncoderNumbers
from tf_baseline.hf_json_tokenizer import SERIALIZATION_PACKAGE, HFJsonXLMRobertaTokenizer

# shared.runs.encoder's GELU names -> keras functions (keras' gelu defaults to the exact erf).
GELUS = {"gelu": keras.activations.gelu, "gelu_tanh": gelu_approximate}


def apply_encoder_numbers(backbone: keras_hub.models.Backbone, numbers: EncoderNumbers) -> None:
    """The GELU on every TransformerEncoder's intermediate dense and the epsilon on every
    LayerNormalization of `backbone`; a BERT without a pooler gets its (unread) pooled_dense
    frozen. Layers read these attributes when called, so this holds for every later trace
    (not for a predict or train function Keras has already traced: call it right after
    building); keras-hub's config does not record them. For the presets keras-hub describes,
    the values are the ones keras-hub set (the same function objects): nothing changes."""
    activation = GELUS[numbers.activation]
    for layer in backbone._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.LayerNormalization):
            layer.epsilon = numbers.layer_norm_epsilon
        elif isinstance(layer, keras_hub.layers.TransformerEncoder):
            layer.activation = activation
            layer.layer_norm_epsilon = numbers.layer_norm_epsilon
            layer._feedforward_intermediate_dense.activation = activation
    if numbers.architecture == "bert" and not numbers.pooler:
        backbone.pooled_dense.trainable = False


class _PoolerOptionalLoader(SafetensorLoader):
    """keras-hub's safetensors loader, but a file without pooler tensors gets BertBackbone's
    pooled_dense zeroed instead of a missing-key error."""

    def __init__(self, preset: str, pooler: bool):
        super().__init__(preset)
        self.pooler = pooler

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        if hf_weight_key.startswith("pooler.") and not self.pooler:
            keras_variable.assign(keras.ops.zeros(keras_variable.shape))
            return
        super().port_weight(keras_variable, hf_weight_key, hook_fn=hook_fn)


def load_hf_backbone(folder: Path, numbers: EncoderNumbers) -> keras_hub.models.BertBackbone:
    """A Hugging Face BERT folder as keras-hub's BertBackbone: keras-hub's converter's config
    and tensor mapping, the dropout and token-type rows from config.json, the pooler only when
    the file holds one, then `apply_encoder_numbers`."""
    config = json.loads((Path(folder) / "config.json").read_text())
    backbone = keras_hub.models.BertBackbone(**convert_bert.convert_backbone_config(config),
                                             dropout=numbers.dropout,
                                             num_segments=config.get("type_vocab_size", 2))
    with _PoolerOptionalLoader(str(folder), numbers.pooler) as loader:
        convert_bert.convert_weights(backbone, loader, config)
    apply_encoder_numbers(backbone, numbers)
    return backbone


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class BertSentencePiecePreprocessor(keras_hub.models.XLMRobertaTextClassifierPreprocessor):
    """XLM-R's pair packing for a BertBackbone: `<s> a </s></s> b </s>` cut round-robin, padded
    with <pad>, mask = not <pad>, and segment ids all 0."""

    backbone_cls = keras_hub.models.BertBackbone

    def call(self, x, y=None, sample_weight=None):
        output = super().call(x, y=y, sample_weight=sample_weight)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(output)
        x["segment_ids"] = keras.ops.zeros_like(x["token_ids"])
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)


def with_tokenizer_json(preprocessor: BertSentencePiecePreprocessor,
                        tokenizer_json: Path) -> BertSentencePiecePreprocessor:
    """The same preprocessor with the ids of `tokenizer_json` (HFJsonXLMRobertaTokenizer)."""
    tokenizer = HFJsonXLMRobertaTokenizer(preprocessor.tokenizer.proto,
                                          tokenizer_json=tokenizer_json)
    return BertSentencePiecePreprocessor(tokenizer, sequence_length=preprocessor.sequence_length,
                                         truncate=preprocessor.truncate)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class BertMeanTextClassifier(keras_hub.models.TextClassifier):
    """BertTextClassifier with mean pooling: the mean of the last layer over the padding mask,
    dropout, then Dense(num_classes) named `logits` with BertTextClassifier's initializer (so
    task.weights.h5 holds the same head layout)."""

    backbone_cls = keras_hub.models.BertBackbone
    preprocessor_cls = BertSentencePiecePreprocessor

    def __init__(self, backbone, num_classes, preprocessor=None, activation=None, dropout=0.1,
                 **kwargs):
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(dropout, dtype=backbone.dtype_policy,
                                                   name="classifier_dropout")
        self.output_dense = keras.layers.Dense(num_classes,
                                               kernel_initializer=bert_kernel_initializer(),
                                               activation=activation,
                                               dtype=backbone.dtype_policy, name="logits")
        inputs = backbone.input
        pooled = self.pool(backbone(inputs)["sequence_output"], inputs["padding_mask"])
        outputs = self.output_dense(self.output_dropout(pooled))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.num_classes = num_classes
        self.activation = keras.activations.get(activation)
        self.dropout = dropout

    @staticmethod
    def pool(sequence_output, padding_mask):
        """[B, T, H] -> [B, H]: keras-hub BertTextEmbedder's mean over the padding mask."""
        return keras_hub.models.BertTextEmbedder._mean_pooling(sequence_output, padding_mask)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout}
