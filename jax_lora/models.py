"""BERT and XLM-RoBERTa encoders + classifiers in Flax NNX, numerically equal to keras-hub's
BertTextClassifier and XLMRobertaTextClassifier (config.architecture picks one).

keras-hub's BERT choices kept on purpose: post-LayerNorm layers, eps 1e-12, tanh-approximate
GELU (Hugging Face uses erf), masked softmax that sets padded keys to -1e9 before the softmax,
the query scaled before QK^T, dropout on attention probabilities, attention output, FFN output,
embeddings and on the pooled output before the head.

XLM-R is keras-hub's RobertaBackbone: the same TransformerEncoder layers with exact (erf)
GELU and eps 1e-5, positions 0..L-1 (TokenAndPositionEmbedding; Hugging Face's padding-offset
positions are folded in by the weight readers), no segment embedding and no pooler. Its head
(ClassificationHead) is XLMRobertaTextClassifier's: <s> -> dropout -> dense(H, tanh) ->
dropout -> dense(classes), both denses task layers that start fresh, like BERT's head.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jax_lora.lora import BERT_KERNEL_INIT, COMPUTE_DTYPES, LoraConfig, LoRALinear, dropout

# keras.layers.Softmax fills masked logits with this value (float32), not -inf.
MASKED_LOGIT = -1e9
# What each transformer layer keeps for the backward pass (jax.checkpoint policies): "none"
# keeps every activation the backward pass reads; "dots" only the outputs of the weight matmuls,
# recomputing softmax, GELU, LayerNorm, dropout and the attention products; "layers" only the
# layer's input, recomputing the whole layer. Less memory for more compute.
REMAT = {"none": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
         "layers": jax.checkpoint_policies.nothing_saveable}
# What the head reads: "cls" = BERT's pooler, tanh(dense([CLS])), as keras-hub's
# BertTextClassifier and Hugging Face's BertForSequenceClassification do; "mean" = the mean of
# the last layer over the real tokens, the pooling sentence-transformers models such as
# all-MiniLM-L6-v2 were trained with (their 1_Pooling folder), which bypasses the pooler.
POOLING = ("cls", "mean")
# keras-hub backbones reproduced: BertBackbone, XLMRobertaBackbone (= RobertaBackbone).
ARCHITECTURES = ("bert", "xlm_roberta")
GELUS = ("gelu", "gelu_tanh")  # exact (erf) and tanh-approximate, shared.runs.encoder's names


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int  # rows of the token embedding
    hidden_dim: int  # H: width of every hidden state
    num_layers: int  # transformer layers
    num_heads: int  # attention heads; H must divide by it
    intermediate_dim: int  # FFN inner width
    max_sequence_length: int = 512  # rows of the position embedding
    num_segments: int = 2  # rows of the segment embedding; 0: none (XLM-R)
    dropout: float = 0.1  # every encoder dropout site, as keras-hub uses one rate throughout
    layer_norm_epsilon: float = 1e-12  # keras-hub BERT hard-codes 1e-12, RoBERTa 1e-5
    architecture: str = "bert"  # one of ARCHITECTURES: decides the head
    head_dropout: float | None = None  # the head's dropout; None: `dropout` (as BERT's)
    # The FFN's GELU: "gelu" (erf) or "gelu_tanh"; None: keras-hub's for the architecture
    # (BertBackbone tanh, RobertaBackbone erf). shared.runs.encoder decides it per preset.
    activation: str | None = None
    pooler: bool = True  # BERT's pooler exists (multilingual-e5 has none: mean pooling only)

    def __post_init__(self):
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"BertConfig hidden_dim={self.hidden_dim} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"BertConfig architecture={self.architecture!r}: choose one of "
                             f"{', '.join(ARCHITECTURES)}")
        if self.activation is None:
            object.__setattr__(self, "activation",
                               "gelu_tanh" if self.architecture == "bert" else "gelu")
        if self.activation not in GELUS:
            raise ValueError(f"BertConfig activation={self.activation!r}: choose one of "
                             f"{', '.join(GELUS)}")

    @property
    def approximate_gelu(self) -> bool:
        return self.activation == "gelu_tanh"

    @property
    def head_rate(self) -> float:
        return self.dropout if self.head_dropout is None else self.head_dropout


def _fold(key: jax.Array | None, site: int) -> jax.Array | None:
    """Per-site dropout key; deterministic in (key, site) so it works under jit and on resume."""
    return None if key is None else jax.random.fold_in(key, site)


def _layer_norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance like Keras; E[x²]-E[x]² loses digits on large activations.
    return nnx.LayerNorm(config.hidden_dim, epsilon=config.layer_norm_epsilon,
                         use_fast_variance=False, rngs=rngs)


def _embed(rows: int, config: BertConfig, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(rows, config.hidden_dim, embedding_init=BERT_KERNEL_INIT, rngs=rngs)


def _linear(d_in: int, d_out: int, name: str, lora: LoraConfig, rngs: nnx.Rngs) -> LoRALinear:
    rank = lora.rank if name in lora.targets else 0
    return LoRALinear(d_in, d_out, rank=rank, scale=lora.scale, lora_dropout=lora.dropout,
                      dora=lora.dora, rngs=rngs)


class Embeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.token_embedding = _embed(config.vocab_size, config, rngs)
        self.position_embedding = _embed(config.max_sequence_length, config, rngs)
        if config.num_segments:
            self.segment_embedding = _embed(config.num_segments, config, rngs)
        self.layer_norm = _layer_norm(config, rngs)
        self.rate = config.dropout

    def __call__(self, token_ids, segment_ids, dropout_key, virtual=None, offset: int = 0):
        """segment_ids are ignored without a segment embedding (XLM-R). `virtual` [P, H]:
        embeddings put before every row's tokens (prompt tuning), which then take positions
        0..P-1 and segment 0, as PEFT passes them to BertModel (inputs_embeds). `offset`: the
        first token's position (prefix tuning's P, as BertEmbeddings' past_key_values_length)."""
        tokens = self.token_embedding(token_ids)
        if virtual is not None:
            batch, length = token_ids.shape[0], virtual.shape[0]
            tokens = jnp.concatenate(
                [jnp.broadcast_to(virtual[None], (batch, *virtual.shape)), tokens], axis=1)
            segment_ids = jnp.concatenate(
                [jnp.zeros((batch, length), segment_ids.dtype), segment_ids], axis=1)
        positions = self.position_embedding.embedding[offset: offset + tokens.shape[1]]
        x = tokens + positions[None]
        if hasattr(self, "segment_embedding"):
            x = x + self.segment_embedding(segment_ids)
        return dropout(self.layer_norm(x), self.rate, dropout_key)


