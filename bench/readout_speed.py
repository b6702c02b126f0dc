"""Training speed with a large alphabet: the plain read-out (logits, then cross-entropy) against the fused one
(gru_lm/model/readout.py), side by side in one run.

    python bench/readout_speed.py                      # float32, GRU 1 × 256, embedding 64, V = 6,000 and 65
    python bench/readout_speed.py --dtype bfloat16     # under autocast to bfloat16 (train --dtype bfloat16)
    python bench/readout_speed.py --seconds 8          # a longer timing budget per variant

Each variant is a full training step of CharModel as `gru-lm train` takes it (32 streams × a window of 64
= 2,048 positions; forward, backward, gradient clipping at 1.0, AdamW), with the read-out either as before
(`logits, h = model(x, h)`, then `F.cross_entropy(logits.flatten(0, 1).float(), y)`) or fused
(`model.loss(x, y, h)`). The variants run in interleaved rounds, so that a noisy neighbour hits all of them
alike; the table gives each one's best round. For every variant it also gives the minor page faults per step
(resource.getrusage), and the fraction of the machine's arithmetic ceiling: the rate of a 2048³ float32
matrix product (torch.mm, measured before and after the variants, the faster of the two) divided by the
6·(3·H·(E + H) + H·V) floating-point operations a character costs (forward, input gradient and weight
gradient of every product, the read-out's H·V included). Every variant runs on each compiled path of the
recurrent window this CPU has (avx512, avx2, blas: GRU_LM_KERNELS set before each step), side by side, or
on the one GRU_LM_KERNELS names. A second table splits a step of each V = 6,000 variant, on the default
path, into its phases: where the time goes, recurrent layer against read-out.

To see a CPU with AVX2 alone on one with AVX-512, set before starting (the header records them):

    MKL_ENABLE_INSTRUCTIONS=AVX2    MKL's float32 products on its AVX2 kernels
    ONEDNN_MAX_CPU_ISA=AVX2         oneDNN's (the bfloat16 products) likewise
    ATEN_CPU_CAPABILITY=avx2        torch's element-wise kernels likewise
    GRU_LM_KERNELS=avx2             the recurrent window on gru_lm's AVX2 micro-kernels (csrc/)

The result goes to bench/results/readout_speed_<cpu>_<isa>.md (--out to change), <isa> being avx2 when
emulated so, and its figures to a .json of the same name, which bench/summary.py renders into the docs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rnn_speed import header, matmul_rate
from gru_lm.machine import cpu
from gru_lm.machine.memory import keep_freed_memory
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.model.kernels import available, backend, compiled
from gru_lm.model.readout import chunk_rows, linear_cross_entropy

H, E, B, T = 256, 64, 32, 64
VOCABS = (6000, 65)
EMULATION = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "GRU_LM_KERNELS")
READOUTS = ("plain", "fused")


def flops_per_char(V: int) -> float:
    """6·(3·H·(E + H) + H·V): a GRU layer's three gates and the read-out, forward and both gradients."""
    return 6.0 * (3 * H * (E + H) + H * V)


