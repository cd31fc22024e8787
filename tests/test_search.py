"""Tests for seq2seq.search with scripted step functions (fairseq's idea): no model involved.

Two stubs:
- TableStep: a hand-written probability table per (step, previous token), so results are checked
  by hand. Its state is just the step count.
- HashStep: random but deterministic; the distribution depends on a per-row sentence id and on the
  whole prefix through a rolling hash kept in the state, so a wrong reorder changes the results.
"""

import math

import pytest
import torch

from seq2seq.search import (
    Hypothesis,
    beam_search,
    coverage_penalty,
    greedy,
    length_penalty,
    top_k,
)

BOS, EOS, A, B = 0, 1, 2, 3  # tiny vocabulary of the hand-written tables


# ---------------------------------------------------------------------------- stubs


class TableStep:
    """log_probs[t, prev] from a (T, V, V) probability table; steps past T reuse the last one."""

    def __init__(self, probs: torch.Tensor, attn: torch.Tensor | None = None):
        self.log_probs = probs.log()  # (T, V, V)
        self.attn = attn  # (T, V, S) or None

    def __call__(self, tokens, t):
        i = min(t, self.log_probs.size(0) - 1)
        attn = None if self.attn is None else self.attn[i, tokens]  # (N, S)
        return self.log_probs[i, tokens], t + 1, attn


def keep_state(state, index):
    return state


def table(rows: dict, steps: int = 6, vocab: int = 4, default: dict | None = None) -> torch.Tensor:
    """(steps, V, V) probabilities: rows[(t, prev)] = {token: p}; other rows use `default` (EOS)."""
    probs = torch.zeros(steps, vocab, vocab)
    for t in range(steps):
        for prev in range(vocab):
            for token, p in rows.get((t, prev), default or {EOS: 1.0}).items():
                probs[t, prev, token] = p
    return probs


