"""The training loop: truncated BPTT over B contiguous streams, AdamW, clipping, evaluations, checkpoints.

`train()` claims the run folder and builds a `Run` (model, optimiser, data, the state to continue
from); `_loop()` is the loop itself, and each thing a step does is a named function below it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from gru_lm.analysis.evaluate import nll
from gru_lm.errors import UserError
from gru_lm.machine import distributed
from gru_lm.machine.cpu import trained_on
from gru_lm.machine.device import pick_autocast_dtype, pick_device, rng_state, set_rng_state
from gru_lm.machine.memory import keep_freed_memory
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.model.kernels import compiled
from gru_lm.text.batches import StreamBatcher
from gru_lm.text.corpus import Corpus, load_corpus
from gru_lm.text.vocab import Vocab
from gru_lm.training import init_from, run_folder
from gru_lm.training import resume as resuming
from gru_lm.training.fit_to_machine import fit_to_machine
from gru_lm.training.optimizer import build_optimizer
from gru_lm.training.progress import Progress
from gru_lm.training.run_state import RunState
from gru_lm.training.schedule import budget_over, learning_rate
from gru_lm.training.settings import Settings, to_toml
from gru_lm.training.weight_average import WeightAverage


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    chars: int
    elapsed_s: float
    val_loss: float
    best_val_loss: float
    interrupted: bool = False
    train_chars: int = 0  # the length of the training text


@dataclass
class Run:
    """Everything one training process works with; `state` is what changes from step to step."""

    settings: Settings
    job: distributed.Dist
    device: torch.device
    out_dir: Path
    corpus: Corpus
    model: CharModel  # the optimiser's weights
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    average: WeightAverage[CharModel] | None
    batcher: StreamBatcher
    streams: slice  # this process's share of the B streams
    autocast_dtype: torch.dtype | None  # autocast's dtype for --dtype bfloat16 (None: plain float32)
    state: RunState
    saved_step: int | None  # the step last.pt holds (for the message when a loss turns NaN)
    origin: dict | None = None  # the checkpoint the run started from (--init-from), as its checkpoints record it
    start_s: float = 0.0  # time.perf_counter() when this process's part of the run started

    @property
    def eval_model(self) -> CharModel:
        """What is evaluated and saved as the checkpoint's model: the weight average where there is one."""
        return self.average.model if self.average else self.model

    def elapsed(self) -> float:
        return self.state.elapsed_s + time.perf_counter() - self.start_s


def train(
    file: str | Path,
    settings: Settings,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    should_stop: Callable[[int], bool] | None = None,
    progress: bool = True,
    resume_point: resuming.ResumePoint | None = None,
    start_point: init_from.StartPoint | None = None,
    given: Collection[str] = (),
) -> TrainResult:
    """Train (or continue) a character model on file into out_dir; returns where it stopped.

    resume_point is last.pt and start_point the checkpoint of settings.init_from, as the caller
    already loaded them (else they are loaded here; a resumed run never reads init_from again: its
    last.pt holds everything). should_stop(step) is checked after every step: tests use it to
    interrupt a run exactly as Ctrl-C does. `given` names the settings the user gave (flags,
    keywords): fitting the run to the machine keeps their values.
    """
    out_dir = Path(out_dir)
    start = None if resume else _start_point(settings, start_point)
    job = distributed.from_env()
    device = pick_device(settings.device, job.local_rank)
    distributed.init(job, device)
    created: list[Path] = []
    try:
        with contextlib.ExitStack() as stack:

            def claim() -> None:  # rank 0 alone owns the folder: the lock, the checks, the clean-up
                created[:] = run_folder.claim(out_dir, resume, overwrite, stack)
                if resume_point is not None:
                    resuming.check_unchanged(resume_point)

            distributed.agree(job, claim)
            point = (resume_point or resuming.load(out_dir)) if resume else None
            stop = stack.enter_context(catch_stop_signals())
            run = _build_run(file, settings, out_dir, point, start, job, device, given)
            return _loop(
                run,
                lambda step: stop["stop"] or bool(should_stop and should_stop(step)),
                Progress(settings, show_bar=progress and job.main, speak=job.main),
            )
    except UserError:
        run_folder.remove_if_unused(out_dir, created)
        raise
    except OSError as e:  # disk full, folder removed or made read-only under us: say so, not a traceback
        run_folder.remove_if_unused(out_dir, created)
        raise UserError(
            f"{e.filename or out_dir}: could not write the run ({e.strerror or e}); "
            f"{out_dir / 'last.pt'} keeps the last step saved"
        ) from None
    finally:
        distributed.shutdown()


