"""Continuous batching for `gru-lm serve`: every request's stream advances in one batched step per model.

One engine thread owns the models. Each turn of its loop it

  1. admits queued requests while fewer than `max_streams` are in flight: reads each prime through
     the model's forward (batch 1, as sample.Streams does) and adds the stream as a row of its
     model's batch (the state L×N×W, the last character, its sampling settings);
  2. drops the rows whose client went away (cancel() marks them; the row is gone at this step);
  3. runs `step_chars` characters of every model's batch in one call of the compiled sampler
     (Sampler.run_each: each row with its own temperature, top-k and top-p);
  4. hands each stream its new characters, and to the streams that are complete their colours, from
     one batched trace (serve_colours) of all those that ended in this step;
  5. passes everything it produced to `notify` in one call (the HTTP layer moves it to its event loop).

Each request keeps its own generator: its uniform draws are taken at admission, `length` of them from
a generator seeded with its seed, in the order sample.generate draws them. The sampler computes each row
with the same kernels and order whatever the batch holds, so a seed gives the same text alone and under
any load. Where the compiled sampler cannot run the model, sample.Stepper steps the batch in torch and
sample.pick draws each row (the same distribution; a BLAS product's rows may then depend on the batch).

Bounds: at most `max_streams` rows in flight and `max_queue` requests waiting (counted together, so a
request that arrives between two admissions is never refused while a row is free); beyond them submit()
raises Refused(503) with a Retry-After estimated from the work ahead and the characters per second of
recent steps.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gru_lm.generation.sample import Stepper, compiled_sampler, pick, read_prime
from gru_lm.generation.serve_colours import colours_many
from gru_lm.generation.serve_request import Refused, Request, Served

# What a stream receives: ("text", characters), then ("done", {text, seed, colours}) or ("end", why).
Event = tuple[str, object]
Notify = Callable[[list[tuple[object, Event]]], None]


@dataclass(frozen=True)
class Limits:
    """How much the engine takes on at once."""

    max_streams: int = 64  # streams generated together (rows of the batches, all models)
    max_queue: int = 128  # requests waiting for a row; beyond, a 503
    step_chars: int = 16  # characters per batched step: a joining request waits at most one step


@dataclass(eq=False)
class Job:
    """One request inside the engine: where its stream is, and the opaque address its events go to."""

    req: Request
    to: object
    uniforms: Tensor | None = None  # its draws, length of them, padded to whole steps
    pos: int = 0  # characters generated so far
    parts: list[str] = field(default_factory=list)
    cancelled: bool = False

    @property
    def left(self) -> int:
        return self.req.length - self.pos


class _Batch:
    """The streams of one model in flight: their rows of the state, last characters and settings."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.sampler = compiled_sampler(served.model)
        self.stepper = None if self.sampler is not None else Stepper(served.model)
        self.jobs: list[Job] = []
        self.state = served.model.init_state(0)
        self.last = torch.zeros(0, dtype=torch.long)

    def join(self, job: Job, state: Tensor, last: int) -> None:
        self.jobs.append(job)
        self.state = torch.cat([self.state, state], dim=1).contiguous()
        self.last = torch.cat([self.last, torch.tensor([last])])

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows `keep` (in order): the others' streams are done or abandoned."""
        index = torch.tensor(keep, dtype=torch.long)
        self.jobs = [self.jobs[i] for i in keep]
        self.state = self.state.index_select(1, index).contiguous()
        self.last = self.last.index_select(0, index)

    def advance(self, chars: int) -> Tensor:
        """`chars` characters of every row (chars×N ids), each row from its own draws and settings."""
        assert all(j.uniforms is not None for j in self.jobs)
        u = torch.stack([j.uniforms[j.pos : j.pos + chars] for j in self.jobs if j.uniforms is not None], 1)
        reqs = [j.req for j in self.jobs]
        if self.sampler is not None:
            temps, top_ps = [r.temperature for r in reqs], [r.top_p or 1.0 for r in reqs]
            ids = self.sampler.run_each(self.last, self.state, u.contiguous(), temps, [0] * len(reqs), top_ps)
        else:
            assert self.stepper is not None
            ids = torch.empty(u.shape, dtype=torch.long)
            for t in range(chars):
                logits, self.state = self.stepper(self.last, self.state)
                ids[t] = torch.tensor(
                    [pick(lg.float(), r.temperature, None, r.top_p, float(x)) for lg, r, x in zip(logits, reqs, u[t])]
                )
                self.last = ids[t]
        self.last = ids[-1].clone()
        return ids


