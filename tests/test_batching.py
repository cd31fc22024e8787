"""Tests for seq2seq.batching: the token-budget bucketing sampler, collate and eval batches.

Sampler invariants run on the real Multi30K training split (encoded once per module);
the mechanics of collate and the edge cases use small hand-made data.
"""

import dataclasses
import random
import statistics
from pathlib import Path

import pytest
import torch

from seq2seq import config
from seq2seq.batching import (
    Batch,
    TokenBatchSampler,
    collate,
    collate_src,
    eval_batches,
    make_batches,
)
from seq2seq.dataset import EncodedSplit
from seq2seq.errors import Seq2SeqError
from seq2seq.tokenizer import BOS, EOS, PAD

RECIPE = Path(__file__).parent.parent / "recipes" / "multi30k_de_en.toml"
BUDGET = 2000


@pytest.fixture(scope="module")
def _memo() -> dict:
    return {}


@pytest.fixture
def train(multi30k_dir, _memo, tmp_path_factory) -> EncodedSplit:
    """The real Multi30K de-en training split, encoded with a small BPE model (once per module)."""
    if "train" not in _memo:
        from seq2seq.prepare import prepare
        cfg = config.load(RECIPE, ["tokenizer.type=bpe", "tokenizer.vocab_size=1000"])
        prepared = prepare(cfg, tmp_path_factory.mktemp("prepared"), str(multi30k_dir), log=lambda _: None)
        _memo["train"] = prepared.splits["train"]
    return _memo["train"]


def cost(batch: list[int], sizes: list[int]) -> int:
    return len(batch) * max(sizes[i] for i in batch)


def one_epoch(sampler: TokenBatchSampler) -> list[list[int]]:
    """Batches from next_batch() until the epoch counter moves."""
    epoch, out = sampler.epoch, []
    while sampler.epoch == epoch:
        out.append(sampler.next_batch())
    return out