def _loop(run: Run, stop_asked: Callable[[int], bool], progress: Progress) -> TrainResult:
    """The training loop: one window of every stream per step, until the budget, Ctrl-C or --patience ends it."""
    s, state, job = run.settings, run.state, run.job
    _prepare_compute(run)
    run.start_s, chars0, elapsed0 = time.perf_counter(), state.chars, state.elapsed_s
    clock = distributed.max_of(job, [run.elapsed()], run.device)[0]  # the first step's learning rate too
    interrupted = stopped_early = False
    with _metrics_file(run) as metrics, progress:
        while not budget_over(s, state.step, clock):
            if state.window == 0:  # new epoch: streams re-offset, state starts afresh
                state.hidden = run.model.init_state(run.streams.stop - run.streams.start, run.device)
            x, y = (t[:, run.streams].to(run.device) for t in run.batcher.get(state.epoch, state.window))
            lr = learning_rate(s, state.step, clock)
            loss = train_step(run, x, y, lr)
            state.advance(x.numel() * job.world, run.batcher.windows(state.epoch), loss)
            # the clock and a stop asked for by any process are agreed on, so all take the same steps
            clock, stop = distributed.max_of(job, [run.elapsed(), float(stop_asked(state.step))], run.device)
            at_eval = state.step % s.eval_every == 0 or budget_over(s, state.step, clock)
            if state.step % s.log_every == 0 or at_eval:
                log = {
                    "step": state.step,
                    "chars": state.chars,
                    "elapsed_s": round(clock, 3),
                    "lr": lr,
                    "train_loss": distributed.mean_of(job, state.take_mean_loss(), run.device),
                    "epoch": state.epoch,
                }
                improved = evaluate(run, log) if at_eval else False
                # the metrics line goes to disk before the checkpoint of its step: a crash in between
                # leaves a line past last.pt, which --resume trims, never a step missing from the log
                metrics.write(json_line(log))
                metrics.flush()
                rate = (state.chars - chars0) / max(clock - elapsed0, 1e-9)
                if at_eval:
                    stopped_early = bool(s.patience) and state.stale_evals >= s.patience
                    if job.main:
                        os.fsync(metrics.fileno())
                    save_checkpoints(run, improved)
                    progress.say(eval_line(log, rate))
                progress.update(state, log, rate)
            if stopped_early:
                progress.say(f"early stop: no better validation loss in the last {s.patience} evaluations")
                break
            if stop:
                if not at_eval:
                    save_last(run, snapshot(run))
                interrupted = True
                break
    return TrainResult(
        run.out_dir,
        state.step,
        state.chars,
        run.elapsed(),
        state.val_loss,
        state.best_val_loss,
        interrupted,
        len(run.corpus.train_ids),
    )


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
    """Forward, backward, clip and update on one window; carries the hidden state on. Returns the loss."""
    autocast_dtype = run.autocast_dtype
    for g in run.opt.param_groups:
        g["lr"] = lr
    with torch.autocast(run.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss, h_next = run.net(x, run.state.hidden, y)  # the fused read-out's loss (CharModel.forward with targets)
    if not run.job.parallel and not torch.isfinite(loss):  # (under DDP the norm below, the same everywhere, catches it)
        raise not_finite(run, "loss", loss.item(), run.state.step + 1)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    # the norm is needed anyway to check the gradient: a NaN in it must not reach the weights
    # (with grad_clip 0 the factor is exactly 1, so the update is untouched)
    norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip or math.inf))
    if not math.isfinite(norm):
        raise not_finite(run, "gradient norm", norm, run.state.step + 1)
    run.opt.step()
    if run.average:
        run.average.update(run.state.step)
    run.state.hidden = h_next.detach()  # truncated BPTT: the state carries on, its gradient stops here
    return loss.item()


