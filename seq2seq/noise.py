"""Training-time noise on a batch's pieces: subword sampling and word dropout.

Both are regularizers for small corpora (Kudo 2018, "Subword Regularization"; Gal & Ghahramani
2016 and Sennrich & Zhang 2019 for word dropout). They act between the split and `collate`,
on the training batches only: validation and test always see the best segmentation, whole.

Every draw comes from a generator seeded by (train.seed, step, rank), so a batch's noise is a
function of where the run is, not of what ran before: resuming from a checkpoint draws exactly
the noise the uninterrupted run would have drawn, with no state to save. Nothing is cached, so
memory does not grow with the corpus: a batch's pieces are decoded back to text and sampled
again when the batch is built. That costs SentencePiece's n-best search per sentence, which grows
with train.subword_nbest (measured in docs/performance.md).

A sampled segmentation has more pieces than the best one, so a batch can go a little over
train.batch_tokens (the sampler sized it by the best segmentations).

Subword sampling draws one of a sentence's `nbest` best unigram segmentations, with
probability proportional to P(segmentation)^alpha (Kudo's l-best sampling). The draw is ours,
not SentencePiece's own sampler, whose generator is per thread and cannot be reseeded.

Word dropout works on piece *types* per sentence: a drawn type is replaced by UNK at every
place it occurs in that sentence, so the model cannot read a dropped piece off its other
occurrences (Gal & Ghahramani's argument for dropping types, not tokens). On the target side
only the decoder's inputs are replaced; the labels it must predict stay whole.
"""

from __future__ import annotations

import math

import torch

from seq2seq.batching import Batch, collate_pieces
from seq2seq.config import TrainConfig
from seq2seq.dataset import Split
from seq2seq.tokenizer import EOS, UNK, Tokenizers, Vocab

FIRST_NORMAL_ID = EOS + 1  # pad, unk, bos, eos are never dropped


class Noise:
    """Builds noisy training batches; `active` is False when the config asks for none."""

    def __init__(self, cfg: TrainConfig, tokenizers: Tokenizers, rank: int = 0, reverse_target: bool = False):
        self.seed, self.rank, self.reverse_target = cfg.seed, rank, reverse_target
        self.alpha, self.nbest = cfg.subword_alpha, cfg.subword_nbest
        self.src_p, self.tgt_p = cfg.src_word_dropout, cfg.tgt_word_dropout
        self.samplers = (SubwordSampler(tokenizers.src, self.alpha, self.nbest),
                         SubwordSampler(tokenizers.tgt, self.alpha, self.nbest)) if self.alpha > 0 else None

    @property
    def active(self) -> bool:
        return self.samplers is not None or self.src_p > 0 or self.tgt_p > 0

    def generator(self, step: int) -> torch.Generator:
        # one stream per (seed, step, rank); the constants only spread the three apart
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 8191 + self.rank) % (1 << 63))

    def batch(self, split: Split, indices: list[int], step: int) -> Batch:
        """The batch of `indices` with this step's noise."""
        g = self.generator(step)
        src = [list(split.src[i]) for i in indices]
        tgt = [list(split.tgt[i]) for i in indices]
        if self.samplers is not None:
            src = self.samplers[0].sample(src, g)
            tgt = self.samplers[1].sample(tgt, g)
        batch = collate_pieces(src, tgt, indices, self.reverse_target)  # sampled in reading order
        if self.src_p > 0:
            batch.src = drop_types(batch.src, batch.src_mask, self.src_p, g)
        if self.tgt_p > 0:
            keep_bos = torch.zeros_like(batch.tgt_mask)
            keep_bos[:, 1:] = batch.tgt_mask[:, 1:]  # tgt_in[:, 0] is BOS; tgt_mask covers tgt_in's tokens too
            batch.tgt_in = drop_types(batch.tgt_in, keep_bos, self.tgt_p, g)
        return batch


class SubwordSampler:
    """Kudo's l-best sampling over one unigram SentencePiece model."""

    def __init__(self, vocab: Vocab, alpha: float, nbest: int):
        self.vocab, self.alpha, self.nbest = vocab, alpha, nbest
        sp = vocab.sp
        self.scores = torch.tensor([sp.get_score(i) for i in range(sp.get_piece_size())],
                                   dtype=torch.float64)  # log P(piece)

    def sample(self, seqs: list[list[int]], g: torch.Generator) -> list[list[int]]:
        """One drawn segmentation per sequence of piece ids (the text they spell is kept)."""
        texts = self.vocab.decode(seqs)
        candidates = self.vocab.sp.nbest_encode(texts, nbest_size=self.nbest, out_type=int)
        # every option of every sentence scored at once: log P(segmentation) = sum of its pieces'
        flat = [o for options in candidates for o in options]
        lengths = torch.tensor([len(o) for o in flat])
        owner = torch.repeat_interleave(torch.arange(len(flat)), lengths)
        logp = torch.zeros(len(flat), dtype=torch.float64).index_add_(
            0, owner, self.scores[torch.tensor([i for o in flat for i in o], dtype=torch.long)])
        width = max(len(options) for options in candidates)
        table = torch.full((len(seqs), width), float("-inf"), dtype=torch.float64)  # (N, options)
        row = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor([len(o) for o in candidates]))
        column = torch.cat([torch.arange(len(o)) for o in candidates])
        table[row, column] = self.alpha * logp
        picks = torch.multinomial(torch.softmax(table, 1), 1, generator=g).squeeze(1).tolist()
        return [seq if len(options) < 2 or UNK in seq else list(options[pick])
                for seq, options, pick in zip(seqs, candidates, picks)]


def drop_types(ids: torch.Tensor, mask: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """ids (B, T) with each row's piece types replaced by UNK with probability p, where mask (B, T)
    is True; every occurrence of a dropped type in a row goes."""
    if not 0.0 <= p < 1.0 or math.isnan(p):
        raise ValueError(f"word dropout probability must be in [0, 1), got {p}")
    vocab = int(ids.max()) + 1
    draw = torch.rand(ids.size(0), vocab, generator=g) < p  # (B, V): this row drops this type
    dropped = draw.gather(1, ids) & mask & (ids >= FIRST_NORMAL_ID)
    return ids.masked_fill(dropped, UNK)
