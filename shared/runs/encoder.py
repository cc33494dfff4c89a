"""What a preset computes beyond its tensors, decided once for both trainers: the GELU, the
LayerNorm epsilon, the dropout, the tokenizer family and whether a pooler exists.

One rule, read from the folder, so that the TF and JAX halves cannot drift apart:
- a Hugging Face folder is read from its config.json (`hidden_act`, `layer_norm_eps`,
  `hidden_dropout_prob`) — except a BERT with a WordPiece vocabulary, which both trainers run
  as keras-hub's BertBackbone does (tanh-GELU, the Kaggle replica's numbers: keras-hub fixes
  them, and the MiniLM study was measured so);
- a keras-hub preset keeps keras-hub's fixed choices (BertBackbone: tanh-GELU, 1e-12;
  XLMRobertaBackbone: erf-GELU, 1e-5), unless the folder carries NUMBERS_FILE, which this
  project writes beside a preset saved from a model keras-hub's config cannot describe (a
  BERT with exact GELU, as multilingual-e5-small, or another epsilon);
- the tokenizer family is SentencePiece for XLM-R and for a BERT whose tokenizer_config.json
  names an XLM-R tokenizer (multilingual-e5, paraphrase-multilingual-MiniLM) or whose
  keras-hub tokenizer is XLMRobertaTokenizer; WordPiece otherwise.
No TensorFlow, no JAX here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.runs.presets import PresetError, preset_architecture, preset_dir

NUMBERS_FILE = "encoder_numbers.json"
ACTIVATIONS = ("gelu", "gelu_tanh")  # exact (erf) GELU, tanh-approximate GELU
# Hugging Face's hidden_act names (transformers' ACT2FN) for the two GELUs.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh"}
KERAS_HUB_FIXED = {"bert": ("gelu_tanh", 1e-12), "xlm_roberta": ("gelu", 1e-5)}
TOKENIZERS = ("wordpiece", "sentencepiece")


@dataclass(frozen=True)
class EncoderNumbers:
    architecture: str  # 'bert' or 'xlm_roberta': the layers' layout (presets.preset_architecture)
    tokenizer: str  # one of TOKENIZERS
    activation: str  # one of ACTIVATIONS: the FFN's GELU
    layer_norm_epsilon: float
    dropout: float  # the encoder's dropout rate, every site (keras-hub uses one)
    pooler: bool  # whether the weights hold BERT's pooler (tanh dense on [CLS])

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise PresetError(f"activation {self.activation!r}: supported: {', '.join(ACTIVATIONS)}")

    @property
    def default_pooling(self) -> str:
        """What a head reads by default: BERT's pooler when the weights have one, else the mean
        of the last layer (what models without a pooler, such as e5, were trained with)."""
        return "cls" if self.pooler or self.architecture == "xlm_roberta" else "mean"

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: Path) -> None:
        """NUMBERS_FILE beside a saved keras-hub preset, read back by encoder_numbers."""
        (Path(directory) / NUMBERS_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PresetError(f"{path}: cannot read it ({err}); pass a complete preset folder") from None


def _hf_has_pooler(directory: Path) -> bool:
    """Whether model.safetensors names a pooler tensor, from its JSON header alone (8 bytes of
    length, then the header), so that a damaged body is left for the weights checksum and the
    reader to report."""
    path = directory / "model.safetensors"
    try:
        with open(path, "rb") as weights:
            size = int.from_bytes(weights.read(8), "little")
            names = json.loads(weights.read(size))
    except (OSError, ValueError) as err:
        raise PresetError(f"{path}: cannot read its header ({err}); pass a complete preset "
                          f"folder") from None
    return any(name.removeprefix("bert.").startswith("pooler.dense.") for name in names)


def hf_tokenizer_family(directory: Path, architecture: str) -> str:
    """'sentencepiece' or 'wordpiece' of a Hugging Face folder."""
    if architecture == "xlm_roberta":
        return "sentencepiece"
    config_file = directory / "tokenizer_config.json"
    named = _read_json(config_file).get("tokenizer_class") or "" if config_file.is_file() else ""
    if "XLMRoberta" in named:
        return "sentencepiece"
    if not (directory / "vocab.txt").is_file() and (directory / "sentencepiece.bpe.model").is_file():
        return "sentencepiece"
    return "wordpiece"


def _from_hf(directory: Path, architecture: str) -> EncoderNumbers:
    config_file = directory / "config.json"
    config = _read_json(config_file)
    tokenizer = hf_tokenizer_family(directory, architecture)
    fixed_activation, fixed_epsilon = KERAS_HUB_FIXED[architecture]
    if architecture == "bert" and tokenizer == "wordpiece":
        activation = fixed_activation
    else:
        hidden_act = config.get("hidden_act", "gelu")
        activation = HF_ACTIVATIONS.get(hidden_act)
        if activation is None:
            raise PresetError(f"{config_file}: hidden_act={hidden_act!r}; supported: "
                              f"{', '.join(HF_ACTIVATIONS)}")
    return EncoderNumbers(architecture=architecture, tokenizer=tokenizer, activation=activation,
                          layer_norm_epsilon=float(config.get("layer_norm_eps", fixed_epsilon)),
                          dropout=float(config.get("hidden_dropout_prob", 0.1)),
                          pooler=architecture == "bert" and _hf_has_pooler(directory))


def _from_keras(directory: Path, architecture: str) -> EncoderNumbers:
    if (directory / NUMBERS_FILE).is_file():
        saved = _read_json(directory / NUMBERS_FILE)
        try:
            return EncoderNumbers(**saved)
        except TypeError as err:
            raise PresetError(f"{directory / NUMBERS_FILE}: {err}; rewrite it or remove "
                              f"it") from None
    config = _read_json(directory / "config.json").get("config", {})
    tokenizer_file = directory / "tokenizer.json"
    tokenizer_class = _read_json(tokenizer_file).get("class_name") if tokenizer_file.is_file() else None
    tokenizer = ("sentencepiece" if architecture == "xlm_roberta"
                 or "XLMRobertaTokenizer" in str(tokenizer_class) else "wordpiece")
    activation, epsilon = KERAS_HUB_FIXED[architecture]
    return EncoderNumbers(architecture=architecture, tokenizer=tokenizer, activation=activation,
                          layer_norm_epsilon=epsilon, dropout=float(config.get("dropout", 0.1)),
                          pooler=architecture == "bert")


def encoder_numbers(preset: str) -> EncoderNumbers:
    """The numbers both trainers run `preset` with (see the module's rule)."""
    architecture = preset_architecture(preset)
    directory, kind = preset_dir(preset)
    directory = Path(directory)
    return _from_hf(directory, architecture) if kind == "hf" else _from_keras(directory,
                                                                               architecture)