def evaluate(run: Run, log: dict) -> bool:
    """The validation loss (rank 0 computes it, all take it) into the state and log; returns whether it is a new
    best."""
    loss = math.nan
    if run.job.main:
        ids, bounds = run.corpus.validation_sample(run.settings.eval_chars)
        total, n = nll(run.eval_model, ids, run.settings.eval_streams, device=run.device, bounds=bounds)
        loss = total / n
    loss = distributed.from_main(run.job, loss, run.device)
    if not math.isfinite(loss):
        raise not_finite(run, "validation loss", loss, run.state.step)
    log["val_loss"] = loss
    return run.state.record_evaluation(loss)


def snapshot(run: Run) -> dict:
    """Everything --resume needs; every process takes part (its streams' state and RNG are gathered)."""
    job, state = run.job, run.state
    rngs = distributed.gather_objects(job, rng_state(run.device))
    snap = {
        "model_config": run.model.cfg.to_dict(),
        "settings": run.settings.to_dict(),
        "vocab": run.corpus.vocab.chars,
        "model": run.eval_model.state_dict(),
        "optimizer": run.opt.state_dict(),
        **state.to_checkpoint(
            run.elapsed(),
            distributed.mean_of(job, state.loss_sum, run.device),
            distributed.gather_streams(job, _carried(state).detach()).cpu(),
        ),
        "rng": rngs[0],
        "data": run.corpus.source,
        "machine": trained_on(run.device.type, run.autocast_dtype == torch.bfloat16),
    }
    if run.origin:
        snap["init_from"] = run.origin
    if run.average:
        snap["train_model"] = run.model.state_dict()
    if job.parallel:
        snap["world_size"], snap["rank_rng"] = job.world, rngs
    return snap


def save_last(run: Run, snap: dict) -> None:
    if run.job.main:
        checkpoint.save(run.out_dir / "last.pt", snap)
    run.saved_step = snap["step"]


def _carried(state: RunState) -> torch.Tensor:
    """The carried state of this process's streams (set from the first window on)."""
    assert state.hidden is not None
    return state.hidden


def save_checkpoints(run: Run, improved: bool) -> None:
    """best.pt (when the validation loss improved), then last.pt.

    best.pt first: a crash between the two writes leaves last.pt one evaluation behind, and resuming
    from it redoes that evaluation and writes best.pt again. The other order could leave a last.pt
    whose best_val_loss no best.pt holds, for good.
    """
    snap = snapshot(run)
    if improved and run.job.main:  # (the optimiser's own weights matter to --resume only, from last.pt)
        checkpoint.save(run.out_dir / "best.pt", {k: v for k, v in snap.items() if k != "train_model"})
    save_last(run, snap)


def not_finite(run: Run, what: str, value: float, at: int) -> UserError:
    kept = (
        f"{run.out_dir / 'last.pt'} still holds step {run.saved_step}"
        if run.saved_step is not None
        else "no checkpoint had been written yet"
    )
    return UserError(f"the {what} became {value} at step {at}; stopped without saving it: {kept}; try a lower --lr")


def json_line(log: dict) -> str:
    return json.dumps(log) + "\n"


def eval_line(log: dict, rate: float) -> str:
    return (
        f"step {log['step']:>6} | chars {log['chars']:>11,} | {log['elapsed_s']:7.1f}s | "
        f"train {log['train_loss']:.4f} | val {log['val_loss']:.4f} | {rate / 1000:.1f}k chars/s"
    )


def _metrics_file(run: Run):
    """metrics.jsonl, appended to (rank 0; the other processes write nowhere)."""
    return open(run.out_dir / "metrics.jsonl", "a") if run.job.main else open(os.devnull, "w")


def _prepare_compute(run: Run) -> None:
    """Build the compiled kernels and set the allocator before the clock starts; every process is ready."""
    if run.device.type == "cpu":
        compiled()
    keep_freed_memory()
    distributed.barrier(run.job)
    run.model.train()


# ---- building a run ------------------------------------------------------------------------------


def _start_point(settings: Settings, given: init_from.StartPoint | None) -> init_from.StartPoint | None:
    """The checkpoint a new run starts from (settings.init_from), checked against the run's shape settings."""
    if not settings.init_from:
        return None
    start = given or init_from.load(settings.init_from)
    init_from.check_shape(start, {k: (v, "the run's settings") for k, v in settings.to_dict().items()})
    return start