def einsum(spec: str, x, y, compute_dtype: str = "float32"):
    """jnp.einsum with lora.matmul's precision rule: bfloat16 operands, float32 sums."""
    if compute_dtype == "float32":
        return jnp.einsum(spec, x, y)
    return jnp.einsum(spec, x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                      preferred_element_type=jnp.float32)


def attention_probs(query, key, padding_mask, compute_dtype: str = "float32"):
    """Masked softmax over the keys of [B, T, heads, head_dim] projections (query already
    scaled; it may have fewer rows than key): float32 [B, heads, T_query, T], exactly 0 in
    padded key columns (exp(-1e9) underflows)."""
    logits = einsum("btnd,bsnd->bnts", query, key, compute_dtype)
    logits = jnp.where(padding_mask[:, None, None, :], logits, MASKED_LOGIT)
    return jax.nn.softmax(logits, axis=-1)


def with_prefix(key, value, padding_mask, prefix):
    """Prefix tuning's keys and values, prefix [2, P, heads, head_dim], put before every row's
    own [B, T, heads, head_dim], and the padding mask [B, T] widened with P attended columns
    (PEFT's prefix_attention_mask); all three unchanged without a prefix."""
    if prefix is None:
        return key, value, padding_mask
    batch = key.shape[0]
    key, value = (jnp.concatenate([jnp.broadcast_to(p[None], (batch, *p.shape)), own], axis=1)
                  for p, own in zip(prefix, (key, value)))
    attended = jnp.ones((batch, prefix.shape[1]), bool)
    return key, value, jnp.concatenate([attended, padding_mask], axis=1)


