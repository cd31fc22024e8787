"""Model invariants on tiny random models: shapes, padding invariance, teacher-forced ==
step-by-step, masked attention, residual wiring, bridge, weight sharing, scheduled
sampling, checkpoint round trip. No golden numbers from random init."""

import io
import itertools
import random

import pytest
import torch

from conftest import V, make, padded, src_batch, tgt_batch, tiny
from seq2seq import checkpoint
from seq2seq.attention import Attention
from seq2seq.config import ModelConfig, from_dict, to_dict
from seq2seq.errors import Seq2SeqError
from seq2seq.model import build_model, count_parameters


def stepwise(model, src, src_lengths, src_mask, tokens_in):
    """log-probs (B, T, V) from model.step fed the given tokens one at a time."""
    memory, state = model.encode(src, src_lengths, src_mask)
    outs = []
    for t in range(tokens_in.size(1)):
        log_probs, state, _ = model.step(tokens_in[:, t], state, memory)
        outs.append(log_probs)
    return torch.stack(outs, 1)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("cell,feed", [("lstm", "gnmt"), ("gru", "input_feed"), ("lstm", "top")])
def test_shapes(cell, feed):
    cfg = tiny(enc_cell=cell, dec_cell=cell, feed=feed, enc_hidden=20, dec_hidden=16, attention="general")
    model = make(cfg)
    src, src_lengths, src_mask = src_batch()
    tgt_in, tgt_mask = tgt_batch()
    B, S, T = src.size(0), src.size(1), tgt_in.size(1)
    with torch.no_grad():
        logits = model(src, src_lengths, src_mask, tgt_in)
        assert logits.shape == (B, T, V)
        masked = model(src, src_lengths, src_mask, tgt_in, tgt_mask)
        assert masked.shape == (int(tgt_mask.sum()), V)
        torch.testing.assert_close(masked, logits[tgt_mask], rtol=0, atol=1e-6)

        memory, state = model.encode(src, src_lengths, src_mask)
        assert memory.values.shape == (B, S, 20)
        assert torch.equal(memory.mask, src_mask)
        assert state.hidden.shape == (3, B, 16)
        assert (state.cell is None) == (cell == "gru")
        if cell == "lstm":
            assert state.cell.shape == (3, B, 16)
        assert (state.feed is None) == (feed != "input_feed")
        if feed == "input_feed":
            assert state.feed.shape == (B, 16)

        log_probs, new, attn = model.step(tgt_in[:, 0], state, memory)
        assert log_probs.shape == (B, V)
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(B))
        assert attn.shape == (B, S)
        assert new.hidden.shape == state.hidden.shape
        assert (new.cell is None) == (state.cell is None)
        assert (new.feed is None) == (state.feed is None)


# ---------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("cell,bidirectional,residual",
                         list(itertools.product(("lstm", "gru"), (True, False), (False, True))))
def test_encoder_padding_invariance(cell, bidirectional, residual):
    model = make(tiny(enc_cell=cell, bidirectional=bidirectional, enc_residual=residual, enc_layers=3))
    lengths = [5, 3, 7, 1]
    src, src_lengths, _ = padded(lengths)
    with torch.no_grad():
        memory, finals_h, finals_c = model.encoder(src, src_lengths)
        # the same sentences with 3 more PAD columns, then with a longer sentence added
        wider = torch.cat([src, torch.zeros(4, 3, dtype=torch.long)], 1)
        longer, longer_lengths, _ = padded([10], seed=9)
        more = torch.cat([wider, longer], 0)
        for ids, lens in [(wider, src_lengths), (more, torch.cat([src_lengths, longer_lengths]))]:
            memory2, finals_h2, finals_c2 = model.encoder(ids, lens)
            assert memory2.shape[1] == ids.size(1)
            for b, n in enumerate(lengths):
                torch.testing.assert_close(memory2[b, :n], memory[b, :n], rtol=0, atol=1e-6)
                assert memory2[b, n:].abs().max() == 0  # padding positions are exactly zero
            for h, h2 in zip(finals_h, finals_h2):
                torch.testing.assert_close(h2[:4], h, rtol=0, atol=1e-6)
            assert (finals_c is None) == (cell == "gru")
            for c, c2 in zip(finals_c or [], finals_c2 or []):
                torch.testing.assert_close(c2[:4], c, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ["mlp", "dot", "general"])
