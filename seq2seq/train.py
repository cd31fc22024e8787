"""The training loop: step, validate, checkpoint, early stop, resume; DDP-aware.

Run with `seq2seq train RECIPE`, or under `torchrun --nproc_per_node N` for
data-parallel training (gloo on CPU, nccl on CUDA): every rank takes its shard of each
epoch's batches; rank 0 validates, logs and writes checkpoints, and broadcasts the
validation BLEU so that every rank steps its learning-rate schedule the same way.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from seq2seq import checkpoint, precision, quantize, scoring
from seq2seq.batching import Batch, TokenBatchSampler, collate, eval_batches
from seq2seq.noise import Noise
from seq2seq.config import Config, DecodeConfig, diff, dump_toml, from_dict, to_dict, upgrade
from seq2seq.dataset import Split
from seq2seq.errors import Seq2SeqError
from seq2seq.model import Objective, Seq2Seq, build_model, summary
from seq2seq.optim import FUSED_DEVICES, FusedAdam
from seq2seq.prepare import Prepared, prepare
from seq2seq.translate import decode_ids, reading_order

# Keys that may change when resuming: they steer the run, not the model or its data.
RESUMABLE = ("train.max_steps", "train.max_epochs", "train.max_minutes", "train.valid_every",
             "train.patience", "train.keep_last", "train.log_every", "train.threads", "train.precision",
             "train.device", "train.max_bad_steps", "train.warmup_steps", "train.valid_beam", "train.tensorboard",
             "decode", "data.data_dir", "data.test_splits", "data.test")


@dataclass
class LRSchedule:
    """Warmup then constant or inverse-sqrt, times a reduce-on-plateau factor (by val BLEU)."""

    base: float
    kind: str
    warmup: int
    factor: float
    patience: int
    min_lr: float
    scale: float = 1.0
    best: float = -math.inf
    bad: int = 0

    def lr(self, step: int) -> float:
        s = step + 1
        warm = min(1.0, s / self.warmup) if self.warmup else 1.0
        decay = math.sqrt(self.warmup / s) if (self.kind == "inverse_sqrt" and s > self.warmup) else 1.0
        if self.kind == "inverse_sqrt" and not self.warmup:
            decay = 1.0 / math.sqrt(s)
        return max(self.base * warm * decay * self.scale, self.min_lr)

    def observe(self, bleu: float) -> None:
        if bleu > self.best:
            self.best, self.bad = bleu, 0
        elif self.kind == "plateau":
            self.bad += 1
            if self.bad > self.patience:
                self.scale, self.bad = self.scale * self.factor, 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, d: dict) -> None:
        self.scale, self.best, self.bad = d["scale"], d["best"], d["bad"]


@dataclass
class Progress:
    """Everything besides weights and optimizer that a resumed run must continue from."""

    step: int = 0
    elapsed: float = 0.0          # seconds of training so far, across resumes
    best_bleu: float = -1.0
    best_step: int = 0
    since_best: int = 0           # validations without improvement (early stopping)
    bad_steps: int = 0            # consecutive non-finite updates
    skipped_steps: int = 0        # all non-finite updates
    loss_avg: float | None = None  # smoothed training loss, so logged losses continue across a resume
    history: list = field(default_factory=list)


# ---------------------------------------------------------------- set-up


def setup_device(cfg: Config) -> torch.device:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise Seq2SeqError("train.device = 'cuda' but no CUDA device is available")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def setup_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def make_optimizer(model: Seq2Seq, cfg: Config) -> FusedAdam | torch.optim.Optimizer:
    """Adam or AdamW with torch's fused kernel: one pass over each parameter instead of one per
    operation (bench/kernel_speed.py compares it with the foreach update).
    seq2seq.optim.FusedAdam calls the kernel as torch.optim.Adam(fused=True) does, without
    importing torch._dynamo at start-up; torch.optim's Adam on other devices."""
    t = cfg.train
    params = list(model.parameters())
    if all(p.device.type in FUSED_DEVICES for p in params):
        return FusedAdam(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                         decoupled=t.optimizer == "adamw")
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


# ---------------------------------------------------------------- one step


