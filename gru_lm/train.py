"""The training loop: TBPTT over B contiguous streams, AdamW, clipping, warm-up + cosine, evals, checkpoints."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, distributed
from .average import WeightAverage
from .config import Settings, to_toml
from .corpus import load_corpus
from .data import StreamBatcher, Vocab
from .device import autocast_dtype, pick_device, rng_state, set_rng_state
from .errors import UserError
from .evaluate import nll
from .kernels import compiled, keep_freed_memory
from .model import CharModel, ModelConfig

#: Settings a resumed run must share with the run it continues (they shape the model, data or RNG).
LOCKED_ON_RESUME = ("cell", "reset_after", "hidden_size", "layers", "embed_size", "batch_size", "seq_len",
                    "val_fraction", "val_file", "eval_chars", "seed")

#: What a checkpoint must hold, beyond the model, to continue a run from it exactly.
RESUME_KEYS = ("settings", "optimizer", "step", "epoch", "window", "chars", "elapsed_s", "val_loss", "best_val_loss",
               "rng", "hidden", "data")

#: Temporary files of checkpoint.atomic_write (".last.pt.k3j_x2.tmp") that a killed process leaves behind.
_STALE_TMP = re.compile(r"^\.(last\.pt|best\.pt|metrics\.jsonl|config\.toml)\..+\.tmp$")


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    chars: int
    elapsed_s: float
    val_loss: float
    best_val_loss: float
    interrupted: bool = False


def learning_rate(s: Settings, step: int, elapsed_s: float) -> float:
    """Linear warm-up over warmup_steps, then cosine decay from lr to min_lr over the budget.

    Progress through the budget is the larger of step/max_steps and elapsed/max_time, so a
    time-budgeted run still ends its decay at the deadline. Runs bounded only by max_steps
    follow the same schedule every time (what exact resume and --seed reproducibility rely on).
    """
    warm = min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else 1.0
    progress = budget_progress(s, step, elapsed_s)
    return warm * (s.min_lr + (s.lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def run_lock(out_dir: Path):
    """Hold an exclusive lock on out_dir/.lock so two trainings cannot write the same folder."""
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out_dir}: another training is writing to this folder") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def catch_stop_signals():
    """Turn the first Ctrl-C or SIGTERM into a flag checked between steps (so last.pt is saved).

    SIGTERM is what `kill`, `timeout` and job schedulers send before they stop a job for good; some
    send it to every process of a job, so a worker of --nproc can get it twice (also from the launcher),
    and a repeated SIGTERM changes nothing. A second Ctrl-C aborts at once.
    """
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, was in old.items():
            signal.signal(sig, was)


def make_out_dir(out_dir: Path) -> list[Path]:
    """Create the run folder and its missing parents; returns the folders created here, deepest first.

    The list is what a failed run removes again (see _remove_if_unused), so a mistake leaves no
    empty runs/ folder behind.
    """
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_if_unused(out_dir, created)
        raise UserError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        _remove_if_unused(out_dir, created)
        raise UserError(f"{out_dir}: the output folder is not writable")
    return created


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """--resume needs a last.pt; without it, a folder that holds a run is only replaced with --overwrite."""
    last = out_dir / "last.pt"
    if resume and not last.exists():
        raise UserError(f"{last}: no checkpoint to resume from; train without --resume first")
    if not resume and last.exists() and not overwrite:
        raise UserError(f"{out_dir}: already holds a run; use --resume to continue it, --overwrite to replace it, or another --out")


def check_resumable(state: dict, path: Path) -> dict:
    """A checkpoint holds everything needed to continue a run exactly, or UserError."""
    for key in RESUME_KEYS:
        if key not in state:
            raise UserError(f"{path}: cannot resume from this checkpoint: it holds no '{key}'")
    if not isinstance(state["settings"], dict) or not isinstance(state["data"], dict):
        raise UserError(f"{path}: cannot resume from this checkpoint: its settings are corrupt")
    if state["settings"].get("ema_decay") and not isinstance(state.get("train_model"), dict):
        raise UserError(f"{path}: cannot resume from this checkpoint: it holds no 'train_model' (the weights "
                        "behind its average; best.pt leaves them out)")
    return state


def _remove_if_unused(out_dir: Path, created: list[Path]) -> None:
    """A run that failed before writing anything leaves no folder behind (nor the parents it made)."""
    if not created:
        return
    try:
        if out_dir.is_dir():
            if {p.name for p in out_dir.iterdir()} - {".lock"}:
                return
            (out_dir / ".lock").unlink(missing_ok=True)
        for d in created:  # deepest first; stops at the first folder something else has written into
            d.rmdir()
    except OSError:
        pass


def _remove_stale_tmp(out_dir: Path) -> None:
    """Drop the temporary files of writes that a killed process never finished (called under the lock)."""
    for p in out_dir.iterdir():
        if _STALE_TMP.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines written after the checkpoint, so the log reads as one run.

    A torn last line (a write cut short by a full disk or a crash) is dropped too.
    """
    if not path.exists():
        return
    keep = []
    for ln in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(ln)
    checkpoint.atomic_write(path, lambda f: f.write("".join(k + "\n" for k in keep).encode()))


