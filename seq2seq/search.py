"""Greedy and beam search as plain functions over a step function and a state reorder.

Search never sees the model. The caller hands over
  step(tokens, state) -> (log_probs, state, attention)   one decoder step for N rows
  reorder(state, index) -> state                          row i of the new state is old row index[i]
and the decoder state itself, which search only passes around (fairseq's design). The step
function returns already log-softmaxed scores; the score adjusters below (min length, forced EOS
at max length, no-repeat n-grams) only set disallowed tokens to -inf and are shared by greedy and
beam search, so the log-probabilities of a hypothesis are always the model's own.

Shapes: B sentences, K beams, N rows (B for greedy, B*K for beams, row b*K + k is beam k of
sentence b), V vocabulary, S source positions, t tokens generated so far. Finished sentences
leave the batch, so inside the loops A <= B counts the sentences still running (A*K rows).

Ties are broken toward the lower index everywhere (argmax in greedy, `top_k` in beam search), so
beam search with K=1 reproduces greedy exactly.
"""

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

NEG_INF = float("-inf")


class StepFn(Protocol):
    def __call__(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any, Tensor | None]:
        """tokens (N,) long, the previous token of each row -> log_probs (N, V), new state,
        attention weights (N, S) or None."""
        ...


class ReorderFn(Protocol):
    def __call__(self, state: Any, index: Tensor) -> Any:
        """index (M,) long, M <= the current number of rows; new row i takes old row index[i].

        Beam search keeps each sentence's K rows together and never moves a beam to another
        sentence. While M equals the current row count, index[i] // K == i // K, so per-sentence
        data (the encoder memory) needs no reorder. A shorter index means finished sentences
        have left the batch: per-sentence data must then shrink to the rows `index` as well."""
        ...


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and without EOS
    log_prob: float  # the model's summed log-probabilities of tokens + EOS
    score: float  # ranking score: log_prob / length_penalty + coverage_penalty
    attention: Tensor | None  # (len(tokens) + 1, S) one row per generated token incl. EOS