class Engine:
    """The batching engine: submit() and cancel() from any thread; one thread of its own generates."""

    def __init__(self, models: list[Served], limits: Limits | None = None) -> None:
        self.models, self.limits = models, limits or Limits()
        self._batches = [_Batch(m) for m in models]
        self._queue: deque[Job] = deque()
        self._in_flight = 0  # jobs admitted and not yet finished or dropped
        self._cond = threading.Condition()
        self._stopping = False
        self._rate = 0.0  # characters per second of recent steps
        self._thread: threading.Thread | None = None

    # ---- from any thread --------------------------------------------------------------------------

    def start(self, notify: Notify) -> None:
        """Start generating; every step's events go to notify(list of (job's address, event)), from the
        engine's thread."""
        self._thread = threading.Thread(target=self._loop, args=(notify,), name="gru-lm engine", daemon=True)
        self._thread.start()

    def submit(self, req: Request, to: object) -> Job:
        """Queue a request; Refused(503) with a Retry-After when the queue is full or the engine stops."""
        job = Job(req, to)
        with self._cond:
            if self._stopping:
                raise Refused(503, "the server is stopping", retry_after=5)
            if self._in_flight + len(self._queue) >= self.limits.max_streams + self.limits.max_queue:
                raise Refused(
                    503,
                    f"the server is busy: {self._in_flight} requests generating and {len(self._queue)} waiting, "
                    "the most it takes; try again shortly",
                    retry_after=self._retry_after(),
                )
            self._queue.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: a waiting job leaves the queue now, a generating one at the next step."""
        with self._cond:
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)

    def stop(self, wait: bool = True) -> None:
        """End every stream (each gets an "end" event) and the thread; new requests are refused."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def load(self) -> tuple[int, int]:
        """(streams in flight, requests waiting)."""
        with self._cond:
            return self._in_flight, len(self._queue)

    def _retry_after(self) -> int:
        """Seconds until the work ahead is done at the recent rate (1 to 60)."""
        ahead = sum(j.left for b in self._batches for j in b.jobs) + sum(j.req.length for j in self._queue)
        return max(1, min(60, math.ceil(ahead / self._rate))) if self._rate > 0 else 5

    # ---- the engine's thread ----------------------------------------------------------------------

    def _loop(self, notify: Notify) -> None:
        try:
            self._generate(notify)
        except Exception as e:  # a fault of ours: say it in one line, end every stream, take no more
            line = str(e).splitlines()[0][:200] if str(e) else ""
            logging.getLogger("gru_lm.serve").error("generation failed: %s: %s", type(e).__name__, line)
            with self._cond:
                self._stopping = True
        with self._cond:
            ended = [j for b in self._batches for j in b.jobs] + list(self._queue)
            self._queue.clear()
        notify([(j.to, ("end", "the server is stopping")) for j in ended])

    def _generate(self, notify: Notify) -> None:
        """Admit, step and hand out, until stop()."""
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._queue and not self._in_flight:
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted = []
                    while self._queue and self._in_flight < self.limits.max_streams:
                        admitted.append(self._queue.popleft())
                        self._in_flight += 1
                events: list[tuple[object, Event]] = []
                for job in admitted:
                    self._admit(job)
                start, made = time.perf_counter(), 0
                for batch in self._batches:
                    made += self._step(batch, events)
                if made:
                    rate = made / max(time.perf_counter() - start, 1e-6)
                    self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
                notify(events)

    def _admit(self, job: Job) -> None:
        """Read the prime (as sample.Streams does for one stream) and take the request's draws."""
        served, req = self.models[job.req.model], job.req
        model, step = served.model, self.limits.step_chars
        ids = served.vocab.encode(req.prime)[0].long()
        state = read_prime(model, ids, 1)
        gen = torch.Generator().manual_seed(req.seed)
        padded = torch.full((math.ceil(req.length / step) * step,), 0.5, dtype=torch.float64)
        padded[: req.length] = torch.rand(req.length, generator=gen, dtype=torch.float64)
        job.uniforms = padded
        self._batches[req.model].join(job, state, int(ids[-1]))

    def _step(self, batch: _Batch, events: list[tuple[object, Event]]) -> int:
        """One batched step of a model's streams; returns the characters it kept."""
        self._drop(batch, [i for i, j in enumerate(batch.jobs) if not j.cancelled])
        if not batch.jobs:
            return 0
        chars = batch.served.vocab.chars
        ids = batch.advance(self.limits.step_chars).t().tolist()
        done, kept = [], 0
        for job, row in zip(batch.jobs, ids):
            n = min(job.left, len(row))
            text = "".join(chars[i] for i in row[:n])
            job.pos, kept = job.pos + n, kept + n
            job.parts.append(text)
            events.append((job.to, ("text", text)))
            if job.left == 0:
                done.append(job)
        if done:
            texts = ["".join(j.parts) for j in done]
            for job, text, colours in zip(done, texts, colours_many(batch.served, [j.req.prime for j in done], texts)):
                events.append((job.to, ("done", {"text": text, "seed": job.req.seed, "colours": colours})))
            self._drop(batch, [i for i, j in enumerate(batch.jobs) if j.left > 0])
        return kept

    def _drop(self, batch: _Batch, keep: list[int]) -> None:
        if len(keep) < len(batch.jobs):
            gone = len(batch.jobs) - len(keep)
            batch.keep(keep)
            with self._cond:
                self._in_flight -= gone
