"""keras-hub (TensorFlow) side of the parity and tokenizer tests, run in a subprocess so the
pytest process never imports TensorFlow. Writes plain .npz files the JAX tests compare with.

  python keras_reference.py reference ROOT VOCAB PAIRS.json EXPORT_FROM SAVE_FROM
                                      [NAME=PRESET_DIR ...]
      builds the tiny keras preset ROOT/tiny_keras (cased, random weights, with its head), then
      for it and every NAME: ROOT/NAME_tokens.npz (tf_baseline's ids of PAIRS at each length:
      its load_preprocessor and text_dataset, so a Hugging Face folder's text rules apply),
      for a Hugging Face folder also ROOT/NAME_keras_hub_rules.npz (keras-hub's converter's
      tokenizer alone, the rules tf_baseline used before), and ROOT/NAME_outputs.npz (model
      outputs on some of those rows); exports a LoRA-adapted
      jax_lora model of EXPORT_FROM to ROOT/exported and writes ROOT/export.npz (Flax logits,
      and keras-hub's from the exported preset); finally saves the model of the Hugging Face
      folder SAVE_FROM as tf_baseline saves a run's preset (ROOT/tf_saved) and as jax_lora
      exports it (ROOT/exported_accented), and tokenizes PAIRS with each reloaded
      (ROOT/tf_saved_tokens.npz, ROOT/exported_accented_tokens.npz); and trains a
      dropout-free copy of the tiny preset (ROOT/tiny_keras_nodrop) FULL_STEPS steps on one
      batch with tf_baseline's compile (ROOT/full_steps.npz: the batch, logits after each
      step; ROOT/full_step1_deltas.npz: each variable's change in the first step). One process, because importing TensorFlow is the slow part of these tests.
  python keras_reference.py tokenize JOBS.json
  python keras_reference.py attention ROOT VOCAB
      builds the tiny keras preset ROOT/tiny_keras and writes ROOT/attention.npz: a padded
      batch of random ids and each transformer layer's attention scores on it (keras-hub's
      TransformerEncoder with return_attention_scores=True, inference).
  python keras_reference.py xlmr ROOT HF_FOLDER PAIRS.json
      converts the tiny XLM-R Hugging Face folder with keras-hub's own converter into an
      XLMRobertaTextClassifier with the folder's classifier head and saves it with
      save_to_preset (ROOT/tiny_xlmr); writes ROOT/xlmr_tokens.npz and ROOT/xlmr_hf_tokens.npz
      (XLMRobertaTextClassifierPreprocessor of the preset and of the folder, in tf.data, at
      XLMR_LENGTHS) and ROOT/xlmr_outputs.npz (the reloaded preset's logits, sequence output
      and every layer's hidden states on OUTPUT_ROWS at OUTPUT_LENGTH).
  python keras_reference.py xlmr_tokenize PRESET PAIRS.json OUT.npz LENGTH...
      the XLM-R preprocessor's ids of PAIRS at each LENGTH.
  python keras_reference.py xlmr_export ROOT NAME=METHOD=PRESET...
      jax_lora.export on the tiny XLM-R: for each NAME, the PRESET model with METHOD's
      trainable leaves (lora, dora: adapters on every projection; probe: the head; full:
      every parameter) moved off their initial values, exported to ROOT/NAME, reloaded with
      XLMRobertaTextClassifier.from_preset; ROOT/NAME.npz holds the Flax logits and keras-hub's
      from the same ids and from the texts through the exported preprocessor (tf_baseline's
      load_preprocessor + text_dataset).
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two cores are shared with other test runs; TF's default pools would take them all.
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402
import keras_hub  # noqa: E402

from shared.runs.encoder import encoder_numbers  # noqa: E402
from tf_baseline.data import text_dataset  # noqa: E402
from tf_baseline.model import (load_classifier, load_preprocessor, save_preset,  # noqa: E402
                               text_normalizer)

TINY_BACKBONE = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
                     max_sequence_length=128)
LENGTHS = (512, 64, 16)
# Model outputs on these pair rows (several languages), packed to OUTPUT_LENGTH: some rows
# padded, some full, so masking is exercised.
OUTPUT_ROWS = list(range(0, 424, 53))
OUTPUT_LENGTH = 64


def build_preset(out_dir, vocab_file):
    """A tiny cased BertTextClassifier with every weight random (not the 0/1 LayerNorm and bias
    defaults), so a mapping error anywhere shows up in the outputs."""
    keras.utils.set_random_seed(0)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab_file, lowercase=False)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=tokenizer.vocabulary_size(),
                                             **TINY_BACKBONE)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=64)
    classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=3,
                                                     preprocessor=preprocessor)
    rng = np.random.default_rng(0)
    for weight in classifier.weights:
        scale = 0.5 if len(weight.shape) == 1 else 0.1
        base = 1.0 if weight.path.endswith("gamma") else 0.0
        weight.assign(base + scale * rng.standard_normal(weight.shape).astype("float32"))
    classifier.save_to_preset(out_dir)


def trainer_token_arrays(preset, pairs, lengths):
    """tf_baseline's tokenization of `pairs`: model.load_preprocessor (a Hugging Face folder's
    or saved preset's text rules included) and data.text_dataset, as the TF trainer runs them.
    `lowercase` is whether the text is lowercased, by the text rules or by keras-hub."""
    frame = pd.DataFrame(pairs)
    arrays = {}
    for length in lengths:
        preprocessor = load_preprocessor(str(preset), length)
        data = text_dataset(frame, preprocessor, 2048, labels=False, drop_remainder=False)
        batches = list(data.as_numpy_iterator())
        for field in ("token_ids", "segment_ids", "padding_mask"):
            arrays[f"{field}_{length}"] = np.concatenate([b[field] for b in batches])
    normalizer = text_normalizer(preprocessor)
    arrays["lowercase"] = np.asarray(normalizer.lowercase if normalizer is not None
                                     else preprocessor.tokenizer.lowercase)
    return arrays


def token_arrays(tokenizer, pairs, lengths):
    """BertTextClassifierPreprocessor outputs, batched in tf.data as the TF trainer does. (Called
    eagerly, keras-hub 0.32 would take its pure-Python path instead of the TF ops.)"""
    arrays = {"lowercase": np.asarray(tokenizer.lowercase)}
    for length in lengths:
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer, sequence_length=length)
        data = tf.data.Dataset.from_tensor_slices((pairs["premise"], pairs["hypothesis"]))
        data = data.batch(2048).map(lambda p, h: preprocessor(x=(p, h)))
        batches = list(data.as_numpy_iterator())
        for field in ("token_ids", "segment_ids", "padding_mask"):
            arrays[f"{field}_{length}"] = np.concatenate([b[field] for b in batches])
    return arrays


def model_outputs(preset, inputs):
    """Logits, pooled output and every layer's hidden states, with a random unit-scale head
    (BERT's 0.02 init gives ~0.05 logits; 1e-5 should be a tight bound). The head is saved
    for the Flax side to copy."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=3)
    head = classifier.get_layer("logits")
    rng = np.random.default_rng(0)
    head.kernel.assign(rng.standard_normal(head.kernel.shape).astype("float32"))
    head.bias.assign(rng.standard_normal(head.bias.shape).astype("float32"))
    layer_outputs = [backbone.get_layer(f"transformer_layer_{i}").output
                     for i in range(backbone.num_layers)]
    probe = keras.Model(backbone.input, {**backbone.output, "hidden_states": layer_outputs})
    results = probe(inputs)
    return {**inputs, "logits": np.asarray(classifier(inputs)),
            "pooled_output": np.asarray(results["pooled_output"]),
            "sequence_output": np.asarray(results["sequence_output"]),
            "hidden_states": np.stack([np.asarray(h) for h in results["hidden_states"]]),
            "head_kernel": np.asarray(head.kernel), "head_bias": np.asarray(head.bias)}


def export_round_trip(preset, out_dir, result_file, base_dtype="float32"):
    """jax_lora.export in a process that holds both JAX and TensorFlow, as the export CLI;
    `base_dtype`: the frozen kernels stored as --base-dtype says before the export."""
    import jax
    from flax import nnx

    from jax_lora.export import export_preset
    from jax_lora.lora import LORA_TARGETS, LoraConfig
    from jax_lora.quant import quantize_base
    from jax_lora.weights import load_pretrained
    from shared.data.watson import SAMPLE_DATA_DIR, load_train

    pretrained = load_pretrained(preset, LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS),
                                 seed=3)
    model = pretrained.model
    quantize_base(model, base_dtype)
    for index, (_, module) in enumerate(nnx.iter_modules(model)):
        if hasattr(module, "lora_b"):  # trained adapters are not zero; these must not be either
            key = jax.random.fold_in(jax.random.key(7), index)
            module.lora_b[...] = 0.2 * jax.random.normal(key, module.lora_b.shape)
    frame = load_train(SAMPLE_DATA_DIR).iloc[::41][:10]
    pairs = (frame["premise"].tolist(), frame["hypothesis"].tolist())
    inputs = pretrained.tokenizer(*pairs, sequence_length=40)
    flax_logits = np.asarray(nnx.jit(lambda m: m(inputs["token_ids"], inputs["segment_ids"],
                                                 inputs["padding_mask"]))(model))
    export_preset(model, pretrained.tokenizer, out_dir, sequence_length=40)
    classifier = keras_hub.models.BertTextClassifier.from_preset(out_dir)
    # From text as tf_baseline reads a preset: its load_preprocessor applies the text rules
    # saved beside the preset, and text_dataset runs keras-hub's TF ops in tf.data.
    texts = pd.DataFrame({"premise": pairs[0], "hypothesis": pairs[1]})
    from_text = next(iter(text_dataset(texts, load_preprocessor(out_dir, None), len(texts),
                                       labels=False, drop_remainder=False)))
    np.savez(result_file, flax_logits=flax_logits,
             tf_logits_from_ids=np.asarray(classifier(inputs)),
             tf_logits_from_text=np.asarray(classifier(from_text)))


