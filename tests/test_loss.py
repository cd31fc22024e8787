"""The fused, chunked loss gives the plain loss's values and gradients; the model's training loss
is the plain loss of its logits at real target positions."""

import pytest
import torch
from torch.nn import functional as F

from conftest import V, make, src_batch, tgt_batch, tiny
from seq2seq import loss as loss_module
from seq2seq.loss import linear_cross_entropy, smoothed_cross_entropy


def inputs(n=300, h=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.5
    bias = torch.randn(v, generator=g) * 0.5
    target = torch.randint(0, v, (n,), generator=g)
    return x, weight, bias, target


def values_and_grads(fn, x, weight, bias, target, smoothing):
    """(loss, nll) and the gradients of loss + 0.3 * nll with respect to x, weight, bias."""
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    loss, nll = fn(*leaves, target, smoothing)
    (loss + 0.3 * nll).backward()
    return [loss.detach(), nll.detach()] + [t.grad for t in leaves]


def plain(x, weight, bias, target, smoothing):
    return smoothed_cross_entropy(F.linear(x, weight, bias), target, smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("n", [1, 64, 300])  # one row, one chunk, several chunks with a short last one
def test_fused_equals_plain_values_and_gradients(monkeypatch, smoothing, n):
    monkeypatch.setattr(loss_module, "CHUNK", 64)
    x, weight, bias, target = inputs(n=n)
    fused = values_and_grads(linear_cross_entropy, x, weight, bias, target, smoothing)
    reference = values_and_grads(plain, x, weight, bias, target, smoothing)
    for name, a, b in zip(["loss", "nll", "d x", "d weight", "d bias"], fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_fused_without_bias_and_with_repeated_targets():
    x, weight, _, _ = inputs(n=200)
    target = torch.full((200,), 7)  # every row the same token: index_add and bincount must sum, not overwrite
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    loss, _ = linear_cross_entropy(*leaves, None, target, 0.1)
    loss.backward()
    reference = [t.clone().requires_grad_() for t in (x, weight)]
    smoothed_cross_entropy(F.linear(*reference), target, 0.1)[0].backward()
    torch.testing.assert_close(leaves[0].grad, reference[0].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(leaves[1].grad, reference[1].grad, rtol=1e-5, atol=1e-5)


def test_without_grad_it_builds_no_graph_and_gives_the_same_numbers():
    x, weight, bias, target = inputs()
    weight.requires_grad_()
    with torch.no_grad():
        loss, nll = linear_cross_entropy(x, weight, bias, target, 0.1)
    assert loss.grad_fn is None and nll.grad_fn is None
    expected = plain(x, weight.detach(), bias, target, 0.1)
    torch.testing.assert_close((loss, nll), expected, rtol=1e-5, atol=1e-4)


def test_bf16_inputs_run_the_projection_in_bf16_and_the_softmax_in_float32():
    x, weight, bias, target = inputs()
    loss, nll = linear_cross_entropy(x.bfloat16(), weight, bias, target, 0.1)
    assert loss.dtype == torch.float32
    expected, _ = plain(x, weight, bias, target, 0.1)
    assert abs(float(loss) - float(expected)) < 0.01 * float(expected)


@pytest.mark.parametrize("tie", [False, True])
def test_model_loss_is_the_plain_loss_of_its_logits(tie):
    """Seq2Seq.loss (fused) against the logits of Seq2Seq.forward at real target positions,
    gradients included (with tied embeddings the output weight's gradient joins the embedding's)."""
    cfg = tiny(tie=tie, dec_hidden=8) if tie else tiny()
    src, src_lengths, src_mask = src_batch()
    tgt_in, tgt_mask = tgt_batch()
    tgt_out = torch.randint(4, V, tgt_in.shape)
    grads = []
    for fused in (True, False):
        model = make(cfg)
        if fused:
            loss, nll = model.loss(src, src_lengths, src_mask, tgt_in, tgt_out, tgt_mask, 0.1)
        else:
            logits = model(src, src_lengths, src_mask, tgt_in, tgt_mask)  # (N, V)
            loss, nll = smoothed_cross_entropy(logits, tgt_out[tgt_mask], 0.1)
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
        if fused:
            fused_values = (loss.detach(), nll.detach())
    torch.testing.assert_close(fused_values, (loss.detach(), nll.detach()))
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)