class Step:
    """One training step of GRU 1 × 256 on V characters with the plain or the fused read-out, state carried."""

    def __init__(self, V: int, readout: str, autocast_dtype: torch.dtype | None, kernels: str, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.kernels = kernels
        self.model = CharModel(ModelConfig(V, "gru", H, 1, E)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.99))
        self.x, self.y = torch.randint(0, V, (T, B)), torch.randint(0, V, (T, B))
        self.h = self.model.init_state(B)
        self.fused = readout == "fused"
        self.dtype = autocast_dtype

    def autocast(self) -> torch.autocast:
        return torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def __call__(self) -> None:
        os.environ["GRU_LM_KERNELS"] = self.kernels
        with self.autocast():
            if self.fused:
                loss, h = self.model.loss(self.x, self.y, self.h)
            else:
                logits, h = self.model(self.x, self.h)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), self.y.flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.h = h.detach()

    def phases(self) -> dict[str, float]:
        """The same step cut into its phases (seconds each), the read-out's backward apart from the recurrent one."""
        os.environ["GRU_LM_KERNELS"] = self.kernels
        m, t = self.model, [time.perf_counter()]
        with self.autocast():
            out, h = m.rnn(m.embed(self.x), self.h)
            t.append(time.perf_counter())
            w, b = m.head.weight, m.head.bias
            if self.fused:
                loss = linear_cross_entropy(out.flatten(0, 1), w, b, self.y.flatten())
            else:
                loss = F.cross_entropy(F.linear(out, w, b).flatten(0, 1).float(), self.y.flatten())
        t.append(time.perf_counter())
        self.opt.zero_grad(set_to_none=True)
        d_out, w.grad, b.grad = torch.autograd.grad(loss, [out, w, b])
        t.append(time.perf_counter())
        out.backward(d_out)
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        self.opt.step()
        t.append(time.perf_counter())
        self.h = h.detach()
        names = ("embedding + GRU forward", "read-out forward", "read-out backward", "GRU + embedding backward")
        return dict(zip((*names, "clip + AdamW"), (b - a for a, b in itertools.pairwise(t))))


def timed(step: Step, seconds: float) -> tuple[float, float]:
    """(characters per second, minor page faults per step) of step run for about `seconds`."""
    faults0, t0, n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), 0
    while n < 2 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    elapsed = time.perf_counter() - t0
    return n * B * T / elapsed, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / n


Key = tuple[int, str, str]  # (V, read-out, kernels)


def measure(steps: dict[Key, Step], seconds: float, rounds: int) -> dict[Key, dict]:
    """Each step's best round (chars/s) and its page faults per step in that round, rounds interleaved."""
    for s in steps.values():
        s()
        s()
    best: dict[Key, dict] = {k: {"chars_per_s": 0.0, "faults": 0.0} for k in steps}
    for _ in range(rounds):
        for key, s in steps.items():
            rate, faults = timed(s, seconds / rounds)
            if rate > best[key]["chars_per_s"]:
                best[key] = {"chars_per_s": rate, "faults": faults}
    return best


