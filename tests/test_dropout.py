"""seq2seq.dropout: nn.Dropout exactly outside CPU bf16 autocast; inside it, the same mask
distribution and scaling from torch.rand."""

import pytest
import torch
from torch import nn

from seq2seq.dropout import Dropout


def test_float32_training_is_nn_dropout_exactly():
    """Same generator state, same output and the same generator state after: float32 curves stay."""
    x = torch.randn(64, 7, 32)
    torch.manual_seed(3)
    expected, after = nn.Dropout(0.3)(x), torch.rand(1)
    torch.manual_seed(3)
    got = Dropout(0.3)(x)
    assert torch.equal(got, expected) and torch.equal(torch.rand(1), after)


def test_eval_and_p0_are_the_identity_under_autocast():
    x = torch.randn(10, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(Dropout(0.3).eval()(x), x)
        assert torch.equal(Dropout(0.0)(x), x)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_bf16_autocast_mask_rate_scale_and_gradient(p):
    x = torch.randn(200, 500, requires_grad=True)  # 100,000 elements: the drop rate to within 0.01
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = Dropout(p)(x)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - p) < 0.01
    kept = ~dropped
    assert torch.allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p), rtol=1e-6)


def test_bf16_autocast_draws_a_fresh_mask_each_call_and_follows_the_seed():
    x = torch.ones(50, 50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        a, b = Dropout(0.5)(x), Dropout(0.5)(x)
        torch.manual_seed(0)
        again = Dropout(0.5)(x)
    assert not torch.equal(a, b) and torch.equal(a, again)


def test_bf16_input_keeps_its_dtype():
    x = torch.randn(30, 30).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = Dropout(0.2)(x)
    kept = y != 0
    assert y.dtype == torch.bfloat16 and 0.6 < kept.float().mean() < 0.95
    assert torch.allclose(y[kept].float(), x[kept].float() * 1.25, rtol=1e-2)