def train_step(objective, optimizer, batch: Batch, cfg: Config, lr: float, autocast) -> tuple[float, float, bool]:
    """Forward, backward, clip, update. Returns (loss per token, grad norm, finite)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        loss, _ = objective(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, batch.tgt_out,
                            batch.tgt_mask, cfg.train.label_smoothing, cfg.train.teacher_forcing)
    loss = loss / batch.ntokens
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = cfg.train.clip_norm if cfg.train.clip_norm > 0 else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(objective.parameters(), max_norm))
    loss_value = loss.item()
    finite = math.isfinite(norm) and math.isfinite(loss_value)
    if finite:
        optimizer.step()
    return loss_value, norm, finite


# ---------------------------------------------------------------- validation


def valid_decode_config(cfg: Config) -> DecodeConfig:
    """How validation BLEU decodes: every [decode] setting, with beam = train.valid_beam and one
    hypothesis. Validation BLEU picks best.pt and drives the plateau schedule, so it must decode
    the way `evaluate` will (no_repeat_ngram, min length and coverage penalty included)."""
    return replace(cfg.decode, beam=cfg.train.valid_beam, nbest=1)


@torch.no_grad()
def validate(model: Seq2Seq, split: Split, prepared: Prepared, cfg: Config,
             device: torch.device, decode_in: str = "float32") -> dict:
    """Teacher-forced loss/perplexity and decoded sacreBLEU on the validation split; the decoding
    runs in `decode_in` (as chosen at the start of the run from decode.precision)."""
    model.eval()
    nll_sum, tokens = 0.0, 0
    for indices in eval_batches(split.sizes(), cfg.train.batch_tokens):
        batch = collate(split, indices, cfg.model.right_to_left).to(device)
        _, nll = model.loss(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, batch.tgt_out,
                            batch.tgt_mask, 0.0)
        nll_sum += float(nll)
        tokens += batch.ntokens
    decode = valid_decode_config(cfg)
    hyps = reading_order(decode_ids(quantize.for_decoding(model, decode_in), split.src, decode, device),
                         cfg.model.target_order)
    texts = prepared.tokenizers.tgt.decode([h[0].tokens for h in hyps])
    bleu = scoring.corpus_bleu(texts, split.refs)
    model.train()
    return {"valid_loss": nll_sum / tokens, "valid_ppl": math.exp(min(nll_sum / tokens, 50)),
            "valid_bleu": bleu, "examples": texts[:2]}


# ---------------------------------------------------------------- checkpoints


def make_payload(model: Seq2Seq, optimizer, schedule: LRSchedule, sampler: TokenBatchSampler,
                 progress: Progress, cfg: Config, prepared: Prepared, trained_in: str) -> dict:
    return {
        "config": to_dict(cfg), "tokenizer": prepared.tokenizers.to_payload(), "precision": trained_in,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(), "sampler": sampler.state_dict(),
        "progress": vars(progress).copy(), "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def check_before_prepare(cfg: Config, expdir: Path, resume: bool) -> None:
    """Refuse to touch an experiment directory that holds another run: preparing first could
    retrain its SentencePiece model and orphan its checkpoints."""
    last = expdir / "checkpoints" / "last.pt"
    if resume:
        if not last.exists():
            raise Seq2SeqError(f"--resume: no checkpoint at {last}")
        check_resumable(from_dict(upgrade(checkpoint.load(last)["config"])), cfg)
    elif last.exists():
        raise Seq2SeqError(f"{expdir} already holds a training run; use --resume or another --out")


def check_resumable(old: Config, new: Config) -> None:
    changed = [k for k in diff(old, new) if not any(k == r or k.startswith(r + ".") for r in RESUMABLE)]
    if changed:
        raise Seq2SeqError("cannot --resume with a changed recipe; these keys differ from the checkpoint: "
                           + ", ".join(changed))


# ---------------------------------------------------------------- the loop


def run(cfg: Config, expdir: Path, data_dir: str | None = None, resume: bool = False) -> dict:
    """Prepare (rank 0 first, the others then reuse its cache) and train."""
    check_before_prepare(cfg, expdir, resume)  # before prepare() may retrain the tokenizer
    device = setup_device(cfg)
    had_group = dist.is_initialized()
    rank, world = setup_distributed(device)
    try:
        if rank != 0:
            dist.barrier()
        prepared = prepare(cfg, expdir, data_dir, log=print if rank == 0 else (lambda *a: None))
        if rank == 0 and world > 1:
            dist.barrier()
        return train(cfg, expdir, prepared, resume)
    finally:
        if dist.is_initialized() and not had_group:  # the group setup_distributed made here
            # Tear down while the interpreter is whole: DDP's reference cycles keep the group (and
            # gloo's worker threads) alive until a collection, and a group left to the interpreter's
            # exit can abort the process ("terminate called without an active exception").
            gc.collect()
            dist.destroy_process_group()


class StopRequest:
    """SIGINT/SIGTERM: finish the current step, checkpoint, exit 130/143."""

    def __init__(self):
        self.signum = 0

    def __enter__(self):
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


class Interrupted(Exception):
    def __init__(self, signum: int, last: Path):
        super().__init__(f"interrupted; resume with --resume (checkpoint {last})")
        self.exit_code = 128 + signum


class MetricsLog:
    """Appends records to EXPDIR/metrics.jsonl (rank 0 only) and, when train.tensorboard is
    set, writes their numeric fields as TensorBoard scalars too."""

    def __init__(self, expdir: Path, enabled: bool, tensorboard: bool):
        self.path, self.enabled, self.writer = expdir / "metrics.jsonl", enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise Seq2SeqError("train.tensorboard = true needs the tensorboard package: "
                                   "pip install tensorboard") from None
            self.writer = SummaryWriter(str(expdir / "tensorboard"))  # purge_step set in start()

    def start(self, step: int) -> None:
        """A fresh run starts an empty log; a resumed one drops what came after its checkpoint
        (those steps are trained again) and a torn last line from a killed write."""
        if not self.enabled:
            return
        kept = []
        if step > 0 and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").split("\n"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", record.get("steps", 0)) <= step:
                    kept.append(line + "\n")
        checkpoint.atomic_write_bytes(self.path, "".join(kept).encode())

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self.writer.add_scalar(f"{record['type']}/{key}", value, record["step"])
            self.writer.flush()


@dataclass
class Run:
    """The pieces of one training run, passed to the loop's short functions."""

    cfg: Config
    expdir: Path
    prepared: Prepared
    device: torch.device
    rank: int
    world: int
    model: Seq2Seq
    objective: torch.nn.Module    # Objective(model): model.loss as a module, wrapped for DDP when world > 1
    optimizer: FusedAdam | torch.optim.Optimizer
    schedule: LRSchedule
    sampler: TokenBatchSampler
    noise: Noise                  # subword sampling and word dropout on training batches (may be none)
    progress: Progress
    metrics: MetricsLog
    precision: tuple[str, str]    # the products' format in training (float32 | bfloat16) and why
    decoding: tuple[str, str]     # the format validation decodes in (decode.precision) and why

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def payload(self) -> dict:
        return make_payload(self.model, self.optimizer, self.schedule, self.sampler, self.progress,
                            self.cfg, self.prepared, self.precision[0])