def _build_run(
    file,
    settings: Settings,
    out_dir: Path,
    point: resuming.ResumePoint | None,
    start: init_from.StartPoint | None,
    job: distributed.Dist,
    device: torch.device,
    given: Collection[str] = (),
) -> Run:
    """The data, model, optimiser and state of a run: fresh, from --init-from's weights, or restored from last.pt.

    Writes config.toml.
    """
    autocast_dtype = pick_autocast_dtype(settings.dtype, device)
    streams = distributed.streams(settings.batch_size, job)
    if point:
        resuming.check_processes(point, job.world)
    vocab = Vocab(point.state["vocab"]) if point else start.vocab if start else None
    same_text = (lambda source: resuming.check_same_text(point, source, file)) if point else None
    corpus = load_corpus(
        file,
        settings,
        vocab,
        progress=job.main,
        check_source=same_text,
        extend_vocab=settings.extend_vocab and start is not None,
    )
    if settings.fit_to_machine and settings.max_time and not settings.max_steps and not point and not start:
        settings = _fit_to_machine(settings, corpus, job, device, autocast_dtype, given)
    model, net = build_model(settings, len(corpus.vocab), job, device, start.state["model"] if start else None)
    if start and job.main:
        print(init_from.describe(start, corpus.vocab), file=sys.stderr)
    opt = build_optimizer(model, settings)
    state = RunState()
    if point:
        state = restore(point.state, model, opt, streams, job, device)
    average = WeightAverage(model, settings.ema_decay) if settings.ema_decay else None
    if average and point:  # (a run that averaged nothing before starts its average from its weights)
        average.model.load_state_dict(point.state["model"])
    if job.main:
        config_text = f"# resolved settings of this run, trained on {Path(file)}; usable as --config\n" + to_toml(
            settings.to_dict()
        )
        run_folder.start_files(out_dir, config_text, state.step if point else None)
    batcher = StreamBatcher(corpus.train_ids, settings.batch_size, settings.seq_len, settings.seed)
    origin = start.record(corpus.vocab) if start else point.state.get("init_from") if point else None
    return Run(
        settings,
        job,
        device,
        out_dir,
        corpus,
        model,
        net,
        opt,
        average,
        batcher,
        streams,
        autocast_dtype,
        state,
        saved_step=state.step if point else None,
        origin=origin,
    )


def _fit_to_machine(
    settings: Settings,
    corpus: Corpus,
    job: distributed.Dist,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    given: Collection[str],
) -> Settings:
    """The size predicted best for this machine and budget (fit_to_machine.py): rank 0 measures, every process
    takes it."""
    chosen = settings
    if job.main:
        vocab_size, train_ids = len(corpus.vocab), corpus.train_ids
        chosen, line = fit_to_machine(settings, vocab_size, train_ids, device, autocast_dtype, given=given)
        print(line, file=sys.stderr)
    return distributed.from_main_object(job, chosen)


def build_model(
    settings: Settings,
    vocab_size: int,
    job: distributed.Dist,
    device: torch.device,
    start_weights: dict | None = None,
) -> tuple[CharModel, torch.nn.Module]:
    """The model from the run's seed (the same initial weights in every process), and its DDP wrapper.

    start_weights (--init-from) replace the fresh weights, except the rows of characters they lack.
    """
    torch.manual_seed(settings.seed)
    s = settings
    model = CharModel(
        ModelConfig(vocab_size, s.cell, s.hidden_size, s.layers, s.embed_size, s.dropout, s.reset_after, s.weight_drop)
    )
    if start_weights is not None:
        init_from.copy_weights(model, start_weights)
    model = model.to(device)
    if not job.parallel:
        return model, model
    net = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
    )
    torch.manual_seed(s.seed + 7919 * (job.rank + 1))  # then each process its own dropout
    return model, net


def restore(
    state: dict,
    model: CharModel,
    opt: torch.optim.Optimizer,
    streams: slice,
    job: distributed.Dist,
    device: torch.device,
) -> RunState:
    """Weights, optimiser, RNG and run state from last.pt (with averaging, "train_model" holds the optimiser's
    weights)."""
    model.load_state_dict(state.get("train_model", state["model"]))
    opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rank_rng"][job.rank] if job.parallel else state["rng"], device)
    return RunState.from_checkpoint(state, streams, device)


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
