"""Tests for seq2seq.tokenizer on real Multi30K text: special ids, lossless round trips,
joint vs separate models, checkpoint payloads and one-line errors."""

import unicodedata
from pathlib import Path

import pytest
import sentencepiece as spm

from seq2seq import corpus
from seq2seq.config import TokenizerConfig
from seq2seq.errors import Seq2SeqError
from seq2seq.tokenizer import (
    BOS,
    EOS,
    PAD,
    UNK,
    Tokenizers,
    Vocab,
    train_sentencepiece,
    train_tokenizers,
)

N_TRAIN = 5000   # training pairs used for the shared model (keeps the module fast)
VOCAB = 2000


@pytest.fixture(scope="module")
def _memo() -> dict:
    return {}


@pytest.fixture
def text(multi30k_dir, _memo) -> dict[str, list[str]]:
    """Real Multi30K lines: train subsets and the full validation split, both languages."""
    if "text" not in _memo:
        _memo["text"] = {
            "train.de": corpus.read_lines(multi30k_dir / "train.de.gz")[:N_TRAIN],
            "train.en": corpus.read_lines(multi30k_dir / "train.en.gz")[:N_TRAIN],
            "val.de": corpus.read_lines(multi30k_dir / "val.de.gz"),
            "val.en": corpus.read_lines(multi30k_dir / "val.en.gz"),
        }
    return _memo["text"]


@pytest.fixture
def joint(text, _memo, tmp_path_factory) -> tuple[Tokenizers, Path]:
    """One joint unigram model (the default type), trained once per module."""
    if "joint" not in _memo:
        expdir = tmp_path_factory.mktemp("joint")
        tok = train_tokenizers(text["train.de"], text["train.en"], TokenizerConfig(vocab_size=VOCAB), expdir)
        _memo["joint"] = (tok, expdir)
    return _memo["joint"]