class HashStep:
    """Deterministic random decoder; state = (sentence id (N,), rolling prefix hash (N,))."""

    def __init__(self, vocab=10, src_len=5, buckets=64, sentences=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(sentences, buckets, vocab, generator=g) * 2  # (sentences, buckets, V)
        logits[..., EOS] += 1.0  # sentences of varied, mostly short length
        logits[..., BOS] = float("-inf")  # BOS is never generated
        self.log_probs = logits.log_softmax(dim=-1)
        self.attn = torch.randn(buckets, src_len, generator=g).softmax(dim=-1)  # (buckets, S)
        self.buckets = buckets

    def __call__(self, tokens, state):
        sentence, prefix = state
        prefix = (prefix * 31 + tokens + 1) % 1_000_003  # (N,)
        bucket = prefix % self.buckets
        return self.log_probs[sentence, bucket], (sentence, prefix), self.attn[bucket]

    def rescore(self, sentence: int, tokens: list[int]) -> float:
        """Teacher-forced log-prob of tokens + EOS for one sentence."""
        state = (torch.tensor([sentence]), torch.zeros(1, dtype=torch.long))
        total = 0.0
        for prev, token in zip([BOS] + tokens, tokens + [EOS]):
            log_probs, state, _ = self(torch.tensor([prev]), state)
            total += float(log_probs[0, token])
        return total


def hash_reorder(state, index):
    sentence, prefix = state
    return sentence[index], prefix[index]


def hash_state(sentences: list[int], k: int = 1):
    sentence = torch.tensor(sentences).repeat_interleave(k)  # (N,)
    return sentence, torch.zeros_like(sentence)


def run_beam(stub, sentences, max_lens, k, **kwargs):
    return beam_search(
        stub, hash_reorder, hash_state(sentences, k), len(sentences), k, BOS, EOS, torch.tensor(max_lens),
        **kwargs,
    )  # fmt: skip


def run_greedy(stub, sentences, max_lens, **kwargs):
    return greedy(stub, hash_state(sentences), len(sentences), BOS, EOS, torch.tensor(max_lens), **kwargs)


def same(h1: Hypothesis, h2: Hypothesis) -> bool:
    return h1.tokens == h2.tokens and h1.log_prob == h2.log_prob and h1.score == h2.score


def has_repeated_ngram(tokens: list[int], n: int) -> bool:
    ngrams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(ngrams) != len(set(ngrams))


# The greedy first choice A (0.6) leads to an EOS of 0.4; B (0.4) ends with 0.9.
TRAP = table(
    {(0, BOS): {A: 0.6, B: 0.4}, (1, A): {EOS: 0.4, A: 0.3, B: 0.3}, (1, B): {EOS: 0.9, A: 0.05, B: 0.05}}
)


# ---------------------------------------------------------------------------- hand-checked tables


def test_beam_finds_what_greedy_misses():
    [g] = greedy(TableStep(TRAP), 0, 1, BOS, EOS, torch.tensor([5]))
    assert g.tokens == [A]
    assert g.log_prob == pytest.approx(math.log(0.6 * 0.4), abs=1e-6)
    assert g.score == g.log_prob

    [hyps] = beam_search(TableStep(TRAP), keep_state, 0, 1, 2, BOS, EOS, torch.tensor([5]), nbest=2)
    assert [h.tokens for h in hyps] == [[B], [A]]
    assert hyps[0].log_prob == pytest.approx(math.log(0.4 * 0.9), abs=1e-6)
    assert hyps[1].log_prob == pytest.approx(math.log(0.6 * 0.4), abs=1e-6)
    assert [h.score for h in hyps] == [h.log_prob for h in hyps]


def test_max_length_forces_eos_with_its_own_log_prob():
    probs = table({}, default={A: 0.6, B: 0.39, EOS: 0.01})
    expected = 3 * math.log(0.6) + math.log(0.01)
    [g] = greedy(TableStep(probs), 0, 1, BOS, EOS, torch.tensor([3]))
    assert g.tokens == [A, A, A]
    assert g.log_prob == pytest.approx(expected, abs=1e-5)
    [hyps] = beam_search(TableStep(probs), keep_state, 0, 1, 2, BOS, EOS, torch.tensor([3]), nbest=2)
    assert hyps[0].tokens == [A, A, A]
    assert hyps[0].log_prob == pytest.approx(expected, abs=1e-5)
    assert all(len(h.tokens) == 3 for h in hyps)


def test_zero_max_length_gives_empty_hypothesis():
    probs = table({}, default={A: 0.9, EOS: 0.1})
    [g] = greedy(TableStep(probs), 0, 1, BOS, EOS, torch.tensor([0]))
    [[h]] = beam_search(TableStep(probs), keep_state, 0, 1, 3, BOS, EOS, torch.tensor([0]))
    for hyp in (g, h):
        assert hyp.tokens == [] and hyp.log_prob == pytest.approx(math.log(0.1), abs=1e-6)


def test_min_length_bans_eos():
    probs = table({}, default={EOS: 0.5, A: 0.3, B: 0.2})
    [g] = greedy(TableStep(probs), 0, 1, BOS, EOS, torch.tensor([5]))
    assert g.tokens == []
    expected = 2 * math.log(0.3) + math.log(0.5)  # the model's own log-probs, not renormalised
    [g] = greedy(TableStep(probs), 0, 1, BOS, EOS, torch.tensor([5]), min_lens=torch.tensor([2]))
    assert g.tokens == [A, A] and g.log_prob == pytest.approx(expected, abs=1e-6)
    [hyps] = beam_search(
        TableStep(probs), keep_state, 0, 1, 2, BOS, EOS, torch.tensor([5]), min_lens=torch.tensor([2]),
        nbest=2,
    )  # fmt: skip
    assert hyps[0].tokens == [A, A] and hyps[0].log_prob == pytest.approx(expected, abs=1e-6)
    assert all(len(h.tokens) >= 2 for h in hyps)


def test_no_repeat_ngram_prevents_repeated_bigram():
    probs = table({}, default={A: 0.7, B: 0.2, EOS: 0.1})
    [g] = greedy(TableStep(probs), 0, 1, BOS, EOS, torch.tensor([4]))
    assert g.tokens == [A, A, A, A]
    [g] = greedy(TableStep(probs), 0, 1, BOS, EOS, torch.tensor([4]), no_repeat_ngram=2)
    assert g.tokens == [A, A, B, A]  # the second (A, A) is banned
    assert g.log_prob == pytest.approx(3 * math.log(0.7) + math.log(0.2) + math.log(0.1), abs=1e-5)
    [hyps] = beam_search(
        TableStep(probs), keep_state, 0, 1, 3, BOS, EOS, torch.tensor([6]), nbest=3, no_repeat_ngram=2
    )
    assert len(hyps) == 3
    assert not any(has_repeated_ngram(h.tokens, 2) for h in hyps)


def test_length_penalty_formula():
    assert length_penalty(5, 1.0) == pytest.approx(10 / 6)
    assert length_penalty(3, 0.6) == pytest.approx((8 / 6) ** 0.6)
    assert length_penalty(7, 0.0) == 1.0
    assert torch.allclose(length_penalty(torch.tensor([1.0, 7.0]), 2.0), torch.tensor([1.0, 4.0]))


def test_length_penalty_in_scores():
    stub = HashStep()
    for hyps in run_beam(stub, [0, 1, 2], [6, 6, 6], 3, nbest=3, length_penalty_alpha=0.8):
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / length_penalty(len(h.tokens) + 1, 0.8), abs=1e-6)