def train(cfg: Config, expdir: Path, prepared: Prepared, resume: bool = False) -> dict:
    run = _build_run(cfg, expdir, prepared, resume)
    if run.is_main:
        checkpoint.atomic_write_bytes(expdir / "config.toml", dump_toml(cfg).encode())
        run.log(summary(run.model))
    with StopRequest() as stop:
        _loop(run, stop)
    p = run.progress
    result = {"best_bleu": p.best_bleu, "best_step": p.best_step, "steps": p.step,
              "minutes": p.elapsed / 60, "skipped_steps": p.skipped_steps}
    if run.world > 1:
        result["rank_checksums"] = _rank_checksums(run.model, run.world)
    run.metrics.write({"type": "summary", **result})
    run.log(f"done: {p.step} steps in {p.elapsed / 60:.1f} min; best valid BLEU {p.best_bleu:.2f} "
            f"at step {p.best_step}")
    return result


def _build_run(cfg: Config, expdir: Path, prepared: Prepared, resume: bool) -> Run:
    check_before_prepare(cfg, expdir, resume)  # again here: train() may be called without run()
    device = setup_device(cfg)
    rank, world = setup_distributed(device)
    torch.manual_seed(cfg.train.seed)
    t = cfg.train
    model = build_model(cfg.model, len(prepared.tokenizers.src), len(prepared.tokenizers.tgt)).to(device)
    run = Run(cfg, expdir, prepared, device, rank, world, model,
              torch.nn.parallel.DistributedDataParallel(Objective(model)) if world > 1 else Objective(model),
              make_optimizer(model, cfg),
              LRSchedule(t.lr, t.schedule, t.warmup_steps, t.plateau_factor, t.plateau_patience, t.min_lr),
              TokenBatchSampler(prepared.splits["train"].sizes(), t.batch_tokens, t.seed, rank, world),
              Noise(t, prepared.tokenizers, rank, cfg.model.right_to_left), Progress(),
              MetricsLog(expdir, rank == 0, t.tensorboard),
              precision.training(t.precision, device),
              precision.decoding(cfg.decode.precision, device))  # a choice this device lacks fails here, not later
    if resume:
        for stale in (expdir / "checkpoints").glob(".*.tmp*"):  # from a write that was killed
            stale.unlink(missing_ok=True)
        _restore(run, expdir / "checkpoints" / "last.pt")
    run.metrics.start(run.progress.step)
    run.metrics.write({"type": "start", "step": run.progress.step, "precision": run.precision[0],
                       "precision_reason": run.precision[1], "decode_precision": run.decoding[0],
                       "decode_precision_reason": run.decoding[1]})
    return run