def normalized(line: str) -> str:
    """What SentencePiece's default nmt_nfkc normalizer keeps of a line: NFKC, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", line).split())


def covered(line: str, vocab: Vocab) -> bool:
    return all(vocab.sp.piece_to_id(c) != UNK for c in set(normalized(line)) - {" "})


# ---------------------------------------------------------------------------- special ids


def test_special_ids_are_fixed(joint):
    tok, _ = joint
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    sp = tok.src.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD, UNK, BOS, EOS)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert all(sp.is_control(i) for i in (PAD, BOS, EOS)) and sp.is_unknown(UNK)


def test_vocab_has_exactly_the_requested_size(joint):
    tok, _ = joint
    assert len(tok.src) == len(tok.tgt) == VOCAB


def test_encode_adds_no_specials(joint, text):
    """collate adds BOS/EOS itself, so encode must not; and PAD never appears in real text."""
    tok, _ = joint
    for ids in tok.src.encode(text["val.de"] + text["val.en"]):
        assert ids, "a non-empty line encodes to at least one piece"
        assert not {PAD, BOS, EOS} & set(ids)


def test_unseen_characters_map_to_unk(joint):
    tok, _ = joint
    ids = tok.src.encode(["Ein Mann ☃ läuft."])[0]
    assert UNK in ids
    assert UNK not in tok.src.encode(["Ein Mann läuft."])[0]


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("lang", ["de", "en"])
def test_round_trip_on_real_validation_lines(joint, text, lang):
    tok, _ = joint
    lines = [ln for ln in text[f"val.{lang}"] if covered(ln, tok.src)]
    assert len(lines) >= 0.98 * len(text[f"val.{lang}"])  # the train subset covers nearly all
    decoded = tok.src.decode(tok.src.encode(lines))
    # Lossless up to SentencePiece's normalization (NFKC, whitespace) ...
    for d, ln in zip(decoded, lines):
        assert d in (ln, normalized(ln))
    # ... which leaves almost every real sentence untouched, so most lines come back exactly.
    exact = sum(d == ln for d, ln in zip(decoded, lines))
    assert exact >= 0.99 * len(lines)


def test_round_trip_of_tricky_text(joint):
    tok, _ = joint
    lines = ["Ein \"Mann\" (30) - groß, klein; Ärger: ja!", "a", "", "Äöü ß ÄÖÜ", "x  y"]
    assert tok.src.decode(tok.src.encode(lines)) == [normalized(ln) for ln in lines]


def test_decode_is_batched_and_order_preserving(joint, text):
    tok, _ = joint
    lines = text["val.en"][:50]
    ids = tok.src.encode(lines)
    assert tok.src.decode(ids) == [tok.src.decode([x])[0] for x in ids]
    assert tok.src.decode(ids[::-1]) == tok.src.decode(ids)[::-1]


def test_pieces(joint):
    tok, _ = joint
    ids = tok.src.encode(["Ein Hund"])[0]
    pieces = tok.src.pieces(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces).replace("▁", " ").strip() == "Ein Hund"


# ---------------------------------------------------------------------------- joint vs separate


SMALL = TokenizerConfig(type="bpe", vocab_size=400)


def test_joint_and_separate_models(text, tmp_path):
    de, en = text["train.de"][:2000], text["train.en"][:2000]

    sep = train_tokenizers(de, en, TokenizerConfig(type="bpe", vocab_size=400, joint=False), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.src.model", "spm.tgt.model"]
    assert not sep.joint
    assert sep.src.checksum != sep.tgt.checksum
    # Each model is trained on its own language: German words are whole pieces only in src.
    assert len(sep.src.encode(["Frauen"])[0]) < len(sep.tgt.encode(["Frauen"])[0])
    assert len(sep.tgt.encode(["women"])[0]) < len(sep.src.encode(["women"])[0])
    loaded = Tokenizers.load(tmp_path)
    assert not loaded.joint
    assert loaded.checksums() == sep.checksums()

    # Switching to joint in the same directory removes the stale separate models.
    jnt = train_tokenizers(de, en, TokenizerConfig(type="bpe", vocab_size=400, joint=True), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.model"]
    assert jnt.joint and jnt.src is jnt.tgt
    assert Tokenizers.load(tmp_path).joint

    # And back: the joint model is removed, so loading cannot pick the stale one.
    train_tokenizers(de, en, TokenizerConfig(type="bpe", vocab_size=400, joint=False), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.src.model", "spm.tgt.model"]
    assert not Tokenizers.load(tmp_path).joint


def test_training_is_deterministic(text, tmp_path):
    de, en = text["train.de"][:500], text["train.en"][:500]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = train_tokenizers(de, en, TokenizerConfig(vocab_size=300), tmp_path / "a")
    b = train_tokenizers(de, en, TokenizerConfig(vocab_size=300), tmp_path / "b")
    assert a.src.data == b.src.data


def test_type_setting_is_used(text, tmp_path):
    """BPE scores pieces by merge rank (whole numbers); unigram by log-probability."""
    lines = text["train.en"][:1000]
    scores = {}
    for t in ("bpe", "unigram"):
        train_sentencepiece(lines, TokenizerConfig(type=t, vocab_size=300), tmp_path / f"{t}.model")
        v = Vocab.load(tmp_path / f"{t}.model")
        scores[t] = [v.sp.get_score(i) for i in range(4, len(v))]  # after the special ids
    assert all(s == int(s) for s in scores["bpe"])
    assert not all(s == int(s) for s in scores["unigram"])


# ---------------------------------------------------------------------------- loading and payloads


def test_load_non_sentencepiece_file_names_it(tmp_path):
    bogus = tmp_path / "spm.model"
    bogus.write_text("this is not a model\n")
    with pytest.raises(Seq2SeqError) as e:
        Vocab.load(bogus)
    assert str(e.value) == f"{bogus}: not a SentencePiece model"


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(Seq2SeqError) as e:
        Vocab.load(tmp_path / "missing.model")
    assert str(tmp_path / "missing.model") in str(e.value)
    with pytest.raises(Seq2SeqError, match="spm.src.model"):
        Tokenizers.load(tmp_path)


def test_model_with_other_special_ids_is_refused(text, tmp_path):
    """A SentencePiece model trained elsewhere (default ids unk=0 bos=1 eos=2) would silently
    break padding and BOS/EOS handling, so it is refused."""
    out = tmp_path / "foreign.model"
    with out.open("wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(text["train.en"][:500]), model_writer=f,
                                       vocab_size=100, minloglevel=2)
    with pytest.raises(Seq2SeqError) as e:
        Vocab.load(out)
    assert str(out) in str(e.value) and "pad=0 unk=1 bos=2 eos=3" in str(e.value)


def test_payload_round_trip_joint(joint, text):
    tok, expdir = joint
    payload = tok.to_payload()
    assert payload["joint"] is True
    assert payload["src"] == payload["tgt"] == (expdir / "spm.model").read_bytes()
    v = Vocab.from_bytes(payload["src"], "checkpoint.pt")
    assert v.checksum == payload["checksums"]["src"] == tok.src.checksum
    assert v.encode(text["val.de"]) == tok.src.encode(text["val.de"])
    assert len(v) == len(tok.src)


def test_payload_round_trip_separate(text, tmp_path):
    sep = train_tokenizers(text["train.de"][:1000], text["train.en"][:1000],
                           TokenizerConfig(type="bpe", vocab_size=300, joint=False), tmp_path)
    payload = sep.to_payload()
    assert payload["joint"] is False
    src, tgt = Vocab.from_bytes(payload["src"], "ckpt"), Vocab.from_bytes(payload["tgt"], "ckpt")
    assert (src.checksum, tgt.checksum) == (payload["checksums"]["src"], payload["checksums"]["tgt"])
    assert src.encode(text["val.de"][:100]) == sep.src.encode(text["val.de"][:100])
    assert tgt.encode(text["val.en"][:100]) == sep.tgt.encode(text["val.en"][:100])


def test_from_bytes_names_the_given_source():
    with pytest.raises(Seq2SeqError, match=r"^exp/checkpoints/best.pt: not a SentencePiece model$"):
        Vocab.from_bytes(b"\x00\x01garbage", "exp/checkpoints/best.pt")


# ---------------------------------------------------------------------------- training errors


def test_vocab_too_large_is_a_user_error(tmp_path):
    lines = ["a b c", "b c d", "c d a"] * 10
    with pytest.raises(Seq2SeqError) as e:
        train_sentencepiece(lines, TokenizerConfig(vocab_size=5000), tmp_path / "spm.model")
    msg = str(e.value)
    assert "spm.model" in msg and "5000" in msg
    assert "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_vocab_too_large_through_train_tokenizers(tmp_path):
    with pytest.raises(Seq2SeqError, match="spm.src.model"):
        train_tokenizers(["ein hund"] * 20, ["a dog"] * 20,
                         TokenizerConfig(vocab_size=1000, joint=False), tmp_path)


def test_no_training_text_is_a_user_error(tmp_path):
    with pytest.raises(Seq2SeqError, match="spm.model"):
        train_sentencepiece(["", "   "], TokenizerConfig(vocab_size=100), tmp_path / "spm.model")


def test_empty_lines_are_ignored_in_training(text, tmp_path):
    lines = text["train.en"][:800]
    train_sentencepiece(lines, SMALL, tmp_path / "a.model")
    train_sentencepiece([x for ln in lines for x in (ln, "", "  ")], SMALL, tmp_path / "b.model")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
