"""Training-time noise (seq2seq.noise) on real Multi30K text: subword sampling draws other
segmentations of the same text, word dropout drops piece types at the asked rate and never
touches the labels, and a batch's noise depends on the step alone."""

from dataclasses import replace

import pytest
import torch

from seq2seq import config, corpus
from seq2seq.batching import collate
from seq2seq.config import TrainConfig, TokenizerConfig
from seq2seq.dataset import EncodedSplit
from seq2seq.errors import Seq2SeqError
from seq2seq.noise import Noise, drop_types
from seq2seq.tokenizer import BOS, EOS, PAD, UNK, train_tokenizers

N_LINES = 3000


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A joint unigram model trained on Multi30K train lines, and those lines as a split."""
    from conftest import multi30k_path
    data = multi30k_path()
    de = corpus.read_lines(data / "train.de.gz")[:N_LINES]
    en = corpus.read_lines(data / "train.en.gz")[:N_LINES]
    tokenizers = train_tokenizers(de, en, TokenizerConfig(vocab_size=2000),
                                  tmp_path_factory.mktemp("noise"))
    split = EncodedSplit("train", tokenizers.src.encode(de), tokenizers.tgt.encode(en))
    return tokenizers, split


def noise(tokenizers, **settings) -> Noise:
    return Noise(replace(TrainConfig(), **settings), tokenizers)


INDICES = list(range(0, 400, 2))


def test_sampling_draws_other_segmentations_that_spell_the_same_text(task):
    tokenizers, split = task
    best = collate(split, INDICES)
    sampled = noise(tokenizers, subword_alpha=0.1).batch(split, INDICES, step=7)
    vocab = tokenizers.src

    def lines(ids, mask):
        return vocab.decode([row[m].tolist() for row, m in zip(ids, mask)])

    assert lines(sampled.src, sampled.src_mask) == lines(best.src, best.src_mask)
    assert lines(sampled.tgt_out, sampled.tgt_mask) == lines(best.tgt_out, best.tgt_mask)
    changed = sum(not torch.equal(a[m], b[n]) for a, m, b, n in
                  zip(sampled.src, sampled.src_mask, best.src, best.src_mask))
    assert changed > len(INDICES) // 2  # at alpha 0.1 most sentences get another segmentation
    assert sampled.tgt_in[:, 0].eq(BOS).all()
    assert torch.equal(sampled.tgt_in[:, 1:][sampled.tgt_mask[:, 1:]],
                       sampled.tgt_out[:, :-1][sampled.tgt_mask[:, 1:]])  # still the shifted labels


def test_a_high_alpha_keeps_to_the_best_segmentation(task):
    tokenizers, split = task
    best = collate(split, INDICES)
    sampled = noise(tokenizers, subword_alpha=50.0).batch(split, INDICES, step=7)
    same = sum(torch.equal(a[m], b[n]) for a, m, b, n in
               zip(sampled.src, sampled.src_mask, best.src, best.src_mask))
    assert same >= 0.9 * len(INDICES)


def test_noise_is_a_function_of_the_step(task):
    tokenizers, split = task
    n = noise(tokenizers, subword_alpha=0.1, src_word_dropout=0.2, tgt_word_dropout=0.2)
    a, b, c = (n.batch(split, INDICES, step) for step in (3, 3, 4))
    assert torch.equal(a.src, b.src) and torch.equal(a.tgt_in, b.tgt_in)
    assert not (a.src.shape == c.src.shape and torch.equal(a.src, c.src))
    other_rank = Noise(replace(TrainConfig(), subword_alpha=0.1, src_word_dropout=0.2, tgt_word_dropout=0.2),
                       tokenizers, rank=1)
    d = other_rank.batch(split, INDICES, 3)  # another rank draws other noise for its own batches
    assert not (d.src.shape == a.src.shape and torch.equal(d.src, a.src))
    huge_seed = Noise(replace(TrainConfig(), seed=2**62, src_word_dropout=0.2), tokenizers)
    assert huge_seed.batch(split, INDICES, 10**9).src.shape[0] == len(INDICES)  # no overflow


def test_word_dropout_drops_types_at_the_asked_rate_and_keeps_the_labels(task):
    tokenizers, split = task
    best = collate(split, INDICES)
    p = 0.3
    dropped = noise(tokenizers, src_word_dropout=p, tgt_word_dropout=p).batch(split, INDICES, step=11)
    assert torch.equal(dropped.tgt_out, best.tgt_out) and torch.equal(dropped.tgt_mask, best.tgt_mask)
    for new, old, mask in ((dropped.src, best.src, best.src_mask),
                           (dropped.tgt_in[:, 1:], best.tgt_in[:, 1:], best.tgt_mask[:, 1:])):
        changed = new != old
        assert new[changed].eq(UNK).all()
        assert not changed[~mask].any()                    # padding untouched
        assert not changed[old == EOS].any() and not changed[old == BOS].any()
        types = dropped_types = 0
        for row_new, row_old, row_mask in zip(new, old, mask):
            for piece in row_old[row_mask].unique().tolist():
                if piece == EOS:
                    continue
                at = (row_old == piece) & row_mask
                gone = row_new[at].eq(UNK)
                assert gone.all() or not gone.any()      # a type goes everywhere in its sentence, or nowhere
                types += 1
                dropped_types += int(gone.all()) if piece != UNK else 0
        assert types > 1000
        assert abs(dropped_types / types - p) < 0.05       # binomial sd here is about 0.01
    assert dropped.tgt_in[:, 0].eq(BOS).all()


def test_only_the_asked_side_is_dropped(task):
    tokenizers, split = task
    best = collate(split, INDICES)
    src_only = noise(tokenizers, src_word_dropout=0.5).batch(split, INDICES, step=1)
    assert not torch.equal(src_only.src, best.src) and torch.equal(src_only.tgt_in, best.tgt_in)
    tgt_only = noise(tokenizers, tgt_word_dropout=0.5).batch(split, INDICES, step=1)
    assert torch.equal(tgt_only.src, best.src) and not torch.equal(tgt_only.tgt_in, best.tgt_in)
    assert not noise(tokenizers).active


def test_drop_types_on_a_hand_made_row():
    ids = torch.tensor([[7, 8, 7, 9, EOS, PAD]])
    mask = ids != PAD
    out = drop_types(ids, mask, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, ids)
    out = drop_types(ids, mask, 0.9999, torch.Generator().manual_seed(0))
    assert out.tolist() == [[UNK, UNK, UNK, UNK, EOS, PAD]]


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(Seq2SeqError, match="train.subword_alpha.*unigram"):
        config.load(None, ["tokenizer.type='bpe'", "train.subword_alpha=0.1"])
    with pytest.raises(Seq2SeqError, match="train.src_word_dropout"):
        config.load(None, ["train.src_word_dropout=1.0"])
    with pytest.raises(Seq2SeqError, match="train.subword_nbest"):
        config.load(None, ["train.subword_nbest=1"])