def attend(query, key, value, padding_mask, rate: float, dropout_key,
           compute_dtype: str = "float32"):
    """attention_probs, dropout on them, times the values: the context [B, T_query, heads,
    head_dim]. The two products follow `compute_dtype`; the softmax is float32."""
    probs = dropout(attention_probs(query, key, padding_mask, compute_dtype), rate, dropout_key)
    return einsum("bnts,bsnd->btnd", probs, value, compute_dtype)


class Attention(nnx.Module):
    def __init__(self, config: BertConfig, lora: LoraConfig, *, rngs: nnx.Rngs):
        h = config.hidden_dim
        self.query = _linear(h, h, "query", lora, rngs)
        self.key = _linear(h, h, "key", lora, rngs)
        self.value = _linear(h, h, "value", lora, rngs)
        self.output = _linear(h, h, "attention_output", lora, rngs)
        self.num_heads = config.num_heads
        self.rate = config.dropout
        self.compute_dtype = "float32"  # of the attention products (set_compute_dtype)

    def project(self, x, dropout_key, *, cls_only: bool = False):
        """(query, key, value), each [B, T, heads, head_dim], the query scaled; cls_only: the
        query for position 0 only."""
        batch, _, hidden = x.shape
        head_dim = hidden // self.num_heads

        def heads(projection, inputs, site):
            y = projection(inputs, dropout_key=_fold(dropout_key, site))
            return y.reshape(batch, inputs.shape[1], self.num_heads, head_dim)

        # Keras MHA scales the query before the dot product; the order changes the last bits.
        query = heads(self.query, x[:, :1] if cls_only else x, 0) * jnp.float32(
            1.0 / head_dim ** 0.5)
        return query, heads(self.key, x, 1), heads(self.value, x, 2)

    def __call__(self, x, padding_mask, dropout_key, *, cls_only: bool = False, prefix=None):
        """cls_only: queries (and so the output) for position 0 only; keys/values for all.
        prefix: prefix tuning's [2, P, heads, head_dim] keys and values (with_prefix)."""
        query, key, value = self.project(x, dropout_key, cls_only=cls_only)
        key, value, padding_mask = with_prefix(key, value, padding_mask, prefix)
        context = attend(query, key, value, padding_mask, self.rate, _fold(dropout_key, 3),
                         self.compute_dtype)
        return self.output(context.reshape(*query.shape[:2], x.shape[2]),
                           dropout_key=_fold(dropout_key, 4))

    def probabilities(self, x, padding_mask, prefix=None):
        """The attention probabilities of every query row, without dropout: [B, heads, T, T]
        (T + P key columns with a prefix, the prefix's first)."""
        query, key, value = self.project(x, None)
        key, _, padding_mask = with_prefix(key, value, padding_mask, prefix)
        return attention_probs(query, key, padding_mask, self.compute_dtype)