def _loop(run: Run, stop: StopRequest) -> None:
    t, p = run.cfg.train, run.progress
    train_split = run.prepared.splits["train"]
    autocast = precision.autocast(run.precision[0], run.device)
    run.log(f"precision: {run.precision[0]} ({run.precision[1]}); validation decodes in {run.decoding[0]} "
            f"({run.decoding[1]})")
    bar = tqdm(total=t.max_steps or None, initial=p.step, disable=not run.is_main,
               dynamic_ncols=True, unit="step", smoothing=0.05)
    started, window_tokens, window_start = time.monotonic() - p.elapsed, 0, time.monotonic()
    while not _should_stop(run, started, stop):
        if stop.signum:  # after the step that was running when the signal came (all ranks agree)
            if run.is_main:
                checkpoint.save(run.payload(), run.expdir / "checkpoints" / "last.pt")
            bar.close()
            raise Interrupted(stop.signum, run.expdir / "checkpoints" / "last.pt")
        indices = run.sampler.next_batch()
        batch = (run.noise.batch(train_split, indices, p.step) if run.noise.active
                 else collate(train_split, indices, run.cfg.model.right_to_left)).to(run.device)
        lr = run.schedule.lr(p.step)
        loss, norm, finite = train_step(run.objective, run.optimizer, batch, run.cfg, lr, autocast)
        p.step += 1
        p.elapsed = time.monotonic() - started
        _account(run, loss, norm, finite)
        window_tokens += batch.ntokens * run.world
        bar.update(1)
        if p.step % t.log_every == 0:
            tok_s = window_tokens / max(time.monotonic() - window_start, 1e-9)
            bar.set_postfix(loss=f"{p.loss_avg or 0:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}")
            run.metrics.write({"type": "train", "step": p.step, "epoch": run.sampler.epoch, "loss": p.loss_avg,
                               "lr": lr, "tok_per_s": tok_s, "minutes": p.elapsed / 60})
            window_tokens, window_start = 0, time.monotonic()
        if p.step % t.valid_every == 0:
            _validate_and_save(run)
    bar.close()
    if not p.history or p.history[-1]["step"] != p.step:  # the final state is always validated and saved
        _validate_and_save(run)


