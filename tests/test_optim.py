"""seq2seq.optim.FusedAdam against torch.optim.Adam/AdamW(fused=True): the same updates bit for
bit, interchangeable state dicts, clear errors for a state of another model, and no
torch._dynamo import on the way to the first training step, and a torch floor that has the kernel."""

import copy
import re
import subprocess
import sys
import tomllib

import pytest
import torch

from conftest import REPO
from seq2seq.errors import Seq2SeqError
from seq2seq.optim import FUSED_ADAM_CPU_SINCE, FusedAdam


def model_pair():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(11, 6), "rnn": torch.nn.LSTM(6, 5),
                                 "unused": torch.nn.Linear(5, 3)})  # never gets a gradient
    return model, copy.deepcopy(model)


def train(model, optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        tokens = torch.randint(0, 11, (4, 3), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        model["rnn"](model["emb"](tokens))[0].pow(2).mean().backward()
        optimizer.param_groups[0]["lr"] = 0.01 / (1 + step)  # as train_step sets it
        optimizer.step()


@pytest.mark.parametrize("decoupled", [False, True])
def test_updates_are_torch_fused_adams_bit_for_bit(decoupled):
    ours, theirs = model_pair()
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    reference = cls(theirs.parameters(), lr=0.01, betas=(0.9, 0.98), weight_decay=0.1, fused=True)
    optimizer = FusedAdam(ours.parameters(), lr=0.01, betas=(0.9, 0.98), weight_decay=0.1, decoupled=decoupled)
    train(ours, optimizer, 5)
    train(theirs, reference, 5)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name
    mine, torchs = optimizer.state_dict(), reference.state_dict()
    assert mine["param_groups"] == torchs["param_groups"]
    assert mine["state"].keys() == torchs["state"].keys()  # the unused layer has no state in either
    for i, state in torchs["state"].items():
        for key, value in state.items():
            assert torch.equal(mine["state"][i][key], value) and mine["state"][i][key].dtype == value.dtype


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("direction", ["torch to ours", "ours to torch"])
def test_state_dicts_load_both_ways_and_continue_exactly(direction, decoupled):
    """A checkpoint written with torch.optim (before FusedAdam) resumes exactly, and back,
    for Adam and for AdamW (whose decay is applied to the weights, not the gradient)."""
    first, second = model_pair()

    def make_ours(m):
        return FusedAdam(m.parameters(), lr=0.01, weight_decay=0.1, decoupled=decoupled)

    def make_torch(m):
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        return cls(m.parameters(), lr=0.01, weight_decay=0.1, fused=True)

    writer, reader = (make_torch, make_ours) if direction == "torch to ours" else (make_ours, make_torch)
    optimizer = writer(first)
    train(first, optimizer, 3)
    second.load_state_dict(first.state_dict())
    resumed = reader(second)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train(first, optimizer, 3, seed=2)
    train(second, resumed, 3, seed=2)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_a_state_of_another_model_is_a_clear_error():
    model, _ = model_pair()
    optimizer = FusedAdam(model.parameters(), lr=0.01)
    train(model, optimizer, 1)
    state = optimizer.state_dict()
    other = FusedAdam(torch.nn.Linear(3, 2).parameters(), lr=0.01)
    with pytest.raises(Seq2SeqError, match="parameters in 1 group"):
        other.load_state_dict(state)
    reshaped = FusedAdam([torch.nn.Parameter(torch.zeros(2, 2)) for _ in model.parameters()], lr=0.01)
    with pytest.raises(Seq2SeqError, match=r"parameter 0 has shape \(11, 6\), the model's is \(2, 2\)"):
        reshaped.load_state_dict(state)


@pytest.mark.parametrize("setting", [{"lr": -0.1}, {"eps": -1.0}, {"weight_decay": -0.01},
                                     {"betas": (0.9, 1.0)}, {"betas": (0.9,)}])
def test_settings_out_of_range_are_refused(setting):
    model, _ = model_pair()
    (name,) = setting
    with pytest.raises(ValueError, match=f"FusedAdam: {name} = .* is out of range"):
        FusedAdam(model.parameters(), **{"lr": 0.01, **setting})


def test_training_steps_do_not_import_torch_dynamo():
    """torch.optim's optimizers import torch._dynamo when first used (0.8 s of start-up here);
    the model's training step, clipping and FusedAdam must not."""
    code = """
import sys, torch
from seq2seq import config
from seq2seq.model import Objective, build_model
from seq2seq.train import make_optimizer
cfg = config.load('recipes/multi30k_de_en_cpu.toml', ['model.encoder.hidden=16', 'model.decoder.hidden=16', 'model.decoder.embedding=16', 'model.encoder.embedding=16'])
model = build_model(cfg.model, 50, 50)
optimizer = make_optimizer(model, cfg)
src = torch.randint(4, 50, (2, 5)); lengths = torch.tensor([5, 4]); src_mask = torch.arange(5) < lengths[:, None]
tgt = torch.randint(4, 50, (2, 6)); tgt_mask = torch.ones(2, 6, dtype=torch.bool)
for _ in range(2):
    loss, _ = Objective(model)(src, lengths, src_mask, tgt, tgt, tgt_mask, 0.1, 1.0)
    optimizer.zero_grad(set_to_none=True); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); optimizer.step()
print(optimizer.state_dict()['state'][0]['step'].item(), 'torch._dynamo' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2.0", "False"]


def test_declared_torch_floor_has_the_fused_cpu_kernel():
    """pyproject's torch floor must be a release whose fused Adam/AdamW kernels take CPU tensors."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(r"torch\b", d)]
    floor = re.fullmatch(r"torch>=(\d+)\.(\d+)(\.\d+)?", spec.replace(" ", ""))
    assert floor, f"torch requirement {spec!r} has no plain >= floor"
    assert (int(floor[1]), int(floor[2])) >= FUSED_ADAM_CPU_SINCE