class TransformerLayer(nnx.Module):
    def __init__(self, config: BertConfig, lora: LoraConfig, *, rngs: nnx.Rngs):
        self.attention = Attention(config, lora, rngs=rngs)
        self.attention_layer_norm = _layer_norm(config, rngs)
        self.ffn_in = _linear(config.hidden_dim, config.intermediate_dim, "ffn_in", lora, rngs)
        self.ffn_out = _linear(config.intermediate_dim, config.hidden_dim, "ffn_out", lora, rngs)
        self.ffn_layer_norm = _layer_norm(config, rngs)
        self.rate = config.dropout
        # keras-hub's BertBackbone passes gelu_approximate (tanh), RobertaBackbone "gelu"
        # (keras' default approximate=False: erf, as Hugging Face's XLM-R and e5).
        self.approximate_gelu = config.approximate_gelu

    def __call__(self, x, padding_mask, dropout_key, *, cls_only: bool = False, prefix=None):
        """[B, T, H] -> [B, T, H]; cls_only -> [B, 1, H], the [CLS] row alone (it still attends
        to every position; every other row of the output is skipped). prefix: prefix
        tuning's keys and values for this layer (Attention)."""
        attended = self.attention(x, padding_mask, _fold(dropout_key, 10), cls_only=cls_only,
                                  prefix=prefix)
        residual = x[:, :1] if cls_only else x
        x = self.end_sublayer("attention_adapter",
                              dropout(attended, self.rate, _fold(dropout_key, 11)), residual,
                              self.attention_layer_norm)
        inner = jax.nn.gelu(self.ffn_in(x, dropout_key=_fold(dropout_key, 12)),
                            approximate=self.approximate_gelu)
        out = self.ffn_out(inner, dropout_key=_fold(dropout_key, 13))
        return self.end_sublayer("ffn_adapter", dropout(out, self.rate, _fold(dropout_key, 14)),
                                 x, self.ffn_layer_norm)

    def end_sublayer(self, adapter: str, output, residual, layer_norm):
        """A sublayer's end, layer_norm(residual + output); a bottleneck adapter the family
        put at this attribute (jax_lora/tuners/bottleneck.py) computes it instead."""
        if getattr(self, adapter, None) is None:
            return layer_norm(residual + output)
        return getattr(self, adapter)(output, residual, layer_norm)


def run_layer(layer: TransformerLayer, x, padding_mask, dropout_key, *, cls_only: bool,
              remat: str, prefix=None):
    """layer(x, ...), under jax.checkpoint with the REMAT[remat] policy unless remat="none"."""
    if remat == "none":
        return layer(x, padding_mask, dropout_key, cls_only=cls_only, prefix=prefix)
    graphdef, state = nnx.split(layer)

    def pure(state, x, padding_mask, dropout_key, prefix):
        return nnx.merge(graphdef, state)(x, padding_mask, dropout_key, cls_only=cls_only,
                                          prefix=prefix)
    return jax.checkpoint(pure, policy=REMAT[remat])(state, x, padding_mask, dropout_key, prefix)


class ClassificationHead(nnx.Module):
    """keras-hub XLMRobertaTextClassifier's head on the pooled vector (<s>, or the token mean):
    dropout -> dense(H, tanh) -> dropout -> dense(classes), the layers keras-hub names
    pooled_dense and logits (Hugging Face's RobertaClassificationHead: classifier.dense,
    classifier.out_proj)."""

    def __init__(self, config: BertConfig, num_classes: int, *, rngs: nnx.Rngs):
        h = config.hidden_dim
        # keras-hub gives pooled_dense Dense's default glorot_uniform, the logits
        # roberta_kernel_initializer (truncated normal 0.02); both biases start at 0.
        self.dense = nnx.Linear(h, h, kernel_init=nnx.initializers.glorot_uniform(), rngs=rngs)
        self.out_proj = nnx.Linear(h, num_classes, kernel_init=BERT_KERNEL_INIT, rngs=rngs)
        self.rate = config.head_rate

    def __call__(self, pooled, dropout_key=None):
        x = jnp.tanh(self.dense(dropout(pooled, self.rate, _fold(dropout_key, 0))))
        return self.out_proj(dropout(x, self.rate, _fold(dropout_key, 1)))