def test_model_output_ignores_source_padding(attention):
    model = make(tiny(attention=attention, feed="input_feed"))
    src, src_lengths, src_mask = src_batch()
    tgt_in, _ = tgt_batch()
    wider = torch.cat([src, torch.zeros(4, 4, dtype=torch.long)], 1)
    wider_mask = torch.cat([src_mask, torch.zeros(4, 4, dtype=torch.bool)], 1)
    with torch.no_grad():
        a = model(src, src_lengths, src_mask, tgt_in)
        b = model(wider, src_lengths, wider_mask, tgt_in)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- teacher forced == step by step

COMBOS = list(itertools.product(("gnmt", "top", "input_feed"), ("lstm", "gru"),
                                ("gnmt", "dense", "none"), ("mlp", "dot", "general")))


@pytest.mark.parametrize("feed,cell,residual,attention", COMBOS)
def test_teacher_forced_equals_step_by_step(feed, cell, residual, attention):
    model = make(tiny(enc_cell=cell, dec_cell=cell, feed=feed, residual=residual, attention=attention))
    src, src_lengths, src_mask = src_batch()
    tgt_in, _ = tgt_batch()
    with torch.no_grad():
        forced = torch.log_softmax(model(src, src_lengths, src_mask, tgt_in), -1)  # (B, T, V)
        stepped = stepwise(model, src, src_lengths, src_mask, tgt_in)
    assert stepped.dtype == forced.dtype == torch.float32
    assert (forced - stepped).abs().max() < 1e-5


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("attention", ["mlp", "dot", "general"])
@pytest.mark.parametrize("feed", ["gnmt", "top"])
def test_attention_weights_sum_to_one_over_real_tokens(attention, feed):
    model = make(tiny(attention=attention, feed=feed))
    src, src_lengths, src_mask = src_batch()
    tgt_in, _ = tgt_batch()
    with torch.no_grad():
        memory, state = model.encode(src, src_lengths, src_mask)
        for t in range(3):
            _, state, attn = model.decoder.step(tgt_in[:, t], state, memory)   # (B, S)
            torch.testing.assert_close(attn.sum(-1), torch.ones(src.size(0)))
            assert torch.all(attn[~src_mask] == 0)
            assert torch.all(attn[src_mask] > 0)
        _, attn = model.decoder(tgt_in, model.encode(src, src_lengths, src_mask)[1], memory)  # (B, T, S)
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
        assert torch.all(attn.masked_select(~src_mask[:, None, :]) == 0)


def test_additive_attention_is_bahdanaus_formula():
    """Attention's sigmoid form gives the weights softmax(v . tanh(W q + U k)) over real positions,
    and their gradients (either factor 2 dropped, the weights change)."""
    torch.manual_seed(0)
    att = Attention("mlp", 6, 10, 8)
    query = torch.randn(3, 4, 6, requires_grad=True)                   # (B, T, Hq)
    memory = torch.randn(3, 5, 10, requires_grad=True)                 # (B, S, Hm)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    context, weights = att(query, att.keys(memory), memory, mask)
    scores = att.v(torch.tanh(att.query_proj(query)[:, :, None] + att.key_proj(memory)[:, None])).squeeze(-1)
    expected = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)  # (B, T, S)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(context, expected @ memory)
    g = torch.randn_like(weights)
    ours = torch.autograd.grad((weights * g).sum(), [query, memory, *att.parameters()])
    reference = torch.autograd.grad((expected * g).sum(), [query, memory, *att.parameters()])
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- residual connections