# ---------------------------------------------------------------------------- penalties


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT length penalty ((5 + |Y|) / 6) ** alpha; length counts the tokens plus EOS."""
    return ((5 + length) / 6) ** alpha


def coverage_penalty(attn_sum: Tensor, src_mask: Tensor, beta: float) -> Tensor:
    """GNMT coverage penalty beta * sum_i log(min(sum_j a_ij, 1)) over real source positions.

    attn_sum (N, S) is the attention summed over generated tokens, src_mask (N, S) is True at real
    tokens. Returns (N,). The clamp at 1e-9 keeps a never-attended position finite.
    """
    if beta == 0:
        return attn_sum.new_zeros(attn_sum.size(0))  # (N,)
    per_position = attn_sum.clamp(min=1e-9, max=1.0).log()  # (N, S)
    return beta * per_position.masked_fill(~src_mask, 0.0).sum(dim=1)  # (N,)


# ---------------------------------------------------------------------------- score adjusters


def ban_repeated_ngrams(log_probs: Tensor, history: Tensor, n: int) -> Tensor:
    """Ban any token that would complete an n-gram already present in the row's history.

    log_probs (N, V), history (N, t) generated tokens -> (N, V).
    """
    t = history.size(1)
    if t < n:
        return log_probs
    ngrams = history.unfold(1, n, 1)  # (N, t-n+1, n) every n-gram generated so far
    suffix = history[:, t - n + 1 :].unsqueeze(1)  # (N, 1, n-1) the last n-1 tokens
    repeats = (ngrams[:, :, :-1] == suffix).all(dim=2)  # (N, t-n+1) this n-gram would repeat
    rows, starts = repeats.nonzero(as_tuple=True)  # (R,) each
    if rows.numel() == 0:
        return log_probs
    log_probs = log_probs.clone()  # adjusters never write into the caller's tensor
    log_probs[rows, ngrams[rows, starts, -1]] = NEG_INF
    return log_probs  # (N, V)


def ban_eos_before_min_len(log_probs: Tensor, step: int, min_lens: Tensor, eos: int) -> Tensor:
    """Rows with fewer than min_lens (N,) tokens may not end yet."""
    too_short = step < min_lens  # (N,)
    if not bool(too_short.any()):
        return log_probs
    log_probs = log_probs.clone()
    log_probs[too_short, eos] = NEG_INF
    return log_probs  # (N, V)


def force_eos_at_max_len(log_probs: Tensor, step: int, max_lens: Tensor, eos: int) -> Tensor:
    """Rows that already have max_lens (N,) tokens may only end; EOS keeps its own log-prob."""
    at_max = step >= max_lens  # (N,)
    if not bool(at_max.any()):
        return log_probs
    eos_log_probs = log_probs[at_max, eos]  # (M,)
    log_probs = log_probs.clone()
    log_probs[at_max] = NEG_INF
    log_probs[at_max, eos] = eos_log_probs
    return log_probs  # (N, V)


def adjust_log_probs(
    log_probs: Tensor,
    step: int,
    history: Tensor,
    max_lens: Tensor,
    min_lens: Tensor | None,
    eos: int,
    no_repeat_ngram: int,
) -> Tensor:
    """Apply every adjuster for rows that have `step` tokens; all per-row arguments are (N, ...)."""
    if no_repeat_ngram > 0:
        log_probs = ban_repeated_ngrams(log_probs, history, no_repeat_ngram)
    if min_lens is not None:
        log_probs = ban_eos_before_min_len(log_probs, step, min_lens, eos)
    return force_eos_at_max_len(log_probs, step, max_lens, eos)


# ---------------------------------------------------------------------------- shared helpers


def top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best entries of each row, best first, ties going to the lower index (like argmax).

    torch.topk leaves the order of ties unspecified; this makes it exact so that beam search with
    K=1 and greedy pick the same token. A tie across the cut is rare with real scores, so only those
    rows take the slower exact path; ties at -inf are left as they are (such beams never finish).
    scores (N, M) -> values (N, k), indices (N, k).
    """
    values, indices = scores.topk(min(k + 1, scores.size(1)), dim=1)  # (N, k+1) one spare to see the cut
    cut_tied = torch.zeros_like(values[:, 0], dtype=torch.bool)  # (N,)
    if values.size(1) > k:
        cut_tied = (values[:, k] == values[:, k - 1]) & torch.isfinite(values[:, k - 1])
    values, indices = values[:, :k], indices[:, :k]  # (N, k)
    if bool(cut_tied.any()):
        rows = cut_tied.nonzero().squeeze(1)  # (R,)
        indices = indices.index_put((rows,), _lowest_tied(scores[rows], values[rows, -1:], k))
    indices = indices.sort(dim=1).values  # (N, k) index ascending ...
    values, order = scores.gather(1, indices).sort(dim=1, descending=True, stable=True)  # ... then value
    return values, indices.gather(1, order)


def _lowest_tied(scores: Tensor, kth: Tensor, k: int) -> Tensor:
    """Indices (R, k) of the entries above the k-th value kth (R, 1), filled up with the lowest tied ones."""
    above = scores > kth  # (R, M) fewer than k per row
    tied = scores == kth  # (R, M)
    room = k - above.sum(dim=1, keepdim=True)  # (R, 1) places left for tied entries
    keep = above | (tied & (tied.cumsum(dim=1) <= room))  # (R, M) exactly k per row
    return keep.nonzero()[:, 1].view(-1, k)  # (R, k)


def _require_attention(attn: Tensor | None) -> Tensor:
    if attn is None:
        raise ValueError("return_attention and coverage_beta > 0 need a step function that returns attention")
    return attn