class BertClassifier(nnx.Module):
    """BERT, or XLM-R when config.architecture says so: the same encoder layers; XLM-R has no
    pooler, and its `head` is a ClassificationHead (fresh, trained and saved as BERT's head)."""

    def __init__(self, config: BertConfig, *, num_classes: int = 3,
                 lora: LoraConfig = LoraConfig(), pooling: str = "cls", remat: str = "none",
                 tuning=None, rngs: nnx.Rngs):
        """`tuning`: a jax_lora.tuners.Tuning (another family than LoRA: BitFit, (IA)³,
        prompt or prefix tuning, bottleneck adapters), which adds its parameters once the
        model is built."""
        if remat not in REMAT:
            raise ValueError(f"remat={remat!r}: choose one of {', '.join(REMAT)}")
        if pooling not in POOLING:
            raise ValueError(f"pooling={pooling!r}: choose one of {', '.join(POOLING)}")
        self.config = config
        self.num_classes = num_classes
        self.lora = lora
        self.pooling = pooling
        self.remat = remat  # a key of REMAT; may be set after loading (it holds no weights)
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([TransformerLayer(config, lora, rngs=rngs)
                                for _ in range(config.num_layers)])
        if config.architecture == "xlm_roberta":
            if lora.train_pooler:
                raise ValueError("XLM-R has no pooler (its head reads <s>, and the head's own "
                                 "dense layer trains with the head): drop --train-pooler")
            self.head = ClassificationHead(config, num_classes, rngs=rngs)
        else:
            if not config.pooler and pooling == "mean" and lora.train_pooler:
                raise ValueError("this BERT has no pooler (as multilingual-e5) and --pooling mean "
                                 "reads none: drop --train-pooler")
            if config.pooler or pooling == "cls":
                # A LoRALinear without adapters (a plain dense) so --base-dtype can store it.
                # Without a pretrained one (e5), cls pooling gets a fresh pooler that trains
                # with the head, as Hugging Face's BertForSequenceClassification gives it.
                self.pooler = _linear(config.hidden_dim, config.hidden_dim, "pooler", lora, rngs)
                rngs.params()  # the key nnx.Linear drew for its zero bias: the head's init as before
            self.head = nnx.Linear(config.hidden_dim, num_classes, kernel_init=BERT_KERNEL_INIT,
                                   rngs=rngs)
        self.tuning = tuning
        if tuning is not None:  # last, so the head's init does not depend on the family
            tuning.inject(self, rngs)

    def encode(self, token_ids, segment_ids, padding_mask, *, dropout_key=None,
               cls_only: bool = False, attention_maps: bool = False) -> dict:
        """{'sequence_output': [B,T,H], 'pooled_output': [B,H] (what the head reads, see
        POOLING; with cls pooling XLM-R's head reads [CLS] = <s> itself), 'cls': [B,H],
        'hidden_states': one [B,T,H] per transformer layer, 'logits': [B, num_classes]}

        cls_only=True runs the last layer for the [CLS] row only, the one row the pooler
        reads: the same pooled output and logits (to float rounding; in training the last
        layer draws its dropout masks at the smaller shape), with the last layer's
        projections, FFN and attention queries cut from T rows to 1. sequence_output and the
        last hidden state are then [B, 1, H]. Mean pooling reads every row, so it ignores
        cls_only.

        attention_maps=True (inference only) adds 'attention_maps': one float32
        [B, heads, T, T] per layer, the softmax of every query row over the keys (rows sum to
        1, padded key columns 0), computed from each layer's full input, so cls_only does not
        cut them. They project queries and keys again, beside the layer; under jit XLA merges
        the repeats (the FLOPs of cls_only=False without maps), so with cls_only=True only the
        last layer's full queries and logits are extra. With prompt tuning the maps (and mean
        pooling) cover the text's T tokens only; a row's attention to the virtual tokens is
        left out, so it sums to less than 1; with prefix tuning, to the prefixes."""
        if attention_maps and dropout_key is not None:
            raise ValueError("encode(attention_maps=True) is for inference: pass no dropout_key")
        # Layer i uses site key i; the embeddings and classifier use the two keys after them.
        num_layers = self.config.num_layers
        padding_mask = jnp.asarray(padding_mask).astype(bool)
        cls_only = cls_only and self.pooling == "cls"
        # Prompt tuning (jax_lora/tuners/prompt.py) sets `prompt`: P virtual tokens before
        # the text, attended to by every row. The head reads row 0, the first virtual token,
        # as BertForSequenceClassification does under PEFT; mean pooling and the attention
        # maps keep to the text's own tokens.
        virtual = self.prompt() if getattr(self, "prompt", None) is not None else None
        text = 0 if virtual is None else virtual.shape[0]  # where the text's tokens start
        # Prefix tuning (jax_lora/tuners/prefix.py) sets `prefix`: per layer P keys and values
        # before the text's, [L, 2, P, heads, head_dim], as PEFT's past_key_values; the text
        # then starts at position P, as BertEmbeddings counts the cached tokens.
        prefixes = self.prefix() if getattr(self, "prefix", None) is not None else None
        offset = 0 if prefixes is None else prefixes.shape[2]
        x = self.embeddings(token_ids, segment_ids, _fold(dropout_key, num_layers), virtual,
                            offset)
        text_mask = padding_mask
        if virtual is not None:
            padding_mask = jnp.concatenate(
                [jnp.ones((padding_mask.shape[0], text), bool), padding_mask], axis=1)
        hidden_states, maps = [], []
        for index, layer in enumerate(self.layers):
            prefix = None if prefixes is None else prefixes[index]
            if attention_maps:
                maps.append(layer.attention.probabilities(x, padding_mask, prefix)[
                    ..., text:, text + offset:])
            x = run_layer(layer, x, padding_mask, _fold(dropout_key, index),
                          cls_only=cls_only and index == num_layers - 1, remat=self.remat,
                          prefix=prefix)
            hidden_states.append(x)
        cls = x[:, 0]
        if self.pooling == "mean":
            weights = text_mask.astype(x.dtype)[..., None]
            pooled = jnp.sum(x[:, text:] * weights, axis=1) / jnp.maximum(
                jnp.sum(weights, axis=1), 1.0)
        elif isinstance(self.head, ClassificationHead):
            pooled = cls  # the head's own dense + tanh plays the pooler
        else:
            pooled = jnp.tanh(self.pooler(cls))
        head_key = _fold(dropout_key, num_layers + 1)
        if isinstance(self.head, ClassificationHead):
            logits = self.head(pooled, head_key)
        else:
            # keras-hub BertTextClassifier: dropout on the pooled output, then Dense(classes).
            logits = self.head(dropout(pooled, self.config.head_rate, head_key))
        return {"sequence_output": x, "pooled_output": pooled, "cls": cls,
                "hidden_states": hidden_states, "logits": logits,
                **({"attention_maps": maps} if attention_maps else {})}

    def __call__(self, token_ids, segment_ids, padding_mask, *, dropout_key=None):
        """float32 logits [B, num_classes]; dropout_key=None is evaluation (no dropout). With
        cls pooling only the [CLS] row goes through the last layer (`encode(cls_only=True)`)."""
        return self.encode(token_ids, segment_ids, padding_mask, dropout_key=dropout_key,
                           cls_only=True)["logits"]


def set_compute_dtype(model: BertClassifier, compute_dtype: str) -> None:
    """The operand type of the encoder's matmuls (projections, attention products, pooler):
    float32, or bfloat16 with float32 sums (lora.matmul). Parameters, softmax, LayerNorm,
    GELU, the head and the loss stay float32. Holds no weights: set it after loading."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {compute_dtype!r}: choose one of "
                         f"{', '.join(COMPUTE_DTYPES)}")
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (LoRALinear, Attention)):
            module.compute_dtype = compute_dtype