def breakdown(step: Step, n: int = 6) -> dict[str, float]:
    """The median seconds of each phase over n steps."""
    runs = [step.phases() for _ in range(n)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def emulated() -> dict[str, str]:
    return {k: os.environ[k] for k in EMULATION if os.environ.get(k)}


def emulates_avx2(emulation: dict[str, str]) -> bool:
    """Whether the variables limit a library to AVX2, so the run stands for a CPU with AVX2 alone."""
    return any(v.lower() == "avx2" for v in emulation.values())


def result_path(emulation: dict[str, str]) -> Path:
    """bench/results/readout_speed_<cpu>_<isa>.md: the CPU's generation where known (zen3, zen5, ...) or its
    model name, and its ISA level (avx2 when AVX2 is emulated)."""
    isa = "avx2" if emulates_avx2(emulation) else cpu.isa_level()
    name = cpu_tag() or re.sub(r"[^a-z0-9]+", "_", cpu.cpu_model().lower()).strip("_")
    return ROOT / "bench" / "results" / f"readout_speed_{name}_{re.sub(r'[^a-z0-9]', '', isa.lower())}.md"


def cpu_tag() -> str:
    """AMD's generation from /proc/cpuinfo's family and model (a hypervisor may hide the model name), "xeon" for
    an Intel Xeon (whose model number a hypervisor may change): "" elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()[:30]
        info = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        family, model = int(info.get("cpu family", "0")), int(info.get("model", "0"))
    except (OSError, ValueError):
        return ""
    if info.get("vendor_id") == "GenuineIntel" and "Xeon" in info.get("model name", ""):
        return "xeon"
    if info.get("vendor_id") != "AuthenticAMD":
        return ""
    if family == 0x19:
        return "zen4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF else "zen3"
    return {0x17: "zen2", 0x1A: "zen5"}.get(family, "")


def figures_of(results: dict[Key, dict], rate: float) -> list[dict]:
    """One dict per variant, with its share of the ceiling and its speed over the plain read-out on its path:
    what the .json records and the table shows."""
    return [
        {
            "V": V,
            "readout": readout,
            "kernels": kernels,
            "chars_per_s": r["chars_per_s"],
            "faults": r["faults"],
            "of_ceiling": r["chars_per_s"] * flops_per_char(V) / rate,
            "vs_plain": r["chars_per_s"] / results[(V, "plain", kernels)]["chars_per_s"],
        }
        for (V, readout, kernels), r in results.items()
    ]


def table(figures: list[dict], rate: float) -> list[str]:
    columns = ["V", "read-out", "kernels", "chunk rows", "chars/s", "ms/step", "ceiling chars/s", "of ceiling"]
    lines = ["| " + " | ".join([*columns, "minor faults/step", "vs plain"]) + " |", "|---" * 10 + "|"]
    for f in figures:
        rows = str(chunk_rows(B * T, f["V"])) if f["readout"] == "fused" else "–"
        lines.append(
            f"| {f['V']:,} | {f['readout']} | {f['kernels']} | {rows} | {f['chars_per_s']:,.0f} | "
            f"{B * T / f['chars_per_s'] * 1e3:.1f} | {rate / flops_per_char(f['V']):,.0f} | {f['of_ceiling']:.0%} | "
            f"{f['faults']:,.0f} | {f['vs_plain']:.2f}× |"
        )
    return lines


def phase_table(phases: dict[str, dict[str, float]]) -> list[str]:
    names = list(next(iter(phases.values())))
    lines = ["| phase (V = 6,000) | " + " | ".join(f"{k} ms" for k in phases) + " |", "|---" * (len(phases) + 1) + "|"]
    for name in [*names, "total"]:
        cells = [(sum(p.values()) if name == "total" else p[name]) * 1e3 for p in phases.values()]
        lines.append(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return lines


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="timing budget per variant, over all rounds")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (each variant's best is kept)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--out", type=Path, default=None, help="where to write the markdown (default: bench/results/)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    keep_freed_memory()  # as `gru-lm train` does
    compiled()
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
    emulation = emulated()
    head = header(args.dtype)
    lines = ["# " + ", ".join(f"{k} {v}" for k, v in head.items())]
    if emulation:
        lines.append("# emulating: " + ", ".join(f"{k}={v}" for k, v in emulation.items()))
    lines.append(
        f"# GRU 1 × {H}, embedding {E}, {B} streams × window {T}; full training steps (clip 1.0, AdamW); "
        f"best of {args.rounds} interleaved rounds of {args.seconds / args.rounds:.1f} s"
    )
    print("\n".join(lines), flush=True)
    rate = matmul_rate()
    paths = [emulation["GRU_LM_KERNELS"]] if "GRU_LM_KERNELS" in emulation else available()[:-1] or [backend()]
    steps = {(V, r, k): Step(V, r, dtype, k) for V in VOCABS for r in READOUTS for k in paths}
    results = measure(steps, args.seconds, args.rounds)
    rate = max(rate, matmul_rate())
    phases = {r: breakdown(steps[(VOCABS[0], r, paths[0])]) for r in READOUTS}
    lines += ["", f"2048³ float32 product: {rate / 1e9:.1f} GFLOP/s (the ceiling's numerator)", ""]
    rows = figures_of(results, rate)
    lines += [*table(rows, rate), "", *phase_table(phases)]
    print("\n".join(lines[lines.index("") :]))
    out = args.out or result_path(emulation)
    out.write_text("\n".join(lines) + "\n")
    figures = {"machine": head, "emulating": emulation, "matmul_flops": rate, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(figures | {"phases_s": phases}, indent=1))
    print(f"\nwritten to {out} and its .json")


if __name__ == "__main__":
    main()
