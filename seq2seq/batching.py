"""The token-budget bucketing sampler, and collation of a split's examples into a Batch.

Usable without a model: nothing here imports model code.

Conventions: the source ends with EOS; `tgt_in` starts with BOS, `tgt_out` ends with
EOS; masks are bool and True at real tokens. An example's size is
max(len(src) + 1, len(tgt) + 1) and a batch costs batch_size * its largest size, which
never exceeds the token budget.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from seq2seq.dataset import Split
from seq2seq.errors import Seq2SeqError
from seq2seq.tokenizer import BOS, EOS, PAD


@dataclass
class Batch:
    src: Tensor          # (B, S) long, PAD after the end
    src_lengths: Tensor  # (B,) long, including EOS
    src_mask: Tensor     # (B, S) bool, True at real tokens
    tgt_in: Tensor       # (B, T) long: BOS y1 .. yn, PAD after
    tgt_out: Tensor      # (B, T) long: y1 .. yn EOS, PAD after
    tgt_mask: Tensor     # (B, T) bool
    index: Tensor        # (B,) long, position of each example in its split

    @property
    def ntokens(self) -> int:
        """Real target tokens (padding excluded), EOS included."""
        return int(self.tgt_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.src, self.src_lengths, self.src_mask, self.tgt_in,
                        self.tgt_out, self.tgt_mask, self.index)))


def pad(seqs: list[list[int]], value: int = PAD) -> Tensor:
    """(B, max_len) long tensor, right-padded."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate_src(src: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Source ids -> (src (B, S), src_lengths (B,), src_mask (B, S)); appends EOS."""
    seqs = [s + [EOS] for s in src]
    ids = pad(seqs)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    mask = torch.arange(ids.size(1))[None, :] < lengths[:, None]
    return ids, lengths, mask


def collate(split: Split, indices: list[int], reverse_target: bool = False) -> Batch:
    return collate_pieces([split.src[i] for i in indices], [split.tgt[i] for i in indices], indices, reverse_target)


def collate_pieces(src: list[list[int]], tgt: list[list[int]], indices: list[int],
                   reverse_target: bool = False) -> Batch:
    """The batch of these source and target pieces; `indices` are their places in the split.
    `reverse_target`: the targets right to left (a right_to_left model's batches)."""
    if reverse_target:
        tgt = [list(t)[::-1] for t in tgt]
    src_ids, src_lengths, src_mask = collate_src(src)
    tgt_in = pad([[BOS] + list(t) for t in tgt])
    tgt_out = pad([list(t) + [EOS] for t in tgt])
    tgt_mask = tgt_out != PAD
    return Batch(src_ids, src_lengths, src_mask, tgt_in, tgt_out, tgt_mask,
                 torch.tensor(indices, dtype=torch.long))


def make_batches(order: list[int], sizes: list[int], batch_tokens: int) -> list[list[int]]:
    """Greedy packing of examples in `order` so that len(batch) * max size <= budget."""
    batches, current, longest = [], [], 0
    for i in order:
        size = sizes[i]
        if size > batch_tokens:
            raise Seq2SeqError(f"an example of {size} tokens exceeds the batch budget of {batch_tokens} "
                               "tokens; raise train.batch_tokens or lower data.max_len")
        if current and (len(current) + 1) * max(longest, size) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