def test_coverage_penalty_formula():
    attn_sum = torch.tensor([[0.5, 2.0, 0.0], [0.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    penalty = coverage_penalty(attn_sum, mask, 0.2)
    assert penalty[0] == pytest.approx(0.2 * math.log(0.5))  # over-attention caps at 1, padding ignored
    assert penalty[1] == pytest.approx(0.2 * math.log(1e-9), rel=1e-4)  # finite for unattended words
    assert torch.equal(coverage_penalty(attn_sum, mask, 0.0), torch.zeros(2))


def test_coverage_changes_ranking():
    # Path A attends both real source words once; path B attends word 0 twice and word 1 half.
    # The third source position is padding: never attended, never penalised.
    attn = torch.zeros(6, 4, 3)
    attn[0, BOS] = torch.tensor([0.5, 0.5, 0.0])
    attn[1, A] = torch.tensor([0.5, 0.5, 0.0])
    attn[1, B] = torch.tensor([1.0, 0.0, 0.0])
    src_mask = torch.tensor([[True, True, False]])

    def search(beta):
        [hyps] = beam_search(
            TableStep(TRAP, attn), keep_state, 0, 1, 2, BOS, EOS, torch.tensor([5]),
            coverage_beta=beta, src_mask=src_mask, nbest=2,
        )  # fmt: skip
        return hyps

    assert [h.tokens for h in search(0.0)] == [[B], [A]]
    hyps = search(1.0)
    assert [h.tokens for h in hyps] == [[A], [B]]
    assert hyps[0].score == pytest.approx(math.log(0.24), abs=1e-6)  # coverage [1, 1]: no penalty
    assert hyps[1].score == pytest.approx(math.log(0.36) + math.log(0.5), abs=1e-6)
    assert hyps[1].log_prob == pytest.approx(math.log(0.36), abs=1e-6)  # log_prob stays the model's


# ---------------------------------------------------------------------------- invariants


MAX_LENS = [1, 3, 5, 8, 12]


@pytest.mark.parametrize("kwargs", [{}, {"no_repeat_ngram": 2, "min_lens": torch.tensor([0, 1, 2, 3, 4])}])
def test_beam_one_equals_greedy(kwargs):
    stub = HashStep()
    sentences = [0, 1, 2, 3, 4]
    greedy_hyps = run_greedy(stub, sentences, MAX_LENS, **kwargs)
    beam_hyps = run_beam(stub, sentences, MAX_LENS, 1, **kwargs)
    assert len({len(h.tokens) for h in greedy_hyps}) > 2  # the case is not trivial
    for g, [b] in zip(greedy_hyps, beam_hyps):
        assert g.tokens == b.tokens
        assert g.log_prob == b.log_prob


def test_ties_go_to_the_lower_index_like_argmax():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, -1.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    values, indices = top_k(scores, 2)
    assert indices.tolist() == [[1, 2], [0, 1]]
    assert values.tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert torch.equal(indices[:, 0], scores.argmax(dim=1))
    # Uniform rows tie everywhere: beam 1 must still pick what greedy picks.
    uniform = table({}, default={EOS: 1 / 3, A: 1 / 3, B: 1 / 3})
    [g] = greedy(TableStep(uniform), 0, 1, BOS, EOS, torch.tensor([3]), min_lens=torch.tensor([2]))
    [[b]] = beam_search(
        TableStep(uniform), keep_state, 0, 1, 1, BOS, EOS, torch.tensor([3]), min_lens=torch.tensor([2])
    )
    assert g.tokens == b.tokens == [A, A] and g.log_prob == b.log_prob


def test_nbest_sorted_and_distinct():
    stub = HashStep()
    sentences = [0, 1, 2, 3]
    full = run_beam(stub, sentences, [6] * 4, 4, nbest=4, length_penalty_alpha=0.6)
    for sentence, hyps in zip(sentences, full):
        assert len(hyps) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 4
        for h in hyps:  # state followed its beam: log_prob is the model's score of the tokens
            assert h.log_prob == pytest.approx(stub.rescore(sentence, h.tokens), abs=1e-5)
    top2 = run_beam(stub, sentences, [6] * 4, 4, nbest=2, length_penalty_alpha=0.6)
    for hyps, two in zip(full, top2):
        assert all(same(a, b) for a, b in zip(hyps[:2], two)) and len(two) == 2


@pytest.mark.parametrize("k", [2, 3])
def test_batched_beam_equals_one_at_a_time(k):
    stub = HashStep()
    sentences = [0, 1, 2, 3, 4]
    src_mask = torch.tensor([[True] * n + [False] * (5 - n) for n in [5, 3, 4, 2, 5]])  # (B, S)
    min_lens = torch.tensor([0, 1, 0, 2, 1])
    kwargs = dict(length_penalty_alpha=0.6, coverage_beta=0.2, nbest=k, no_repeat_ngram=2)
    batched = run_beam(stub, sentences, MAX_LENS, k, src_mask=src_mask, min_lens=min_lens, **kwargs)
    for i, s in enumerate(sentences):
        one = slice(i, i + 1)
        [alone] = run_beam(
            stub, [s], MAX_LENS[one], k, src_mask=src_mask[one], min_lens=min_lens[one], **kwargs
        )
        assert len(alone) == len(batched[i])
        assert all(same(a, b) for a, b in zip(alone, batched[i]))


def test_sentences_leaving_the_batch_in_any_order_keep_their_results():
    """Unsorted max lengths (one of them 0): sentences finish out of order and leave the batch."""
    stub = HashStep()
    sentences, max_lens = [3, 0, 4, 1, 2, 5], [9, 2, 0, 12, 1, 6]
    src_mask = torch.tensor([[True] * n + [False] * (5 - n) for n in [5, 2, 4, 3, 5, 1]])  # (B, S)
    kwargs = dict(nbest=3, coverage_beta=0.3, length_penalty_alpha=0.6, return_attention=True)
    batched = run_beam(stub, sentences, max_lens, 3, src_mask=src_mask, **kwargs)
    for i, s in enumerate(sentences):
        [alone] = run_beam(stub, [s], max_lens[i : i + 1], 3, src_mask=src_mask[i : i + 1], **kwargs)
        assert len(alone) == len(batched[i])
        for a, b in zip(alone, batched[i]):
            assert same(a, b) and torch.equal(a.attention, b.attention)
            assert len(b.tokens) <= max_lens[i]


def test_batched_greedy_equals_one_at_a_time():
    stub = HashStep()
    sentences = [0, 1, 2, 3, 4]
    batched = run_greedy(stub, sentences, MAX_LENS, no_repeat_ngram=2)
    for i, s in enumerate(sentences):
        [alone] = run_greedy(stub, [s], MAX_LENS[i : i + 1], no_repeat_ngram=2)
        assert same(alone, batched[i])
        assert alone.log_prob == pytest.approx(stub.rescore(s, alone.tokens), abs=1e-5)


def reference_beam(stub: HashStep, sentence: int, max_len: int, k: int, alpha: float) -> list[tuple]:
    """The same rule for one sentence, beam by beam in plain Python.

    Returns [(score, tokens, log_prob)], best first.
    """
    beams = [(0.0, [], hash_state([sentence]))]
    finished = []
    for t in range(max_len + 1):
        candidates = []
        for log_prob, tokens, state in beams:
            log_probs, next_state, _ = stub(torch.tensor([tokens[-1] if tokens else BOS]), state)
            for word, value in enumerate(log_probs[0].tolist()):
                if t < max_len or word == EOS:
                    candidates.append((log_prob + value, tokens + [word], next_state))
        top = sorted(candidates, key=lambda c: -c[0])[: 2 * k]
        for log_prob, tokens, _ in top[:k]:
            if tokens[-1] == EOS:
                finished.append((log_prob / length_penalty(len(tokens), alpha), tokens[:-1], log_prob))
        if len(finished) >= k or t == max_len:
            return sorted(finished, key=lambda f: -f[0])
        beams = [c for c in top if c[1][-1] != EOS][:k]


@pytest.mark.parametrize("k", [3, 4])
def test_beam_matches_plain_python_reference(k):
    stub = HashStep()
    for i, hyps in enumerate(run_beam(stub, [0, 1, 2, 3, 4], MAX_LENS, k, nbest=k, length_penalty_alpha=0.6)):
        expected = reference_beam(stub, i, MAX_LENS[i], k, 0.6)
        assert [h.tokens for h in hyps] == [tokens for _, tokens, _ in expected][:k]
        expected_log_probs = [log_prob for _, _, log_prob in expected][:k]
        assert [h.log_prob for h in hyps] == pytest.approx(expected_log_probs, abs=1e-5)


def test_beam_wider_than_vocabulary_returns_only_possible_hypotheses():
    probs = table({}, default={A: 0.9, EOS: 0.1})
    [hyps] = beam_search(TableStep(probs), keep_state, 0, 1, 6, BOS, EOS, torch.tensor([1]), nbest=6)
    assert [h.tokens for h in hyps] == [[], [A]]  # 0.1 > 0.9 * 0.1; nothing else is possible
    assert all(math.isfinite(h.log_prob) for h in hyps)


def test_reorder_stays_within_each_sentence_and_drops_finished_ones():
    stub = HashStep()
    k, sentences = 3, [0, 1, 2, 3]
    indices, rows_seen = [], []

    def recording_step(tokens, state):
        rows_seen.append(tokens.numel())
        return stub(tokens, state)

    def recording_reorder(state, index):
        indices.append(index.clone())
        return hash_reorder(state, index)

    max_lens = torch.tensor([4, 9, 2, 7])
    beam_search(recording_step, recording_reorder, hash_state(sentences, k), 4, k, BOS, EOS, max_lens)
    assert indices
    rows = len(sentences) * k
    for index in indices:
        assert index.numel() <= rows and index.numel() % k == 0
        old_sentence = (index // k).view(-1, k)  # (A', K) the old sentence of each new row
        assert bool((old_sentence == old_sentence[:, :1]).all())  # a sentence's beams stay together
        assert bool((old_sentence[1:, 0] > old_sentence[:-1, 0]).all())  # in order, none twice
        rows = index.numel()
    assert any(not torch.equal(index, torch.arange(index.numel())) for index in indices)  # beams did move
    assert rows_seen[0] == 12 and rows_seen[-1] < 12  # finished sentences left the batch
    assert rows_seen == sorted(rows_seen, reverse=True)


def test_greedy_dropping_finished_rows_changes_nothing_but_the_work():
    stub = HashStep()
    sentences, rows_seen = [0, 1, 2, 3, 4], []

    def recording_step(tokens, state):
        rows_seen.append(tokens.numel())
        return stub(tokens, state)

    kwargs = dict(no_repeat_ngram=2, return_attention=True, min_lens=torch.tensor([0, 1, 0, 2, 1]))
    frozen = run_greedy(stub, sentences, MAX_LENS, **kwargs)
    dropped = run_greedy(recording_step, sentences, MAX_LENS, reorder=hash_reorder, **kwargs)
    assert all(same(a, b) and torch.equal(a.attention, b.attention) for a, b in zip(frozen, dropped))
    assert rows_seen[0] == 5 and rows_seen[-1] < 5


def test_return_attention_shapes():
    stub = HashStep(src_len=5)
    for h in run_greedy(stub, [0, 1, 2], [2, 4, 6]):
        assert h.attention is None
    for h in run_greedy(stub, [0, 1, 2], [2, 4, 6], return_attention=True):
        assert h.attention.shape == (len(h.tokens) + 1, 5)
    for hyps in run_beam(stub, [0, 1, 2], [2, 4, 6], 3, nbest=3, return_attention=True):
        for h in hyps:
            assert h.attention.shape == (len(h.tokens) + 1, 5)
            assert torch.allclose(h.attention.sum(dim=1), torch.ones(len(h.tokens) + 1))
    for h in run_beam(stub, [0, 1, 2], [2, 4, 6], 3)[0]:
        assert h.attention is None


def test_attention_rows_belong_to_the_hypothesis():
    attn = torch.zeros(6, 4, 3)
    attn[0, BOS] = torch.tensor([0.5, 0.5, 0.0])
    attn[1, A] = torch.tensor([0.0, 0.5, 0.5])
    attn[1, B] = torch.tensor([1.0, 0.0, 0.0])
    [hyps] = beam_search(
        TableStep(TRAP, attn), keep_state, 0, 1, 2, BOS, EOS, torch.tensor([5]), nbest=2,
        return_attention=True,
    )  # fmt: skip
    assert hyps[0].attention.tolist() == [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]  # B, EOS
    assert hyps[1].attention.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]  # A, EOS


# ---------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beam_size": 0},
        {"nbest": 0},
        {"nbest": 4},
        {"coverage_beta": 0.5},  # no src_mask
        {"min_lens": torch.tensor([9])},  # above max_lens
        {"max_lens": torch.tensor([3, 3])},  # wrong shape
    ],
)
def test_bad_arguments_raise(kwargs):
    args = dict(beam_size=3, max_lens=torch.tensor([5])) | kwargs
    beam_size, max_lens = args.pop("beam_size"), args.pop("max_lens")
    with pytest.raises(ValueError):
        beam_search(TableStep(TRAP), keep_state, 0, 1, beam_size, BOS, EOS, max_lens, **args)


def test_attention_requested_without_attention_raises():
    with pytest.raises(ValueError, match="attention"):
        greedy(TableStep(TRAP), 0, 1, BOS, EOS, torch.tensor([5]), return_attention=True)