def saved_round_trips(preset, root, pairs):
    """The Hugging Face model `preset` saved as tf_baseline saves a run's preset/ and as
    jax_lora exports one, each reloaded and tokenized by tf_baseline (ROOT/<folder>_tokens)."""
    from jax_lora.export import export_preset
    from jax_lora.lora import LoraConfig
    from jax_lora.weights import load_pretrained

    classifier = load_classifier(str(preset), tf.distribute.get_strategy())
    save_preset(classifier, load_preprocessor(str(preset), 64), os.path.join(root, "tf_saved"),
                encoder_numbers(str(preset)))
    pretrained = load_pretrained(str(preset), LoraConfig(targets=()))
    export_preset(pretrained.model, pretrained.tokenizer, os.path.join(root, "exported_accented"),
                  sequence_length=64)
    for folder in ("tf_saved", "exported_accented"):
        np.savez(os.path.join(root, f"{folder}_tokens.npz"),
                 **trainer_token_arrays(os.path.join(root, folder), pairs, LENGTHS[:1]))


FULL_STEPS, FULL_LR = 3, 1e-3  # a rate at which three steps visibly move the logits


def full_steps(root, vocab_file):
    """tf_baseline's full fine-tune (its compile: Adam, CategoricalCrossentropy from logits)
    for FULL_STEPS steps on one batch, dropout off everywhere, from a random tiny preset."""
    out_dir = os.path.join(root, "tiny_keras_nodrop")
    keras.utils.set_random_seed(1)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab_file, lowercase=False)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=tokenizer.vocabulary_size(),
                                             **{**TINY_BACKBONE, "dropout": 0.0})
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=32)
    classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=3, dropout=0.0,
                                                     preprocessor=preprocessor)
    classifier.save_to_preset(out_dir)
    rng = np.random.default_rng(1)
    lengths = rng.integers(8, 33, size=8)
    inputs = {"token_ids": rng.integers(5, tokenizer.vocabulary_size(), (8, 32)).astype("int32"),
              "segment_ids": (np.arange(32)[None] >= lengths[:, None] // 2).astype("int32"),
              "padding_mask": (np.arange(32)[None] < lengths[:, None]).astype("int32")}
    inputs["token_ids"] *= inputs["padding_mask"]
    inputs["segment_ids"] *= inputs["padding_mask"]
    labels = rng.integers(0, 3, size=8)
    model = keras_hub.models.BertTextClassifier.from_preset(out_dir, preprocessor=None)
    model.compile(optimizer=keras.optimizers.Adam(FULL_LR),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    head = model.get_layer("logits")
    head_kernel, head_bias = np.asarray(head.kernel), np.asarray(head.bias)  # before training
    logits, losses = [np.asarray(model(inputs))], []
    before = {v.path: np.asarray(v) for v in model.trainable_variables}
    for _ in range(FULL_STEPS):
        loss, _ = model.train_on_batch(inputs, np.eye(3, dtype="float32")[labels])
        losses.append(float(loss))
        logits.append(np.asarray(model(inputs)))
        if len(losses) == 1:  # what the first step changed, per variable
            np.savez(os.path.join(root, "full_step1_deltas.npz"),
                     **{v.path: np.asarray(v) - before[v.path]
                        for v in model.trainable_variables})
    np.savez(os.path.join(root, "full_steps.npz"), **inputs, labels=labels, lr=FULL_LR,
             losses=np.asarray(losses), logits=np.stack(logits), head_kernel=head_kernel,
             head_bias=head_bias)


def reference(root, vocab_file, pairs_file, export_from, save_from, named_presets):
    with open(pairs_file, encoding="utf-8") as f:
        pairs = json.load(f)
    build_preset(os.path.join(root, "tiny_keras"), vocab_file)
    presets = {"tiny_keras": os.path.join(root, "tiny_keras"),
               **dict(item.split("=", 1) for item in named_presets)}
    for name, preset in presets.items():
        tokens = trainer_token_arrays(preset, pairs, LENGTHS)
        if os.path.isfile(os.path.join(preset, "vocab.txt")):  # a Hugging Face folder
            # What tf_baseline did before following the folder's text rules: keras-hub's
            # converter (lowercase=do_lower_case, keras-hub's own casing and splitting).
            rules = token_arrays(keras_hub.models.BertTokenizer.from_preset(preset), pairs,
                                 LENGTHS)
            np.savez(os.path.join(root, f"{name}_keras_hub_rules.npz"), **rules)
        np.savez(os.path.join(root, f"{name}_tokens.npz"), **tokens)
        inputs = {field: tokens[f"{field}_{OUTPUT_LENGTH}"][OUTPUT_ROWS]
                  for field in ("token_ids", "segment_ids", "padding_mask")}
        np.savez(os.path.join(root, f"{name}_outputs.npz"), **model_outputs(preset, inputs))
    export_round_trip(export_from, os.path.join(root, "exported"),
                      os.path.join(root, "export.npz"))
    export_round_trip(export_from, os.path.join(root, "exported_nf4"),
                      os.path.join(root, "export_nf4.npz"), base_dtype="nf4")
    saved_round_trips(save_from, root, pairs)
    full_steps(root, vocab_file)


def attention_scores(root, vocab_file):
    """Rows of several lengths (one full), two segments each; the scores of every layer
    stacked [layers, B, heads, T, T]."""
    preset = os.path.join(root, "tiny_keras")
    build_preset(preset, vocab_file)
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    lengths = np.array([16, 9, 3, 12])
    positions = np.arange(16)[None]
    padding_mask = (positions < lengths[:, None]).astype("int32")
    rng = np.random.default_rng(2)
    inputs = {"token_ids": rng.integers(5, backbone.vocabulary_size, (4, 16)) * padding_mask,
              "segment_ids": (positions >= lengths[:, None] // 2) * padding_mask,
              "padding_mask": padding_mask}
    inputs = {name: value.astype("int32") for name, value in inputs.items()}
    embed = keras.Model(backbone.input, backbone.get_layer("embeddings_dropout").output)
    x, scores = embed(inputs), []
    for layer in backbone.transformer_layers:
        x, layer_scores = layer(x, padding_mask=padding_mask, return_attention_scores=True)
        scores.append(np.asarray(layer_scores))
    np.savez(os.path.join(root, "attention.npz"), **inputs, scores=np.stack(scores))


def tokenize(jobs_file):
    """Each job: a vocabulary file + lowercase flag (or a preset, tokenized as tf_baseline
    does), a pairs .json, an output .npz and the sequence lengths."""
    with open(jobs_file, encoding="utf-8") as f:
        jobs = json.load(f)
    for job in jobs:
        with open(job["pairs"], encoding="utf-8") as f:
            pairs = json.load(f)
        if "preset" in job:  # as the TF trainer tokenizes for it
            arrays = trainer_token_arrays(job["preset"], pairs, job["lengths"])
        else:  # keras-hub's own rules on a bare vocabulary
            tokenizer = keras_hub.models.BertTokenizer(vocabulary=job["vocabulary"],
                                                       lowercase=job["lowercase"])
            arrays = token_arrays(tokenizer, pairs, job["lengths"])
        np.savez(job["out"], **arrays)


XLMR_LENGTHS = (512, 64, 32)  # 32 cuts many sample pairs (a 400-piece vocabulary)


def xlmr_token_arrays(preset, pairs, lengths):
    """token_ids and padding_mask of keras-hub's XLMRobertaTextClassifierPreprocessor (its TF
    ops, in tf.data as tf_baseline runs it) for a keras-hub preset or a Hugging Face folder
    (keras-hub's converter reads its sentencepiece.bpe.model)."""
    arrays = {}
    for length in lengths:
        preprocessor = keras_hub.models.XLMRobertaTextClassifierPreprocessor.from_preset(
            preset, sequence_length=length)
        data = tf.data.Dataset.from_tensor_slices((pairs["premise"], pairs["hypothesis"]))
        data = data.batch(2048).map(lambda p, h: preprocessor(x=(p, h)))
        batches = list(data.as_numpy_iterator())
        assert "segment_ids" not in batches[0], "XLM-R's preprocessor drops segment ids"
        for field in ("token_ids", "padding_mask"):
            arrays[f"{field}_{length}"] = np.concatenate([b[field] for b in batches])
    return arrays


def xlmr_reference(root, hf_folder, pairs_file):
    from safetensors.numpy import load_file

    with open(pairs_file, encoding="utf-8") as f:
        pairs = json.load(f)
    keras.utils.set_random_seed(0)
    classifier = keras_hub.models.XLMRobertaTextClassifier.from_preset(hf_folder,
                                                                       num_classes=3)
    # keras-hub's converter leaves the task head fresh; give it the folder's.
    tensors = load_file(os.path.join(hf_folder, "model.safetensors"))
    for layer, name in (("pooled_dense", "classifier.dense"), ("logits", "classifier.out_proj")):
        classifier.get_layer(layer).set_weights([tensors[f"{name}.weight"].T,
                                                 tensors[f"{name}.bias"]])
    preset = os.path.join(root, "tiny_xlmr")
    classifier.save_to_preset(preset)
    tokens = xlmr_token_arrays(preset, pairs, XLMR_LENGTHS)
    np.savez(os.path.join(root, "xlmr_tokens.npz"), **tokens)
    np.savez(os.path.join(root, "xlmr_hf_tokens.npz"),
             **xlmr_token_arrays(hf_folder, pairs, XLMR_LENGTHS))
    reloaded = keras_hub.models.XLMRobertaTextClassifier.from_preset(preset, preprocessor=None)
    backbone = reloaded.backbone
    # Most pairs fill OUTPUT_LENGTH tokens here: six shorter ones of other lengths, two cut.
    lengths = tokens["padding_mask_512"].sum(axis=1)
    short = np.flatnonzero(lengths < OUTPUT_LENGTH)
    rows = [*short[::len(short) // 6][:6], *np.flatnonzero(lengths > OUTPUT_LENGTH)[:2]]
    inputs = {field: tokens[f"{field}_{OUTPUT_LENGTH}"][rows]
              for field in ("token_ids", "padding_mask")}
    probe = keras.Model(backbone.input, [backbone.get_layer(f"transformer_layer_{i}").output
                                         for i in range(backbone.num_layers)])
    np.savez(os.path.join(root, "xlmr_outputs.npz"), **inputs,
             logits=np.asarray(reloaded(inputs)), sequence_output=np.asarray(backbone(inputs)),
             hidden_states=np.stack([np.asarray(h) for h in probe(inputs)]))


XLMR_EXPORT_LENGTH = 64  # most sample pairs are longer (a 400-piece vocabulary)


def xlmr_export_round_trip(root, name, method, preset):
    """One xlmr_export setup (see the module docstring), in this process that holds both JAX
    and TensorFlow, as the export CLI."""
    import jax
    from flax import nnx

    from jax_lora.export import export_preset
    from jax_lora.lora import LORA_TARGETS, LoraConfig, trainable_filter
    from jax_lora.weights import load_pretrained
    from shared.data.watson import SAMPLE_DATA_DIR, load_train

    lora = LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS if method in ("lora", "dora")
                      else (), dora=method == "dora")
    pretrained = load_pretrained(preset, lora, seed=3)
    model = pretrained.model
    state = nnx.state(model, trainable_filter(lora, full=method == "full"))
    for index, (_, variable) in enumerate(nnx.to_flat_state(state)):
        value = variable.get_value()  # lora_b starts at 0: noise added, not only scaled
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(7), index), value.shape)
        variable.set_value(value * (1 + 0.2 * noise) + 0.1 * noise)
    nnx.update(model, state)
    frame = load_train(SAMPLE_DATA_DIR)
    lengths = pretrained.tokenizer(frame["premise"].tolist(), frame["hypothesis"].tolist(),
                                   512)["padding_mask"].sum(axis=1)
    # six rows padded to XLMR_EXPORT_LENGTH, four cut to it
    frame = frame.iloc[[*np.flatnonzero(lengths < XLMR_EXPORT_LENGTH)[:6],
                        *np.flatnonzero(lengths > XLMR_EXPORT_LENGTH)[:4]]]
    pairs = (frame["premise"].tolist(), frame["hypothesis"].tolist())
    inputs = pretrained.tokenizer(*pairs, sequence_length=XLMR_EXPORT_LENGTH)
    flax_logits = np.asarray(nnx.jit(lambda m: m(inputs["token_ids"], inputs["segment_ids"],
                                                 inputs["padding_mask"]))(model))
    out_dir = os.path.join(root, name)
    export_preset(model, pretrained.tokenizer, out_dir, sequence_length=XLMR_EXPORT_LENGTH)
    classifier = keras_hub.models.XLMRobertaTextClassifier.from_preset(out_dir)
    ids = {field: inputs[field] for field in ("token_ids", "padding_mask")}
    texts = pd.DataFrame({"premise": pairs[0], "hypothesis": pairs[1]})
    from_text = next(iter(text_dataset(texts, load_preprocessor(out_dir, None), len(texts),
                                       labels=False, drop_remainder=False)))
    np.savez(os.path.join(root, f"{name}.npz"), **ids, flax_logits=flax_logits,
             tf_logits_from_ids=np.asarray(classifier(ids)),
             tf_logits_from_text=np.asarray(classifier(from_text)),
             tf_token_ids_from_text=np.asarray(from_text["token_ids"]))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "reference":
        reference(args[0], args[1], args[2], args[3], args[4], args[5:])
    elif command == "tokenize":
        tokenize(args[0])
    elif command == "attention":
        attention_scores(args[0], args[1])
    elif command == "xlmr":
        xlmr_reference(args[0], args[1], args[2])
    elif command == "xlmr_tokenize":
        with open(args[1], encoding="utf-8") as f:
            np.savez(args[2], **xlmr_token_arrays(args[0], json.load(f), map(int, args[3:])))
    elif command == "xlmr_export":
        for setup in args[1:]:
            xlmr_export_round_trip(args[0], *setup.split("=", 2))
    else:
        sys.exit(f"unknown command {command}")