def _account(run: Run, loss: float, norm: float, finite: bool) -> None:
    """Smoothed loss for good steps; count skipped (non-finite) ones and give up after too many."""
    p = run.progress
    if finite:
        p.bad_steps = 0
        p.loss_avg = loss if p.loss_avg is None else 0.98 * p.loss_avg + 0.02 * loss
        return
    p.bad_steps += 1
    p.skipped_steps += 1
    run.metrics.write({"type": "skipped", "step": p.step, "loss": loss, "grad_norm": norm})
    if p.bad_steps >= run.cfg.train.max_bad_steps:
        raise Seq2SeqError(f"{p.bad_steps} consecutive non-finite steps (train.max_bad_steps); "
                           f"the last good checkpoint is kept in {run.expdir / 'checkpoints'}")


def _should_stop(run: Run, started: float, stop: StopRequest) -> bool:
    t, p = run.cfg.train, run.progress
    done = ((t.max_steps and p.step >= t.max_steps)
            or (t.max_epochs and run.sampler.epoch >= t.max_epochs)
            or (t.max_minutes and time.monotonic() - started >= t.max_minutes * 60)
            or (t.patience and p.since_best >= t.patience))
    if run.world > 1:  # wall time differs between ranks: rank 0 decides; a signal on any rank counts
        flags = torch.tensor([float(bool(done)) if run.is_main else 0.0, float(stop.signum)])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        done, stop.signum = bool(flags[0].item()), int(flags[1].item())
    return bool(done)


def _validate_and_save(run: Run) -> None:
    """Rank 0 validates and broadcasts BLEU so every rank steps its schedule alike."""
    p = run.progress
    result = (validate(run.model, run.prepared.splits["valid"], run.prepared, run.cfg, run.device, run.decoding[0])
              if run.is_main else {})
    bleu = torch.tensor([result.get("valid_bleu", 0.0)], dtype=torch.float64)
    if run.world > 1:
        dist.broadcast(bleu, 0)
    bleu = float(bleu.item())
    run.schedule.observe(bleu)
    improved = bleu > p.best_bleu
    if improved:
        p.best_bleu, p.best_step, p.since_best = bleu, p.step, 0
    else:
        p.since_best += 1
    p.history.append({"step": p.step, "minutes": p.elapsed / 60, "valid_bleu": bleu})  # on every rank
    if not run.is_main:
        return
    record = {"type": "valid", "step": p.step, "epoch": run.sampler.epoch, "minutes": p.elapsed / 60,
              "train_loss": p.loss_avg, **{k: v for k, v in result.items() if k != "examples"},
              "lr": run.schedule.lr(p.step)}
    checkpoint.save_step(run.payload(), run.expdir, p.step, run.cfg.train.keep_last, improved)
    run.metrics.write(record)
    run.log(f"step {p.step} ({p.elapsed / 60:.1f} min): valid loss {result['valid_loss']:.3f} "
            f"ppl {result['valid_ppl']:.2f} BLEU {bleu:.2f}{' (best)' if improved else ''} | {result['examples'][0]}")


def _restore(run: Run, last: Path) -> None:
    """Everything a resumed run continues from (the checkpoint was checked by check_before_prepare)."""
    payload = checkpoint.load(last, map_location=run.device)
    if "optimizer" not in payload:
        raise Seq2SeqError(f"{last}: this checkpoint has no training state (an average?); it can translate "
                           "but not be resumed")
    run.model.load_state_dict(payload["model"])
    trained_in = checkpoint.trained_in(payload)
    if trained_in != run.precision[0]:  # allowed (another machine, another choice), but said
        run.log(f"resuming in {run.precision[0]} a run trained so far in {trained_in}")
        run.precision = (run.precision[0], f"{run.precision[1]}; trained in {trained_in} before step "
                                           f"{payload['progress']['step']}")
    run.optimizer.load_state_dict(payload["optimizer"])
    run.schedule.load_state_dict(payload["schedule"])
    run.sampler.load_state_dict(payload["sampler"])
    for k, v in payload["progress"].items():
        setattr(run.progress, k, v)
    torch.set_rng_state(payload["rng"])
    if payload.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])


def _rank_checksums(model: Seq2Seq, world: int) -> list[str]:
    """sha256 of every rank's weights, bit for bit: DDP must keep the replicas identical."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    gathered: list = [None] * world
    dist.all_gather_object(gathered, digest.hexdigest())
    return gathered