def reference_epoch_batches(sizes: list[int], budget: int, seed: int, epoch: int, rank: int = 0,
                            world: int = 1) -> list[list[int]]:
    """The sampler as it was written before it worked from tensors (Python lists and a Python
    sort): the batches that published training curves were made of."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    noise = torch.rand(len(sizes), generator=g).tolist()
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], noise[i]))
    batches = make_batches(order, sizes, budget)
    perm = torch.randperm(len(batches), generator=g).tolist()
    batches = [batches[p] for p in perm]
    if world > 1:
        total = -(-len(batches) // world) * world
        batches = [batches[i % len(batches)] for i in range(total)][rank::world]
    return batches


@pytest.mark.parametrize("seed", range(20))
def test_run_batches_are_the_greedy_batches(seed):
    """One step per run of equal sizes gives what packing example by example gives."""
    from seq2seq.batching import run_batches
    rng = random.Random(seed)
    budget = rng.choice([1, 7, 50, 333, 2000])
    sizes = sorted(rng.randint(1, min(budget, rng.choice([3, 40, 200]))) for _ in range(rng.randint(1, 3000)))
    expected = make_batches(list(range(len(sizes))), sizes, budget)
    values, counts = torch.unique_consecutive(torch.tensor(sizes), return_counts=True)
    got = run_batches(values.tolist(), counts.tolist(), budget)
    assert [list(range(a, b)) for a, b in got] == expected


# ---------------------------------------------------------------------------- the sampler, real data


@pytest.mark.parametrize("budget, seed, epoch, rank, world", [(2000, 1, 0, 0, 1), (2000, 1, 3, 0, 1),
                                                              (6000, 7, 1, 1, 2), (333, 2, 0, 0, 1)])
def test_batches_are_those_of_the_reference_sampler(train, budget, seed, epoch, rank, world):
    """The Multi30K recipe trains on exactly the batches it did before the sampler went to tensors."""
    sizes = train.sizes().tolist()
    sampler = TokenBatchSampler(train.sizes(), budget, seed=seed, rank=rank, world_size=world)
    sampler.load_state_dict({"epoch": epoch, "position": 0})
    expected = reference_epoch_batches(sizes, budget, seed, epoch, rank, world)
    assert sampler.epoch_batches(epoch) == expected
    assert one_epoch(sampler)[:50] == expected[:50]


def test_every_example_exactly_once_per_epoch(train):
    sizes = train.sizes().tolist()
    sampler = TokenBatchSampler(sizes, BUDGET, seed=1)
    for epoch in range(2):
        batches = one_epoch(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(train))), f"epoch {epoch}"
    assert sampler.epoch == 2


def test_no_batch_above_the_token_budget(train):
    sizes = train.sizes().tolist()
    for budget in (200, BUDGET, 5000):
        batches = TokenBatchSampler(sizes, budget, seed=3).epoch_batches(0)
        assert all(cost(b, sizes) <= budget for b in batches)
        # and the budget is used: little padding, batches nearly full
        total = sum(cost(b, sizes) for b in batches)
        assert sum(sizes) / total > 0.95
        assert total / (len(batches) * budget) > 0.9


def test_collated_batches_stay_within_budget(train):
    """The size counted by the sampler is what collate really builds, BOS/EOS included."""
    sampler = TokenBatchSampler(train.sizes(), BUDGET, seed=1)
    for indices in sampler.epoch_batches(0)[:100]:
        b = collate(train, indices)
        assert b.src.numel() <= BUDGET and b.tgt_in.numel() <= BUDGET and b.tgt_out.numel() <= BUDGET


def test_same_seed_same_batches_and_new_order_per_seed_and_epoch(train):
    sizes = train.sizes().tolist()
    a = TokenBatchSampler(sizes, BUDGET, seed=1)
    b = TokenBatchSampler(sizes, BUDGET, seed=1)
    c = TokenBatchSampler(sizes, BUDGET, seed=2)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(5) == b.epoch_batches(5)
    assert a.epoch_batches(0) != c.epoch_batches(0)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    # New buckets each epoch, not just a new order of the same batches.
    assert {tuple(x) for x in a.epoch_batches(0)} != {tuple(x) for x in a.epoch_batches(1)}
    # The order of batches is shuffled, not sorted by length.
    longest = [max(sizes[i] for i in x) for x in a.epoch_batches(0)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_batches_are_length_bucketed(train):
    sizes = train.sizes().tolist()
    batches = TokenBatchSampler(sizes, BUDGET, seed=1).epoch_batches(0)
    spread = statistics.mean(max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in batches)
    # Random batches of the same shapes, for comparison.
    order = list(range(len(sizes)))
    random.Random(0).shuffle(order)
    rand, k = [], 0
    for b in batches:
        rand.append(order[k:k + len(b)])
        k += len(b)
    rand_spread = statistics.mean(max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in rand if len(b) > 1)
    assert spread < 0.1 * rand_spread


def test_state_dict_resumes_mid_epoch(train):
    sizes = train.sizes().tolist()
    a = TokenBatchSampler(sizes, BUDGET, seed=4)
    n = len(a.epoch_batches(0))
    for _ in range(n // 2):
        a.next_batch()
    state = a.state_dict()
    assert state == {"epoch": 0, "position": n // 2}

    b = TokenBatchSampler(sizes, BUDGET, seed=4)
    b.load_state_dict(dict(state))
    # identical remaining sequence, across the epoch boundary
    for _ in range(n):
        assert a.next_batch() == b.next_batch()
    assert a.state_dict() == b.state_dict()
    assert a.epoch == 1


def test_resume_continues_from_saved_state_not_from_the_start(train):
    sizes = train.sizes().tolist()
    a = TokenBatchSampler(sizes, BUDGET, seed=4)
    first = [a.next_batch() for _ in range(3)]
    b = TokenBatchSampler(sizes, BUDGET, seed=4)
    b.load_state_dict(a.state_dict())
    assert b.next_batch() == a.next_batch()
    assert b.next_batch() not in first


def test_epoch_advances_right_after_the_last_batch(train):
    sampler = TokenBatchSampler(train.sizes(), BUDGET, seed=1)
    n = len(sampler.epoch_batches(0))
    for _ in range(n - 1):
        sampler.next_batch()
    assert sampler.state_dict() == {"epoch": 0, "position": n - 1}
    last = sampler.next_batch()
    assert last == sampler.epoch_batches(0)[-1]
    assert sampler.state_dict() == {"epoch": 1, "position": 0}
    assert sampler.next_batch() == sampler.epoch_batches(1)[0]


def test_two_ranks_share_an_epoch(train):
    sizes = train.sizes().tolist()
    whole = TokenBatchSampler(sizes, BUDGET, seed=1).epoch_batches(0)
    ranks = [TokenBatchSampler(sizes, BUDGET, seed=1, rank=r, world_size=2).epoch_batches(0) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == -(-len(whole) // 2)
    # disjoint except for the wrap-around padding, and together the whole epoch
    got = [tuple(b) for r in ranks for b in r]
    assert set(got) == {tuple(b) for b in whole}
    assert len(got) - len(set(got)) == len(whole) % 2
    assert {i for r in ranks for b in r for i in b} == set(range(len(sizes)))
    # per-rank next_batch counts the epoch on the rank's own share
    s = TokenBatchSampler(sizes, BUDGET, seed=1, rank=1, world_size=2)
    assert one_epoch(s) == ranks[1]


@pytest.mark.parametrize("n_batches, world", [(1, 2), (1, 4), (2, 8), (3, 4), (5, 2)])
def test_ranks_get_equal_counts_even_with_few_batches(n_batches, world):
    """Unequal counts would hang distributed training, so every rank must get the same number."""
    sizes = [10] * n_batches  # budget 10: one example per batch
    per_rank = [TokenBatchSampler(sizes, 10, seed=1, rank=r, world_size=world).epoch_batches(0)
                for r in range(world)]
    assert {len(b) for b in per_rank} == {-(-n_batches // world)}
    assert {i for b in per_rank for x in b for i in x} == set(range(n_batches))


def test_empty_training_split_is_a_user_error():
    with pytest.raises(Seq2SeqError, match="empty"):
        TokenBatchSampler([], BUDGET, seed=1)


def test_example_above_the_budget_names_batch_tokens(train):
    sizes = train.sizes().tolist()
    budget = max(sizes) - 1
    sampler = TokenBatchSampler(sizes, budget, seed=1)
    with pytest.raises(Seq2SeqError) as e:
        sampler.next_batch()
    msg = str(e.value)
    assert "train.batch_tokens" in msg and str(budget) in msg and str(max(sizes)) in msg


def test_budget_equal_to_the_longest_example_works(train):
    sizes = train.sizes().tolist()
    longest = max(sizes)
    batches = TokenBatchSampler(sizes, longest, seed=1).epoch_batches(0)
    assert all(cost(b, sizes) <= longest for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))


# ---------------------------------------------------------------------------- collate


@pytest.fixture
def tiny() -> EncodedSplit:
    src = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    tgt = [[20, 21], [22, 23, 24, 25], [26], [27, 28, 29]]
    return EncodedSplit("tiny", src, tgt, ["a", "b", "c", "d"])


def test_sizes_count_the_added_token(tiny):
    assert tiny.sizes().tolist() == [4, 5, 6, 4]
    assert len(tiny) == 4


def test_collate_by_hand(tiny):
    b = collate(tiny, [1, 2])
    assert b.src.tolist() == [[8, EOS, PAD, PAD, PAD, PAD], [9, 10, 11, 12, 13, EOS]]
    assert b.src_lengths.tolist() == [2, 6]
    assert b.tgt_in.tolist() == [[BOS, 22, 23, 24, 25], [BOS, 26, PAD, PAD, PAD]]
    assert b.tgt_out.tolist() == [[22, 23, 24, 25, EOS], [26, EOS, PAD, PAD, PAD]]
    assert b.src_mask.tolist() == [[True, True, False, False, False, False], [True] * 6]
    assert b.tgt_mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert b.index.tolist() == [1, 2]
    assert b.ntokens == 7


def check_batch(b: Batch, split: EncodedSplit, indices: list[int]) -> None:
    n = len(indices)
    src_len = [len(split.src[i]) + 1 for i in indices]
    tgt_len = [len(split.tgt[i]) + 1 for i in indices]
    assert b.src.shape == b.src_mask.shape == (n, max(src_len))
    assert b.tgt_in.shape == b.tgt_out.shape == b.tgt_mask.shape == (n, max(tgt_len))
    assert b.src.dtype == b.tgt_in.dtype == b.tgt_out.dtype == torch.long
    assert b.src_mask.dtype == b.tgt_mask.dtype == torch.bool
    assert b.src_lengths.tolist() == src_len
    assert b.index.tolist() == indices
    for row, i in enumerate(indices):
        s, t = split.src[i], split.tgt[i]
        assert b.src[row, : len(s)].tolist() == s and b.src[row, len(s)] == EOS
        assert b.tgt_in[row, 0] == BOS and b.tgt_in[row, 1: len(t) + 1].tolist() == t
        assert b.tgt_out[row, : len(t)].tolist() == t and b.tgt_out[row, len(t)] == EOS
    # masks True exactly at real tokens, padding 0 everywhere else
    src_pos = torch.arange(b.src.size(1))[None, :]
    tgt_pos = torch.arange(b.tgt_in.size(1))[None, :]
    assert torch.equal(b.src_mask, src_pos < torch.tensor(src_len)[:, None])
    assert torch.equal(b.tgt_mask, tgt_pos < torch.tensor(tgt_len)[:, None])
    assert (b.src[~b.src_mask] == PAD).all() and (b.src[b.src_mask] != PAD).all()
    assert (b.tgt_in[~b.tgt_mask] == PAD).all() and (b.tgt_out[~b.tgt_mask] == PAD).all()
    assert (b.tgt_out[b.tgt_mask] != PAD).all()
    assert b.ntokens == sum(tgt_len)


def test_collate_real_batches(train):
    sampler = TokenBatchSampler(train.sizes(), BUDGET, seed=2)
    batches = sampler.epoch_batches(0)
    for indices in batches[:5] + [max(batches, key=len), min(batches, key=len)]:
        check_batch(collate(train, indices), train, indices)


def test_collate_keeps_the_given_order(train):
    indices = [17, 3, len(train) - 1, 0]
    check_batch(collate(train, indices), train, indices)


def test_collate_src_alone():
    src, lengths, mask = collate_src([[4, 5], [6]])
    assert src.tolist() == [[4, 5, EOS], [6, EOS, PAD]]
    assert lengths.tolist() == [3, 2]
    assert mask.tolist() == [[True, True, True], [True, True, False]]


def test_collate_empty_sentences():
    split = EncodedSplit("e", [[], [5]], [[], [6, 7]])
    b = collate(split, [0, 1])
    assert b.src.tolist() == [[EOS, PAD], [5, EOS]]
    assert b.tgt_in.tolist() == [[BOS, PAD, PAD], [BOS, 6, 7]]
    assert b.tgt_out.tolist() == [[EOS, PAD, PAD], [6, 7, EOS]]
    assert b.ntokens == 4


def test_batch_to_moves_every_field(tiny):
    """Every tensor goes to the device (the meta device stands in for a GPU), shapes and dtypes kept."""
    b = collate(tiny, [0, 3])
    moved = b.to("meta")
    names = ("src", "src_lengths", "src_mask", "tgt_in", "tgt_out", "tgt_mask", "index")
    assert [f.name for f in dataclasses.fields(Batch)] == list(names)  # a new field must be added here
    for name in names:
        t, m = getattr(b, name), getattr(moved, name)
        assert t.device.type == "cpu" and m.device.type == "meta", name
        assert (m.shape, m.dtype) == (t.shape, t.dtype), name


# ---------------------------------------------------------------------------- make_batches / eval_batches


def test_make_batches_packs_greedily_in_order():
    sizes = [3, 3, 3, 5, 5, 2]
    assert make_batches(list(range(6)), sizes, 10) == [[0, 1, 2], [3, 4], [5]]
    assert make_batches([5, 0, 1, 2, 3, 4], sizes, 10) == [[5, 0, 1], [2, 3], [4]]


def test_eval_batches_cover_all_once_sorted_by_size(train):
    sizes = train.sizes().tolist()
    batches = eval_batches(sizes, BUDGET)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(sizes)))
    assert [sizes[i] for i in flat] == sorted(sizes)
    assert all(cost(b, sizes) <= BUDGET for b in batches)
    assert eval_batches(sizes, BUDGET) == batches  # deterministic


def test_eval_batches_put_an_over_long_example_in_its_own_batch():
    sizes = [5, 30, 4, 6, 100, 5]
    batches = eval_batches(sizes, 20)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert [1] in batches and [4] in batches  # both over the budget of 20, each alone
    for b in batches:
        if len(b) > 1:
            assert cost(b, sizes) <= 20


@pytest.mark.parametrize("chunk", [1, 777, 1 << 20])
def test_grouping_by_size_chunk_by_chunk_is_a_stable_sort(chunk):
    """The sampler groups a large corpus by size a chunk at a time (to bound its memory); the
    result must be the whole corpus's stable sort, across chunk boundaries too."""
    from seq2seq.batching import _group_by_size
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(3, 40, (5_000,), generator=g).to(torch.int16)
    counts = torch.bincount(sizes)
    values = counts.nonzero().squeeze(1).tolist()
    order = _group_by_size(sizes, values, counts[values].tolist(), chunk=chunk)
    assert order.dtype == torch.int32
    assert torch.equal(order.long(), torch.sort(sizes, stable=True).indices)