class Recorder:
    """Captures the inputs and raw outputs of the decoder's RNN layers and the input of the
    output combination (whose first H columns are the stack's output)."""

    def __init__(self, decoder):
        self.inputs, self.outputs, self.handles = {}, {}, []
        for i, rnn in enumerate(decoder.layers):
            self.handles.append(rnn.register_forward_hook(self._hook(i)))
        self.handles.append(decoder.combine.register_forward_pre_hook(self._combine))
        self.hidden = decoder.cfg.hidden

    def _hook(self, i):
        def hook(module, args, output):
            self.inputs[i], self.outputs[i] = args[0], output[0]
        return hook

    def _combine(self, module, args):
        self.stack = args[0][..., :self.hidden]

    def layer_input(self, i):
        return self.inputs[i][..., :self.hidden]   # without the gnmt context columns


def zero_layer(rnn):
    with torch.no_grad():
        for p in rnn.parameters():
            p.zero_()


def run_decoder(model):
    src, src_lengths, src_mask = src_batch()
    tgt_in, _ = tgt_batch()
    rec = Recorder(model.decoder)
    with torch.no_grad():
        model(src, src_lengths, src_mask, tgt_in)
    return rec


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("feed", ["gnmt", "top"])
def test_zeroed_layer_outputs_zero(cell, feed):
    """With bridge = none, a layer whose weights and biases are all zero outputs exactly zero:
    the basis of the residual checks below."""
    model = make(tiny(dec_cell=cell, enc_cell=cell, bridge="none", residual="none", feed=feed))
    zero_layer(model.decoder.layers[1])
    rec = run_decoder(model)
    assert rec.outputs[0].abs().max() > 0
    assert rec.outputs[1].abs().max() == 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("feed", ["gnmt", "top"])