def train(
    file: str | Path,
    s: Settings,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    should_stop: Callable[[int], bool] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or continue) a character model on file into out_dir; returns where it stopped.

    should_stop(step) is checked after every step: tests use it to interrupt a run exactly as
    Ctrl-C does (save last.pt, no final evaluation).
    """
    out_dir = Path(out_dir)
    d = distributed.from_env()
    device = pick_device(s.device, d.local_rank)
    distributed.init(d, device)
    created: list[Path] = []
    try:
        with contextlib.ExitStack() as stack:

            def claim_out_dir() -> None:  # rank 0 alone owns the folder: the lock, the checks, the clean-up
                created[:] = make_out_dir(out_dir)
                stack.enter_context(run_lock(out_dir))  # first: a second training into the folder is told so, whatever its flags
                check_out_dir(out_dir, resume, overwrite)
                _remove_stale_tmp(out_dir)

            distributed.agree(d, claim_out_dir)
            signals = stack.enter_context(catch_stop_signals())
            return _train(file, s, out_dir, resume, should_stop, signals, progress and d.main, d, device)
    except UserError:
        _remove_if_unused(out_dir, created)
        raise
    except OSError as e:  # disk full, folder removed or made read-only under us: say so, not a traceback
        _remove_if_unused(out_dir, created)
        where = e.filename or out_dir
        raise UserError(f"{where}: could not write the run ({e.strerror or e}); "
                        f"{out_dir / 'last.pt'} keeps the last step saved") from None
    finally:
        distributed.shutdown()


def _train(file, s: Settings, out_dir: Path, resume: bool, should_stop, signals, progress: bool,
           d: distributed.Dist, device: torch.device) -> TrainResult:
    amp_dtype = autocast_dtype(s.dtype, device)
    mine = distributed.streams(s.batch_size, d)  # this process's streams
    local_batch = mine.stop - mine.start
    state = check_resumable(checkpoint.load(out_dir / "last.pt"), out_dir / "last.pt") if resume else None
    if state and state.get("world_size", 1) != d.world:
        raise UserError(f"{out_dir / 'last.pt'}: was trained by {state.get('world_size', 1)} processes; "
                        f"resume it with the same number, not {d.world}")
    corpus = load_corpus(file, s, Vocab(state["vocab"]) if state else None, progress=progress)
    if state and state["data"]["text_sha256"] != corpus.record["text_sha256"]:
        raise UserError(f"{file}: is not the text the run in {out_dir} was trained on")

    torch.manual_seed(s.seed)
    cfg = ModelConfig(len(corpus.vocab), s.cell, s.hidden_size, s.layers, s.embed_size, s.dropout, s.reset_after,
                      s.weight_drop)
    model = CharModel(cfg).to(device)
    net = model
    if d.on:  # the same initial weights everywhere (DDP also broadcasts rank 0's), then each its own dropout
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
        torch.manual_seed(s.seed + 7919 * (d.rank + 1))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("embed")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr, betas=(0.9, 0.99),
    )
    batcher = StreamBatcher(corpus.train_ids, s.batch_size, s.seq_len, s.seed)
    step = epoch = window = chars = 0
    elapsed0, best, val_loss = 0.0, math.inf, math.nan
    loss_sum, loss_n = 0.0, 0  # train losses since the last metrics line (their mean is logged)
    stale = 0  # evaluations in a row without a new best (early stopping with --patience)
    h = model.init_state(local_batch, device)
    if state:  # with averaging, "model" is the average and "train_model" the optimiser's weights
        model.load_state_dict(state.get("train_model", state["model"]))
        opt.load_state_dict(state["optimizer"])
        step, epoch, window, chars = state["step"], state["epoch"], state["window"], state["chars"]
        elapsed0, best, val_loss = state["elapsed_s"], state["best_val_loss"], state["val_loss"]
        loss_sum, loss_n = state.get("loss_sum", 0.0), state.get("loss_n", 0)
        stale = state.get("stale_evals", 0)
        h = state["hidden"][:, mine].to(device)
        set_rng_state(state["rank_rng"][d.rank] if d.on else state["rng"], device)
    avg = WeightAverage(model, s.ema_decay) if s.ema_decay else None
    if avg and state:  # (a run that averaged nothing before starts its average from its weights)
        avg.model.load_state_dict(state["model"])
    eval_model = avg.model if avg else model  # what is evaluated and saved as the checkpoint's model
    saved_step = step if state else None  # the step last.pt holds, for the NaN message
    config_text = f"# resolved settings of this run, trained on {Path(file)}; usable as --config\n" + to_toml(s.to_dict())
    metrics_path = out_dir / "metrics.jsonl"
    if d.main:
        checkpoint.atomic_write(out_dir / "config.toml", lambda f: f.write(config_text.encode()))
        if state:
            _trim_metrics(metrics_path, step)
        else:  # a fresh run (or --overwrite): nothing of an earlier run may be resumed or mixed in
            for name in ("metrics.jsonl", "last.pt", "best.pt"):
                (out_dir / name).unlink(missing_ok=True)

    def snapshot() -> dict:
        """Everything --resume needs; every process takes part (its streams' state and RNG are gathered)."""
        hidden = distributed.gather_streams(d, h.detach()).cpu()
        rngs = distributed.gather_objects(d, rng_state(device))
        snap = {
            "model_config": cfg.to_dict(), "settings": s.to_dict(), "vocab": corpus.vocab.chars,
            "model": eval_model.state_dict(), "optimizer": opt.state_dict(),
            "step": step, "epoch": epoch, "window": window, "chars": chars,
            "elapsed_s": elapsed_now(), "val_loss": val_loss, "best_val_loss": best,
            "loss_sum": distributed.mean_of(d, loss_sum, device), "loss_n": loss_n, "stale_evals": stale,
            "rng": rngs[0], "hidden": hidden, "data": corpus.record,
        }
        if avg:
            snap["train_model"] = model.state_dict()
        if d.on:
            snap["world_size"], snap["rank_rng"] = d.world, rngs
        return snap

    def not_finite(what: str, value: float, at: int) -> UserError:
        kept = (f"{out_dir / 'last.pt'} still holds step {saved_step}" if saved_step is not None
                else "no checkpoint had been written yet")
        return UserError(f"the {what} became {value} at step {at}; stopped without saving it: {kept}; try a lower --lr")

    def save_last(snap: dict) -> None:
        nonlocal saved_step
        if d.main:
            checkpoint.save(out_dir / "last.pt", snap)
        saved_step = snap["step"]

    if device.type == "cpu":
        compiled()  # build (or load) the compiled CPU kernels before the clock starts
    keep_freed_memory()
    distributed.barrier(d)  # every process has built its kernels: start the clocks together
    t0, chars0 = time.perf_counter(), chars
    elapsed_now = lambda: elapsed0 + time.perf_counter() - t0  # noqa: E731
    # the budget is judged on the clock all processes agree on (the slowest one's), once per step
    budget_over = lambda clock: (s.max_steps and step >= s.max_steps) or (s.max_time and clock >= s.max_time)  # noqa: E731

    def evaluate(log: dict) -> bool:
        """Validation loss into log; returns whether it improved on the best so far."""
        nonlocal val_loss, best
        loss = math.nan
        if d.main:  # the others wait for rank 0's figure
            total, n = nll(eval_model, corpus.val_ids[: s.eval_chars or None], s.eval_streams, device=device)
            loss = total / n
        loss = distributed.from_main(d, loss, device)
        if not math.isfinite(loss):
            raise not_finite("validation loss", loss, step)
        val_loss = loss
        log["val_loss"] = val_loss
        improved = val_loss < best
        best = min(best, val_loss)
        return improved

    def save_checkpoints(improved: bool) -> None:
        snap = snapshot()
        # best.pt first: a crash between the two writes leaves last.pt one evaluation behind,
        # and resuming from it redoes that evaluation and writes best.pt again. The other
        # order could leave a last.pt whose best_val_loss no best.pt holds, for good.
        if improved and d.main:  # (the optimiser's own weights matter to --resume only, from last.pt)
            checkpoint.save(out_dir / "best.pt", {k: v for k, v in snap.items() if k != "train_model"})
        save_last(snap)

    bar = tqdm(total=1.0, disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=True, mininterval=0.5,
               bar_format="{desc} |{bar}| {percentage:3.0f}%")
    model.train()
    interrupted = stopped_early = False
    clock = distributed.max_of(d, [elapsed_now()], device)[0]  # the first step's learning rate too
    say = bar.write if d.main else (lambda *a, **k: None)
    with (open(metrics_path, "a") if d.main else open(os.devnull, "w")) as metrics, bar:
        while not budget_over(clock):
            if window == 0:
                h = model.init_state(local_batch, device)  # new epoch: streams re-offset, state starts afresh
            x, y = (t[:, mine].to(device) for t in batcher.get(epoch, window))
            lr = learning_rate(s, step, clock)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits, h_next = net(x, h)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            if not d.on and not torch.isfinite(loss):  # (under DDP the norm below, the same on every rank, catches it)
                raise not_finite("loss", loss.item(), step + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # the norm is needed anyway to check the gradient: a NaN in it must not reach the weights
            # (with grad_clip 0 the factor is exactly 1, so the update is untouched)
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip or math.inf))
            if not math.isfinite(norm):
                raise not_finite("gradient norm", norm, step + 1)
            opt.step()
            if avg:
                avg.update(step)
            h = h_next.detach()  # truncated BPTT: the state carries on, its gradient stops here
            step += 1
            chars += x.numel() * d.world
            window += 1
            if window >= batcher.windows(epoch):
                epoch, window = epoch + 1, 0
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1

            asked = signals["stop"] or bool(should_stop and should_stop(step))
            clock, stop = distributed.max_of(d, [elapsed_now(), float(asked)], device)
            at_eval, at_end = step % s.eval_every == 0, bool(budget_over(clock))
            if step % s.log_every == 0 or at_eval or at_end:
                elapsed = clock
                log = {"step": step, "chars": chars, "elapsed_s": round(elapsed, 3), "lr": lr,
                       "train_loss": distributed.mean_of(d, loss_sum / loss_n, device), "epoch": epoch}
                loss_sum, loss_n = 0.0, 0
                improved = evaluate(log) if at_eval or at_end else False
                # the metrics line goes to disk before the checkpoint of its step: a crash in between
                # leaves a line past last.pt, which --resume trims, never a step missing from the log
                metrics.write(json.dumps(log) + "\n")
                metrics.flush()
                rate = (chars - chars0) / max(elapsed - elapsed0, 1e-9)
                if at_eval or at_end:
                    stale = 0 if improved else stale + 1
                    stopped_early = bool(s.patience) and stale >= s.patience
                    if d.main:
                        os.fsync(metrics.fileno())
                    save_checkpoints(improved)
                    say(_eval_line(log, rate), file=sys.stderr)
                frac = budget_progress(s, step, elapsed)
                bar.n = frac
                val = f"{val_loss:.3f}" if math.isfinite(val_loss) else "-"
                bar.set_description_str(
                    f"step {step} | loss {log['train_loss']:.3f} | val {val} | {rate / 1000:.1f}k chars/s | "
                    f"left {_fmt_time(_time_left(s, step, elapsed, rate))}"
                )
            if stopped_early:
                say(f"early stop: no better validation loss in the last {s.patience} evaluations", file=sys.stderr)
                break
            if stop:
                if not at_eval and not at_end:
                    save_last(snapshot())
                interrupted = True
                break
    return TrainResult(out_dir, step, chars, elapsed_now(), val_loss, best, interrupted)


def _eval_line(log: dict, rate: float) -> str:
    return (f"step {log['step']:>6} | chars {log['chars']:>11,} | {log['elapsed_s']:7.1f}s | "
            f"train {log['train_loss']:.4f} | val {log['val_loss']:.4f} | {rate / 1000:.1f}k chars/s")


def budget_progress(s: Settings, step: int, elapsed: float) -> float:
    """How far through its budget (0..1) a run is: the larger of the step and the time fractions."""
    p = 0.0
    if s.max_steps:
        p = max(p, step / s.max_steps)
    if s.max_time:
        p = max(p, elapsed / s.max_time)
    return min(1.0, p)


def _time_left(s: Settings, step: int, elapsed: float, rate: float) -> float:
    left = math.inf
    if s.max_time:
        left = s.max_time - elapsed
    if s.max_steps and rate > 0:
        left = min(left, (s.max_steps - step) * s.batch_size * s.seq_len / rate)
    return max(0.0, left)


def _fmt_time(sec: float) -> str:
    if not math.isfinite(sec):
        return "?"
    m, s = divmod(int(sec), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
