"""TunerConfig: the settings of the --method families in jax_lora/tuners, one section of
TrainConfig (`tuner`), so each becomes a flag. A field belongs to the family its comment names;
a family without settings (BitFit) has none here."""

from __future__ import annotations

from dataclasses import dataclass

from jax_lora.lora import LORA_TARGETS

# How prompt tuning's virtual tokens start, PEFT's PromptTuningInit: random = RANDOM (torch's
# nn.Embedding default, N(0, 1)); vocab = SAMPLE_VOCAB (rows of the word embedding at token
# ids drawn uniformly from the vocabulary), the start Lester et al. found to train better.
PROMPT_INITS = ("vocab", "random")
# Where bottleneck adapters sit, as the `adapters` library's (AdapterHub) configs place them:
# houlsby = DoubleSeqBnConfig (after attention and after the FFN, swish), pfeiffer =
# SeqBnConfig (after the FFN only, relu; the adapter reads the sublayer's LayerNormed sum).
BOTTLENECK_CONFIGS = ("houlsby", "pfeiffer")


@dataclass(frozen=True)
class TunerConfig:
    ia3_targets: tuple[str, ...] = ("key", "value", "ffn_out")  # (IA)³: projections rescaled by a learned vector (the paper's: keys, values, and the FFN's activations as ffn_out's input)
    ia3_feedforward: tuple[str, ...] = ("ffn_out",)  # (IA)³: of --ia3-targets, those rescaled at their input instead of their output (PEFT's feedforward_modules)
    virtual_tokens: int = 20  # prompt and prefix tuning: trainable input embeddings put before every row, or key/value prefixes in every layer (PEFT's num_virtual_tokens)
    prompt_init: str = "vocab"  # prompt tuning: how they start: vocab (rows of the word embedding, PEFT's SAMPLE_VOCAB) or random (N(0, 1), PEFT's RANDOM)
    prefix_projection: bool = False  # prefix tuning: train the prefixes through PEFT's reparameterisation MLP (embedding -> Linear -> tanh -> Linear), whose output alone is exported (PEFT's prefix_projection)
    prefix_hidden_size: int | None = None  # prefix tuning with --prefix-projection: the MLP's hidden width [default: the model's hidden size, as PEFT's encoder_hidden_size]
    bottleneck_config: str = "houlsby"  # bottleneck adapters: houlsby (after attention and FFN, swish) or pfeiffer (after the FFN, relu), AdapterHub's DoubleSeqBnConfig and SeqBnConfig
    reduction_factor: float = 16.0  # bottleneck adapters: hidden size / bottleneck width (AdapterHub's reduction_factor; the width is at least 1)

    def __post_init__(self):
        for name in ("ia3_targets", "ia3_feedforward"):
            targets = tuple(getattr(self, name))
            unknown = [t for t in targets if t not in LORA_TARGETS]
            flag = "--" + name.replace("_", "-")
            if unknown or len(set(targets)) != len(targets):
                raise ValueError(f"{flag} {','.join(map(str, targets))}: name each of "
                                 f"{', '.join(LORA_TARGETS)} at most once")
            object.__setattr__(self, name, targets)
        outside = [t for t in self.ia3_feedforward if t not in self.ia3_targets]
        if outside:
            raise ValueError(f"--ia3-feedforward {','.join(self.ia3_feedforward)}: {outside[0]} "
                             f"is not among --ia3-targets {','.join(self.ia3_targets)}")
        if isinstance(self.virtual_tokens, bool) or not isinstance(self.virtual_tokens, int) \
                or self.virtual_tokens < 1:
            raise ValueError(f"--virtual-tokens {self.virtual_tokens!r}: must be an integer >= 1")
        hidden = self.prefix_hidden_size
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int)
                                   or hidden < 1):
            raise ValueError(f"--prefix-hidden-size {hidden!r}: must be an integer >= 1")
        if hidden is not None and not self.prefix_projection:
            raise ValueError(f"--prefix-hidden-size {hidden}: sizes the MLP of "
                             f"--prefix-projection; pass it too, or drop --prefix-hidden-size")
        if self.bottleneck_config not in BOTTLENECK_CONFIGS:
            raise ValueError(f"--bottleneck-config {self.bottleneck_config!r}: choose one of "
                             f"{', '.join(BOTTLENECK_CONFIGS)}")
        if not self.reduction_factor > 0:
            raise ValueError(f"--reduction-factor {self.reduction_factor!r}: must be > 0")
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(f"--prompt-init {self.prompt_init!r}: choose one of "
                             f"{', '.join(PROMPT_INITS)}")
