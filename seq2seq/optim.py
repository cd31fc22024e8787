"""Adam and AdamW on torch's fused kernel, without torch.optim's machinery.

`torch.optim.Adam(fused=True)` runs one kernel per (device, dtype) group of parameters:
`torch._fused_adam_` (or `torch._fused_adamw_` for decoupled weight decay), after adding 1 to
every parameter's step counter. FusedAdam makes exactly those calls, so an update is bit for bit
the one torch.optim gives. What it leaves out is the rest of torch.optim.Optimizer: its methods
are wrapped to be skipped by torch.compile, and the first call of any of them imports
torch._dynamo, a large share of training's start-up time (bench/data_scale.py measures it).

The state dict has torch.optim.Adam's layout (`state` by parameter index with `step`,
`exp_avg`, `exp_avg_sq`; one entry in `param_groups`), so checkpoints written by either load
into the other.
"""

from __future__ import annotations

import torch

from seq2seq.errors import Seq2SeqError

FUSED_DEVICES = ("cpu", "cuda")  # where torch has the fused kernel
FUSED_ADAM_CPU_SINCE = (2, 4)  # the torch release whose fused Adam/AdamW kernels take CPU tensors


class FusedAdam:
    """Adam (weight decay added to the gradient) or, with decoupled=True, AdamW, for a single
    group of parameters on cpu or cuda. `param_groups[0]["lr"]` may be changed between steps."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not value >= 0:
                raise ValueError(f"FusedAdam: {name} = {value!r} is out of range")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"FusedAdam: betas = {betas!r} is out of range")
        self.params = list(params)
        for p in self.params:
            if p.device.type not in FUSED_DEVICES:
                raise ValueError(f"FusedAdam: a parameter is on {p.device}; the kernel exists for "
                                 f"{' and '.join(FUSED_DEVICES)} only")
        # torch.optim.Adam's group keys, so that its state dicts and ours are interchangeable
        self.param_groups = [{"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                              "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                              "differentiable": False, "fused": True, "decoupled_weight_decay": decoupled,
                              "params": self.params}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (the others keep their step count)."""
        group = self.param_groups[0]
        by_kind: dict[tuple, list[list[torch.Tensor]]] = {}  # (device, dtype) -> [params, grads, m, v, steps]
        for p in self.params:
            if p.grad is None:
                continue
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            lists = by_kind.setdefault((p.device, p.dtype), [[], [], [], [], []])
            for i, t in enumerate((p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                lists[i].append(t)
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        beta1, beta2 = group["betas"]
        for params, grads, exp_avgs, exp_avg_sqs, steps in by_kind.values():
            torch._foreach_add_(steps, 1)
            kernel(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                   beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                   maximize=False, grad_scale=None, found_inf=None)

    def state_dict(self) -> dict:
        index = {p: i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[p]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of ours or of torch.optim.Adam/AdamW over the same parameters."""
        groups = state_dict.get("param_groups", [])
        if len(groups) != 1 or len(groups[0].get("params", [])) != len(self.params):
            raise Seq2SeqError(f"optimizer state: {sum(len(g.get('params', [])) for g in groups)} parameters "
                               f"in {len(groups)} group(s); this model has {len(self.params)} in one")
        if groups[0].get("amsgrad") or groups[0].get("maximize"):
            raise Seq2SeqError("optimizer state: amsgrad/maximize Adam state cannot be continued here")
        by_index = dict(zip(groups[0]["params"], self.params))
        state = {}
        for i, saved in state_dict["state"].items():
            if i not in by_index:
                raise Seq2SeqError(f"optimizer state: parameter {i} is not in the saved group")
            p = by_index[i]
            if saved["exp_avg"].shape != p.shape:
                raise Seq2SeqError(f"optimizer state: parameter {i} has shape {tuple(saved['exp_avg'].shape)}, "
                                   f"the model's is {tuple(p.shape)}")
            # fresh tensors on the parameter's device (the kernel updates them in place)
            state[p] = {"step": saved["step"].to(device=p.device, dtype=torch.float32).clone(),
                        "exp_avg": saved["exp_avg"].to(device=p.device, dtype=p.dtype).clone(),
                        "exp_avg_sq": saved["exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone()}
        keep = {k: v for k, v in groups[0].items() if k != "params"}
        keep["betas"] = tuple(keep["betas"])
        keep.setdefault("decoupled_weight_decay", self.param_groups[0]["decoupled_weight_decay"])
        self.param_groups[0].update(keep)
        self.state = state