class TokenBatchSampler:
    """Length-bucketed token-budget batches, reshuffled each epoch from the seed.

    Works from the sizes alone, as tensors (a few bytes a pair, whatever the corpus size).
    Same seed -> same batches. Every example appears exactly once per epoch (with
    `world_size` > 1 the batch list is padded by wrapping around so that every rank gets
    the same number of batches; rank r takes batches r, r + world, ...). The state is the
    epoch and the position in it, so a resumed run continues mid-epoch exactly.
    """

    def __init__(self, sizes: Tensor | list[int], batch_tokens: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if len(sizes) == 0:
            raise Seq2SeqError("the training split is empty after filtering")
        sizes = torch.as_tensor(sizes)
        self.sizes = sizes.to(torch.int16 if int(sizes.max()) < 1 << 15 else torch.int32)  # (n,)
        self.batch_tokens, self.seed = batch_tokens, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, tuple[Tensor, list[tuple[int, int]]]] | None = None

    def _epoch(self, epoch: int) -> tuple[Tensor, list[tuple[int, int]]]:
        """This rank's batches of an epoch: (order (n,) int32, [(start, end)] into order)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        # Sort by size with random tie-breaking: buckets of equal length, new each epoch. Sizes
        # are few distinct values: one stable sort by size puts each size's examples together
        # in index order, and each bucket is then sorted stably by noise. torch.rand's floats
        # are multiples of 2^-24, so as integers they sort alike (and faster). The order is
        # (size, noise, index).
        keys = torch.rand(len(self.sizes), generator=g).mul_(1 << 24).to(torch.int32)  # (n,) exact
        counts = torch.bincount(self.sizes)                   # (max size + 1,)
        values = counts.nonzero().squeeze(1).tolist()        # the sizes present, ascending
        counts = counts[values].tolist()
        order = _group_by_size(self.sizes, values, counts)   # (n,) int32
        start = 0
        for c in counts:
            members = order[start:start + c]                  # (c,) one size, ascending indices
            order[start:start + c] = members[torch.sort(keys[members], stable=True).indices]
            start += c
        bounds = run_batches(values, counts, self.batch_tokens)
        perm = torch.randperm(len(bounds), generator=g).tolist()
        bounds = [bounds[p] for p in perm]
        if self.world_size > 1:  # wrap around (cyclically: there may be fewer batches than ranks)
            total = -(-len(bounds) // self.world_size) * self.world_size
            bounds = [bounds[i % len(bounds)] for i in range(total)][self.rank::self.world_size]
        return order, bounds

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of an epoch as lists of example indices."""
        order, bounds = self._epoch(epoch)
        return [order[a:b].tolist() for a, b in bounds]

    def next_batch(self) -> list[int]:
        """The next batch; `epoch` advances as soon as an epoch's last batch is handed out,
        so an epoch limit can be checked before fetching."""
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._epoch(self.epoch))
        order, bounds = self._cached[1]
        a, b = bounds[self.position]
        self.position += 1
        if self.position == len(bounds):
            self.epoch, self.position = self.epoch + 1, 0
        return order[a:b].tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _group_by_size(sizes: Tensor, values: list[int], counts: list[int], chunk: int = 1 << 20) -> Tensor:
    """(n,) int32: the indices ordered by size, ascending indices within a size (a stable sort),
    taken a chunk of the corpus at a time: a sort's int64 indices for the whole corpus would
    stay in the heap after they are freed and count against training's peak memory."""
    order = torch.empty(len(sizes), dtype=torch.int32)
    next_free = dict(zip(values, itertools.accumulate([0, *counts[:-1]])))  # next free position of each size
    for lo in range(0, len(sizes), chunk):
        part = sizes[lo:lo + chunk]
        ranked = torch.sort(part, stable=True)
        found, seen = torch.unique_consecutive(ranked.values, return_counts=True)
        start = 0
        for v, c in zip(found.tolist(), seen.tolist()):
            order[next_free[v]:next_free[v] + c] = ranked.indices[start:start + c] + lo
            next_free[v] += c
            start += c
    return order


def run_batches(values: list[int], counts: list[int], batch_tokens: int) -> list[tuple[int, int]]:
    """make_batches for examples sorted by size, given as runs (counts[r] examples of size
    values[r], values ascending), without a step per example: a batch with k examples takes
    examples of size v while k + 1 <= budget // v. Returns [(start, end)] positions in the
    sorted order: the same batches as make_batches."""
    if values and values[-1] > batch_tokens:
        raise Seq2SeqError(f"an example of {values[-1]} tokens exceeds the batch budget of {batch_tokens} "
                           "tokens; raise train.batch_tokens or lower data.max_len")
    bounds, start, run, used = [], 0, 0, 0  # used: examples of run `run` already in batches
    while run < len(values):
        k = 0
        while run < len(values) and (room := batch_tokens // values[run] - k) > 0:
            take = min(room, counts[run] - used)
            k, used = k + take, used + take
            if used < counts[run]:
                break  # the batch is full
            run, used = run + 1, 0
        bounds.append((start, start + k))
        start += k
    return bounds


def eval_batches(sizes: list[int] | Tensor, batch_tokens: int) -> list[list[int]]:
    """Deterministic batches sorted by size (fast decoding); callers restore order by index."""
    sizes = torch.as_tensor(sizes).tolist()
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    clamped = [min(s, batch_tokens) for s in sizes]  # an over-long sentence gets a batch of its own
    return make_batches(order, clamped, batch_tokens)