def _check_lengths(batch_size: int, max_lens: Tensor, min_lens: Tensor | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_lens.shape != (batch_size,):
        raise ValueError(f"max_lens must have shape ({batch_size},), got {tuple(max_lens.shape)}")
    if bool((max_lens < 0).any()):
        raise ValueError("max_lens must be >= 0")
    if min_lens is not None:
        if min_lens.shape != (batch_size,):
            raise ValueError(f"min_lens must have shape ({batch_size},), got {tuple(min_lens.shape)}")
        if bool((min_lens > max_lens).any()):
            raise ValueError("min_lens must not exceed max_lens")


# ---------------------------------------------------------------------------- greedy


def greedy(
    step: StepFn,
    state: Any,
    batch_size: int,
    bos: int,
    eos: int,
    max_lens: Tensor,
    *,
    min_lens: Tensor | None = None,
    no_repeat_ngram: int = 0,
    return_attention: bool = False,
    reorder: ReorderFn | None = None,
) -> list[Hypothesis]:
    """Pick the best token of every sentence at every step; one Hypothesis per sentence, in order.

    state covers B rows. With `reorder`, finished sentences leave the batch (reorder gets the
    rows that go on); without it they stay, frozen: they keep feeding EOS and gain nothing.
    """
    _check_lengths(batch_size, max_lens, min_lens)
    device = max_lens.device
    tokens = torch.full((batch_size,), bos, dtype=torch.long, device=device)  # (A,) A running rows
    history = tokens.new_empty(batch_size, 0)  # (A, t)
    log_prob = torch.zeros(batch_size, device=device)  # (A,)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)  # (A,)
    live = torch.arange(batch_size, device=device)  # (A,) position of each running row in the batch
    attention = torch.zeros(batch_size, 0, 0, device=device) if return_attention else None  # (A, t, S)
    out: list[tuple] = [()] * batch_size  # (history (T,), log_prob, attention (T, S) or None) per sentence
    for t in range(int(max_lens.max()) + 1):
        log_probs, state, attn = step(tokens, state)  # (A, V), (A, S) or None
        log_probs = adjust_log_probs(log_probs, t, history, max_lens, min_lens, eos, no_repeat_ngram)
        best = log_probs.argmax(dim=1)  # (A,) first maximum on ties, as top_k
        gained = log_probs.gather(1, best[:, None]).squeeze(1)  # (A,)
        log_prob = log_prob + gained.masked_fill(done, 0.0)
        tokens = best.masked_fill(done, eos)  # frozen rows keep feeding EOS
        history = torch.cat([history, tokens[:, None]], dim=1)  # (A, t+1)
        if return_attention:
            rows = _require_attention(attn)[:, None]  # (A, 1, S)
            attention = rows if attention.size(1) == 0 else torch.cat([attention, rows], dim=1)
        done = done | (tokens == eos) | (t >= max_lens)  # (A,) a row at its max length is over
        if bool(done.all()):
            break
        if reorder is not None and bool(done.any()):
            for i in done.nonzero().squeeze(1).tolist():
                out[int(live[i])] = (history[i], log_prob[i], None if attention is None else attention[i])
            keep = (~done).nonzero().squeeze(1)  # (A',)
            tokens, history, log_prob, done, live = tokens[keep], history[keep], log_prob[keep], done[keep], live[keep]
            max_lens, min_lens = max_lens[keep], None if min_lens is None else min_lens[keep]
            attention = None if attention is None else attention[keep]
            state = reorder(state, keep)
    for i, b in enumerate(live.tolist()):
        out[b] = (history[i], log_prob[i], None if attention is None else attention[i])
    return [_greedy_hypothesis(*row, eos) for row in out]


def _greedy_hypothesis(history: Tensor, log_prob: Tensor, attention: Tensor | None, eos: int) -> Hypothesis:
    """Cut a row of history (T,) at its first EOS; attention (T, S) keeps the rows up to it."""
    ends = (history == eos).nonzero()
    length = int(ends[0]) if ends.numel() else history.numel()
    rows = None if attention is None else attention[: length + 1].clone()  # (length+1, S)
    score = float(log_prob)
    return Hypothesis(history[:length].tolist(), score, score, rows)


# ---------------------------------------------------------------------------- beam search


class _Beams(NamedTuple):
    """Search bookkeeping for the A*K running rows; the decoder state stays with the caller."""

    tokens: Tensor  # (A*K,) last token of each beam, fed to the next step
    scores: Tensor  # (A, K) summed log-probs of each beam
    history: Tensor  # (A*K, t) generated tokens
    attn_sum: Tensor | None  # (A*K, S) attention summed over generated tokens, for coverage
    attn_history: Tensor | None  # (A*K, t, S) attention rows, for return_attention


class _Candidates(NamedTuple):
    """The 2K best one-token extensions of each sentence's beams, best first."""

    scores: Tensor  # (A, 2K) summed log-probs
    rows: Tensor  # (A, 2K) parent row in [0, A*K)
    words: Tensor  # (A, 2K) appended token


def beam_search(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    batch_size: int,
    beam_size: int,
    bos: int,
    eos: int,
    max_lens: Tensor,
    *,
    min_lens: Tensor | None = None,
    length_penalty_alpha: float = 0.0,
    coverage_beta: float = 0.0,
    src_mask: Tensor | None = None,
    nbest: int = 1,
    no_repeat_ngram: int = 0,
    return_attention: bool = False,
) -> list[list[Hypothesis]]:
    """Beam search over B sentences at once; per sentence the nbest hypotheses, best score first.

    state already covers N = B*K rows (row b*K + k is beam k of sentence b, identical at the start).
    Each step keeps the 2K best candidates per sentence; EOS candidates among the top K are
    finished, the best K others continue (fairseq's rule). A sentence is done once it has K
    finished hypotheses or reached its max length; its K rows then leave the batch (the reorder
    index gets shorter), so the steps that remain cost only what the running sentences need.
    """
    _check_beam_args(batch_size, beam_size, nbest, coverage_beta, src_mask)
    _check_lengths(batch_size, max_lens, min_lens)
    k = beam_size
    live = _Live(torch.arange(batch_size, device=max_lens.device), max_lens, min_lens,
                 None if src_mask is None else src_mask.repeat_interleave(k, dim=0), k)
    beams = _initial_beams(batch_size, k, bos, max_lens.device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    counts = torch.zeros(batch_size, dtype=torch.long, device=max_lens.device)  # (A,) per live sentence
    for t in range(int(max_lens.max()) + 1):
        log_probs, state, attn = step(beams.tokens, state)  # (A*K, V), (A*K, S) or None
        log_probs = adjust_log_probs(log_probs, t, beams.history, live.row_max, live.row_min, eos, no_repeat_ngram)
        beams = _add_attention(beams, attn, coverage_beta > 0, return_attention)
        cands = _expand(beams.scores, log_probs, 2 * k)
        ending = _ending(cands, eos, k)  # (A, K)
        if bool(ending.any()):
            _finalise(finished, live, ending, cands, beams, t + 1, length_penalty_alpha, coverage_beta)
        counts = counts + ending.sum(dim=1)
        done = (counts >= k) | (t >= live.max_lens)  # (A,)
        if bool(done.all()):
            break
        beams, index = _advance(beams, cands, eos)
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)  # (A',) the sentences that go on
            rows = (keep[:, None] * k + torch.arange(k, device=keep.device)).view(-1)  # (A'*K,)
            beams, index, live, counts = _select_rows(beams, rows, keep), index[rows], live.select(keep, rows), counts[keep]
        state = reorder(state, index)
    return [_best(hypotheses, nbest) for hypotheses in finished]


class _Live(NamedTuple):
    """What search keeps per running sentence (A of them) and per running row (A*K)."""

    sentence: Tensor  # (A,) each running sentence's position in the input batch
    max_lens: Tensor  # (A,)
    min_lens: Tensor | None  # (A,)
    row_mask: Tensor | None  # (A*K, S) source mask, for coverage
    k: int

    @property
    def row_max(self) -> Tensor:
        return self.max_lens.repeat_interleave(self.k)  # (A*K,)

    @property
    def row_min(self) -> Tensor | None:
        return None if self.min_lens is None else self.min_lens.repeat_interleave(self.k)  # (A*K,)

    def select(self, keep: Tensor, rows: Tensor) -> "_Live":
        return _Live(self.sentence[keep], self.max_lens[keep],
                     None if self.min_lens is None else self.min_lens[keep],
                     None if self.row_mask is None else self.row_mask[rows], self.k)


def _check_beam_args(
    batch_size: int, beam_size: int, nbest: int, coverage_beta: float, src_mask: Tensor | None
) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be between 1 and beam_size={beam_size}, got {nbest}")
    if coverage_beta < 0:
        raise ValueError(f"coverage_beta must be >= 0, got {coverage_beta}")
    if coverage_beta > 0 and (src_mask is None or src_mask.dim() != 2 or src_mask.size(0) != batch_size):
        raise ValueError(f"coverage_beta > 0 needs src_mask of shape ({batch_size}, S)")


def _initial_beams(batch_size: int, k: int, bos: int, device: torch.device) -> _Beams:
    """K copies of BOS per sentence; only beam 0 is live so the first step does not expand copies."""
    n = batch_size * k
    tokens = torch.full((n,), bos, dtype=torch.long, device=device)  # (N,)
    scores = torch.full((batch_size, k), NEG_INF, device=device)  # (B, K)
    scores[:, 0] = 0.0
    return _Beams(tokens, scores, tokens.new_empty(n, 0), None, None)


def _add_attention(beams: _Beams, attn: Tensor | None, coverage: bool, keep_rows: bool) -> _Beams:
    """Fold this step's attention (N, S), which belongs to the token about to be chosen, into the beams."""
    if not (coverage or keep_rows):
        return beams
    attn = _require_attention(attn)
    attn_sum, attn_history = None, None
    if coverage:
        attn_sum = attn if beams.attn_sum is None else beams.attn_sum + attn  # (N, S)
    if keep_rows:
        rows = attn[:, None]  # (N, 1, S)
        attn_history = rows if beams.attn_history is None else torch.cat([beams.attn_history, rows], dim=1)
    return beams._replace(attn_sum=attn_sum, attn_history=attn_history)


def _expand(scores: Tensor, log_probs: Tensor, width: int) -> _Candidates:
    """Best `width` extensions per sentence over all K*V (beam, token) pairs."""
    b, k = scores.shape
    v = log_probs.size(1)
    total = (scores.view(b * k, 1) + log_probs).view(b, k * v)  # (A, K*V)
    values, flat = top_k(total, min(width, k * v))  # (A, 2K)
    rows = torch.arange(b, device=flat.device)[:, None] * k + flat // v  # (A, 2K)
    return _Candidates(values, rows, flat % v)


def _ending(cands: _Candidates, eos: int, k: int) -> Tensor:
    """(A, K) the top-K candidates that end in EOS with a finite score."""
    is_eos = cands.words[:, :k] == eos  # (A, K)
    return is_eos & torch.isfinite(cands.scores[:, :k])


def _finalise(
    finished: list[list[Hypothesis]],
    live: _Live,
    ending: Tensor,
    cands: _Candidates,
    beams: _Beams,
    length: int,
    alpha: float,
    beta: float,
) -> None:
    """Append a Hypothesis for every ending (A, K) candidate; length counts its tokens plus EOS."""
    sentence, position = ending.nonzero(as_tuple=True)  # (M,) each
    rows = cands.rows[sentence, position]  # (M,)
    log_probs = cands.scores[sentence, position]  # (M,)
    scores = log_probs / length_penalty(length, alpha)  # (M,)
    if beta > 0:
        scores = scores + coverage_penalty(beams.attn_sum[rows], live.row_mask[rows], beta)
    for b, row, log_prob, score in zip(live.sentence[sentence].tolist(), rows.tolist(), log_probs.tolist(),
                                       scores.tolist()):
        attention = None if beams.attn_history is None else beams.attn_history[row].clone()  # (length, S)
        finished[b].append(Hypothesis(beams.history[row].tolist(), log_prob, score, attention))


def _advance(beams: _Beams, cands: _Candidates, eos: int) -> tuple[_Beams, Tensor]:
    """Continue with the best K non-EOS candidates of each sentence. Returns the reorder index (A*K,)."""
    a, k = beams.scores.shape
    width = cands.words.size(1)
    position = torch.arange(width, device=cands.words.device)  # (2K,)
    rank = position + (cands.words == eos).long() * width  # (A, 2K) EOS candidates sink below the rest
    keep = rank.argsort(dim=1)[:, :k]  # (A, K) at most K EOS among 2K, so all kept are non-EOS
    index = cands.rows.gather(1, keep).view(a * k)  # (A*K,) parent of each continuing beam
    tokens = cands.words.gather(1, keep).view(a * k)  # (A*K,)
    scores = cands.scores.gather(1, keep)  # (A, K)
    history = torch.cat([beams.history[index], tokens[:, None]], dim=1)  # (A*K, t+1)
    attn_sum = None if beams.attn_sum is None else beams.attn_sum[index]  # (A*K, S)
    attn_history = None if beams.attn_history is None else beams.attn_history[index]  # (A*K, t+1, S)
    return _Beams(tokens, scores, history, attn_sum, attn_history), index


def _select_rows(beams: _Beams, rows: Tensor, keep: Tensor) -> _Beams:
    """Only the beams of the sentences `keep` (A',), whose rows are `rows` (A'*K,)."""
    return _Beams(beams.tokens[rows], beams.scores[keep], beams.history[rows],
                  None if beams.attn_sum is None else beams.attn_sum[rows],
                  None if beams.attn_history is None else beams.attn_history[rows])


def _best(hypotheses: list[Hypothesis], nbest: int) -> list[Hypothesis]:
    """The nbest highest-scoring hypotheses with distinct tokens (sort is stable: earlier wins ties)."""
    seen: set[tuple[int, ...]] = set()
    best = []
    for hypothesis in sorted(hypotheses, key=lambda h: h.score, reverse=True):
        key = tuple(hypothesis.tokens)
        if key not in seen:
            seen.add(key)
            best.append(hypothesis)
    return best[:nbest]