def test_gnmt_residual_passes_input_through_zeroed_layer(cell, feed):
    model = make(tiny(dec_cell=cell, enc_cell=cell, bridge="none", residual="gnmt", residual_from=2, feed=feed))
    zero_layer(model.decoder.layers[1])
    rec = run_decoder(model)
    y1 = rec.outputs[0]
    assert y1.abs().max() > 0
    torch.testing.assert_close(rec.layer_input(2), y1, rtol=0, atol=0)          # layer 3 sees layer 1
    torch.testing.assert_close(rec.stack, rec.outputs[2] + y1, rtol=0, atol=1e-6)  # and adds it again


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gnmt_residual_starts_at_residual_from(cell):
    """residual_from = 3: layer 2 has no residual, so a zeroed layer 2 blocks the signal while
    layer 3 still adds its input."""
    model = make(tiny(dec_cell=cell, enc_cell=cell, bridge="none", residual="gnmt", residual_from=3, feed="top"))
    zero_layer(model.decoder.layers[1])
    rec = run_decoder(model)
    assert rec.layer_input(2).abs().max() == 0
    torch.testing.assert_close(rec.stack, rec.outputs[2], rtol=0, atol=0)  # + a zero input


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("feed", ["gnmt", "top"])
def test_no_residual_zeroed_layer_blocks_signal(cell, feed):
    model = make(tiny(dec_cell=cell, enc_cell=cell, bridge="none", residual="none", feed=feed))
    zero_layer(model.decoder.layers[1])
    rec = run_decoder(model)
    assert rec.layer_input(2).abs().max() == 0
    torch.testing.assert_close(rec.stack, rec.outputs[2], rtol=0, atol=0)
    # and an unzeroed plain stack passes each layer's output on unchanged
    model = make(tiny(dec_cell=cell, enc_cell=cell, residual="none", feed=feed))
    rec = run_decoder(model)
    torch.testing.assert_close(rec.layer_input(1), rec.outputs[0], rtol=0, atol=0)
    torch.testing.assert_close(rec.stack, rec.outputs[2], rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("feed", ["gnmt", "top", "input_feed"])
def test_dense_residual_sums_lower_layers(cell, feed):
    model = make(tiny(dec_cell=cell, enc_cell=cell, residual="dense", feed=feed, dec_layers=4))
    rec = run_decoder(model)
    y = [rec.outputs[i] for i in range(4)]
    torch.testing.assert_close(rec.layer_input(1), y[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(rec.layer_input(2), y[0] + y[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(rec.layer_input(3), y[0] + y[1] + y[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(rec.stack, y[0] + y[1] + y[2] + y[3], rtol=0, atol=1e-6)
    # a zeroed middle layer does not stop the lower layers' sum from reaching the top
    model = make(tiny(dec_cell=cell, enc_cell=cell, residual="dense", feed=feed, bridge="none"))
    zero_layer(model.decoder.layers[1])
    rec = run_decoder(model)
    torch.testing.assert_close(rec.layer_input(2), rec.outputs[0], rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_residuals_add_the_clean_input_under_dropout(cell):
    """Encoder and decoder alike (GNMT): dropout sits on the branch into the next layer, the
    residual adds that layer's input as it was before dropout. With layer 2 zeroed, the stack's
    output is layer 1's output exactly, in training mode with dropout 0.5."""
    model = make(tiny(enc_cell=cell, dec_cell=cell, enc_residual=True, enc_layers=2, dec_layers=2,
                      residual="gnmt", residual_from=2, feed="top", bridge="none", dropout=0.5)).train()
    zero_layer(model.encoder.layers[1])
    zero_layer(model.decoder.layers[1])
    src, src_lengths, src_mask = src_batch()
    seen = {}
    model.encoder.layers[0].register_forward_hook(lambda m, a, out: seen.__setitem__("y1", out[0].data))
    rec = Recorder(model.decoder)
    with torch.no_grad():
        memory, _, _ = model.encoder(src, src_lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(memory, src_lengths, batch_first=True,
                                                     enforce_sorted=False).data
    assert seen["y1"].abs().max() > 0
    torch.testing.assert_close(packed, seen["y1"], rtol=0, atol=0)
    with torch.no_grad():
        model(src, src_lengths, src_mask, tgt_batch()[0])
    assert rec.outputs[0].abs().max() > 0
    torch.testing.assert_close(rec.stack, rec.outputs[0], rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("residual", [True, False])
def test_encoder_residual(cell, residual):
    model = make(tiny(enc_cell=cell, enc_residual=residual, enc_layers=2))
    src, src_lengths, _ = src_batch()
    seen = {}
    model.encoder.layers[0].register_forward_hook(lambda m, a, out: seen.__setitem__("y1", out[0].data))
    model.encoder.layers[1].register_forward_hook(lambda m, a, out: seen.__setitem__("y2", out[0].data))
    with torch.no_grad():
        memory, _, _ = model.encoder(src, src_lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(memory, src_lengths, batch_first=True,
                                                     enforce_sorted=False).data
    expected = seen["y2"] + seen["y1"] if residual else seen["y2"]
    torch.testing.assert_close(packed, expected, rtol=0, atol=1e-6)
    # a zeroed layer 2 passes layer 1 through (residual) or blocks it (plain)
    zero_layer(model.encoder.layers[1])
    with torch.no_grad():
        memory, _, _ = model.encoder(src, src_lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(memory, src_lengths, batch_first=True,
                                                     enforce_sorted=False).data
    assert seen["y2"].abs().max() == 0
    if residual:
        torch.testing.assert_close(packed, seen["y1"], rtol=0, atol=0)
        assert packed.abs().max() > 0
    else:
        assert packed.abs().max() == 0


# ---------------------------------------------------------------- bridge


@pytest.mark.parametrize("cell,feed", [("lstm", "input_feed"), ("gru", "gnmt")])
def test_bridge_none_gives_zero_state(cell, feed):
    model = make(tiny(enc_cell=cell, dec_cell=cell, bridge="none", feed=feed))
    src, src_lengths, src_mask = src_batch()
    with torch.no_grad():
        _, state = model.encode(src, src_lengths, src_mask)
    for t in state:
        if t is not None:
            assert t.abs().max() == 0
    assert not hasattr(model.bridge, "h")  # no parameters that would go unused


def test_linear_bridge_with_different_depths_and_cells():
    """A 3-layer GRU encoder feeding a 2-layer LSTM decoder of another width."""
    model = make(tiny(enc_cell="gru", dec_cell="lstm", enc_layers=3, dec_layers=2,
                      enc_hidden=20, dec_hidden=14, attention="general"))
    src, src_lengths, src_mask = src_batch()
    tgt_in, _ = tgt_batch()
    with torch.no_grad():
        _, state = model.encode(src, src_lengths, src_mask)
        assert state.hidden.shape == (2, 4, 14)
        assert state.cell.shape == (2, 4, 14)
        # every sentence gets its own initial state, from every encoder layer
        assert not torch.allclose(state.hidden[:, 0], state.hidden[:, 1])
        model.bridge.h.weight[:, :20].zero_()   # drop encoder layer 1's contribution
        _, state2 = model.encode(src, src_lengths, src_mask)
        assert not torch.allclose(state.hidden, state2.hidden)
        forced = torch.log_softmax(model(src, src_lengths, src_mask, tgt_in), -1)
        stepped = stepwise(model, src, src_lengths, src_mask, tgt_in)
    assert forced.shape == (4, tgt_in.size(1), V)
    assert (forced - stepped).abs().max() < 1e-5


# ---------------------------------------------------------------- weight sharing


def test_tie_embeddings_shares_the_output_weight():
    model = make(tiny(tie=True, embedding=16))
    assert model.decoder.out.weight is model.decoder.embed.weight
    untied = make(tiny(embedding=16))
    assert count_parameters(untied) - count_parameters(model) == V * 16
    # one parameter learning from both uses: its gradient is the sum of the two an untied copy gets
    untied.load_state_dict(model.state_dict())  # the same values, in two tensors
    src, src_lengths, src_mask = src_batch()
    tgt_in, tgt_mask = tgt_batch()
    for m in (model, untied):
        m(src, src_lengths, src_mask, tgt_in, tgt_mask).logsumexp(-1).sum().backward()
    torch.testing.assert_close(model.decoder.embed.weight.grad,
                               untied.decoder.embed.weight.grad + untied.decoder.out.weight.grad)
    assert untied.decoder.embed.weight.grad.abs().max() > 0 and untied.decoder.out.weight.grad.abs().max() > 0


def test_share_embeddings_shares_source_and_target_embedding():
    model = make(tiny(share=True))
    assert model.encoder.embed is model.decoder.embed
    assert count_parameters(make(tiny())) - count_parameters(model) == V * 8  # counted once
    unshared = make(tiny())
    assert unshared.encoder.embed is not unshared.decoder.embed


# ---------------------------------------------------------------- scheduled sampling


@pytest.mark.parametrize("feed", ["gnmt", "input_feed"])
def test_scheduled_sampling_with_ratio_near_one_is_teacher_forcing(feed):
    model = make(tiny(feed=feed))
    src, src_lengths, src_mask = src_batch()
    tgt_in, tgt_mask = tgt_batch()
    torch.manual_seed(0)
    with torch.no_grad():
        forced = model(src, src_lengths, src_mask, tgt_in)
        sampled = model(src, src_lengths, src_mask, tgt_in, teacher_forcing=0.999999)
        sampled_masked = model(src, src_lengths, src_mask, tgt_in, tgt_mask, teacher_forcing=0.999999)
    assert sampled.shape == forced.shape
    torch.testing.assert_close(sampled, forced, rtol=0, atol=1e-5)
    torch.testing.assert_close(sampled_masked, forced[tgt_mask], rtol=0, atol=1e-5)


def test_scheduled_sampling_with_ratio_zero_feeds_argmax():
    model = make(tiny(feed="gnmt"))
    src, src_lengths, src_mask = src_batch()
    tgt_in, _ = tgt_batch()
    with torch.no_grad():
        sampled = model(src, src_lengths, src_mask, tgt_in, teacher_forcing=0.0)   # (B, T, V)
        memory, state = model.encode(src, src_lengths, src_mask)
        tokens, expected = tgt_in[:, 0], []
        for _ in range(tgt_in.size(1)):
            logits, state, _ = model.decoder.step(tokens, state, memory)
            expected.append(logits)
            tokens = logits.argmax(-1)
        forced = model(src, src_lengths, src_mask, tgt_in)
        # only the first input token is ever read
        other = tgt_in.clone()
        other[:, 1:] = torch.randint(4, V, other[:, 1:].shape)
        sampled_other = model(src, src_lengths, src_mask, other, teacher_forcing=0.0)
    torch.testing.assert_close(sampled, torch.stack(expected, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(sampled_other, sampled, rtol=0, atol=0)
    # the random model's own predictions differ from the gold inputs, and so do the outputs
    assert torch.any(torch.stack(expected, 1)[:, :-1].argmax(-1) != tgt_in[:, 1:])
    assert (sampled - forced).abs().max() > 1e-6


def test_scheduled_sampling_trains():
    model = make(tiny(feed="input_feed"))
    model.train()
    src, src_lengths, src_mask = src_batch()
    tgt_in, tgt_mask = tgt_batch()
    logits = model(src, src_lengths, src_mask, tgt_in, tgt_mask, teacher_forcing=0.5)
    assert logits.shape == (int(tgt_mask.sum()), V)
    logits.logsumexp(-1).sum().backward()
    assert model.decoder.layers[0].weight_ih_l0.grad.abs().sum() > 0


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("cfg", [tiny(), tiny(enc_cell="gru", dec_cell="gru", feed="input_feed", tie=True,
                                          embedding=16, residual="dense", attention="dot")],
                         ids=["lstm", "gru-tied"])
def test_checkpoint_round_trip(tmp_path, cfg):
    model = make(cfg, seed=3)
    path = tmp_path / "checkpoints" / "model.pt"
    checkpoint.save({"config": to_dict(cfg), "model": model.state_dict()}, path)
    payload = checkpoint.load(path)
    torch.manual_seed(99)  # a different init, overwritten by the load
    loaded = build_model(from_dict(payload["config"], ModelConfig), V, V).eval()
    loaded.load_state_dict(payload["model"])
    assert loaded.cfg == cfg
    if cfg.decoder.tie_embeddings:
        assert loaded.decoder.out.weight is loaded.decoder.embed.weight
    src, src_lengths, src_mask = src_batch()
    tgt_in, _ = tgt_batch()
    with torch.no_grad():
        assert torch.equal(model(src, src_lengths, src_mask, tgt_in), loaded(src, src_lengths, src_mask, tgt_in))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, "model": make(tiny()).state_dict()}, buffer)
    return buffer.getvalue()


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["truncated_half", "truncated_end", "truncated_head", "empty",
                                  "random", "text", "foreign_dict", "tensor"])
def test_bad_checkpoint_is_one_line_error(tmp_path, kind):
    good = _checkpoint_bytes()
    data = {
        "truncated_half": lambda: good[: len(good) // 2],
        "truncated_end": lambda: good[:-1],
        "truncated_head": lambda: good[:20],
        "empty": lambda: b"",
        "random": lambda: random.Random(0).randbytes(4096),
        "text": lambda: b"not a checkpoint\n",
        "foreign_dict": lambda: _torch_bytes({"state_dict": {"w": torch.zeros(2)}}),
        "tensor": lambda: _torch_bytes(torch.zeros(3)),
    }[kind]()
    path = tmp_path / "bad.pt"
    path.write_bytes(data)
    with pytest.raises(Seq2SeqError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(Seq2SeqError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "nothing.pt")
