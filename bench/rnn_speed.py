"""Training throughput and peak memory of our cells against torch.nn.GRU/RNN/LSTM, side by side in one run.

    python bench/rnn_speed.py                 # the four default shapes (hidden 256/512, batch 32, window 64,
                                              # 1-2 layers)
    python bench/rnn_speed.py --grid full     # hidden 128..1024, layers 1-2, batch 1/32/128, window 64/256
    python bench/rnn_speed.py --memory        # also peak memory of a training step (one subprocess per cell, Linux)
    python bench/rnn_speed.py --end-to-end    # also `gru-lm train` and `gru-lm sample` characters per second
    python bench/rnn_speed.py --repeat 5      # each shape 5 times: median ratio and its range
    python bench/rnn_speed.py --bfloat16          # also the cells under bfloat16 autocast (train --dtype bfloat16)
    python bench/rnn_speed.py --kernels blas  # our cells on these window kernels only (default: every compiled
                                              # path this CPU has, side by side: avx512, avx2, blas)
    python bench/rnn_speed.py --plain-step    # the textbook step around the cells (see below)
    python bench/rnn_speed.py --other-products    # also our cells with their products through the other
                                                  # library (MKL or oneDNN, GRU_LM_PRODUCTS)

Each measurement is a char-LM training step as `gru-lm train` runs it (embedding 64 -> recurrent stack ->
its fused read-out over 65 characters and cross-entropy -> backward -> gradient clipping -> its fused AdamW;
--plain-step: nn.Linear, F.cross_entropy and torch.optim.Adam's loop, the step of the earlier results
files), the same around every cell, timed over --seconds after a warm-up, cells
interleaved round by round so that a noisy neighbour hits all of them alike. Ratios are against
torch.nn.GRU measured in the same run on the same shapes. Each row also gives the fraction of the
machine's arithmetic ceiling it reached: a char-LM step costs 6·(G·H·(I+H) per layer + H·V) floating-point
operations per character (G = 3 gates for a GRU, 4 for an LSTM, 1 for an RNN; I the layer's input width,
V the vocabulary), and the ceiling is the rate of a 2048³ float32 matrix product, measured before and
after the shapes in the same run (the faster of the two) through torch.mm (MKL) and oneDNN's matmul (the
faster library), divided by that cost. That cost counts every position's first-layer input projection, as
torch.nn's cells compute it; in gru-lm train's step our cells look those up in the model's table of the
projected embedding (stack_inputs: 65 rows a window instead of T·B), so the ceiling table also gives each
row's share counting only the work its step does ("work done"). The header
names the CPU, its ISA level, the dtype and the kernels our cells run by default; with more than one
kernel path, each of our float32 cells appears once per path, its name ending in [path] (the Step sets
GRU_LM_KERNELS before each of its steps, which the compiled kernels read at every window).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.summary import BF16, ResultFile, on_kernels
from bench.summary import rnn_speed as rnn_speed_summary
from gru_lm.machine.cpu import cpu_family_model, cpu_model, isa_level
from gru_lm.machine.memory import keep_freed_memory
from gru_lm.model.cells import GRU, LSTM, RNN, TableRows
from gru_lm.model.char_model import stack_inputs, table_pays
from gru_lm.model.kernels import available, available_bfloat16, backend, compiled, forcing, products
from gru_lm.model.readout import linear_cross_entropy
from gru_lm.training.optimizer import build_optimizer
from gru_lm.training.settings import Settings

V, E = 65, 64
TRAIN_SETTINGS = Settings()  # gru-lm train's defaults: its learning rate, weight decay and clipping
CELLS = {
    "torch.nn.GRU": lambda H, L: nn.GRU(E, H, L),
    "ours GRU reset-after": lambda H, L: GRU(E, H, L, reset_after=True),
    "ours GRU reset-before": lambda H, L: GRU(E, H, L, reset_after=False),
    "ours GRU reset-before (reference loop)": lambda H, L: GRU(E, H, L, reset_after=False, fast=False),
    "torch.nn.RNN": lambda H, L: nn.RNN(E, H, L),
    "ours RNN": lambda H, L: RNN(E, H, L),
    "torch.nn.LSTM": lambda H, L: nn.LSTM(E, H, L),
    "ours LSTM": lambda H, L: LSTM(E, H, L),
}
# the same cells under CPU autocast to bfloat16, as `gru-lm train --dtype bfloat16` runs them (BF16 ending)
for _name in (
    "torch.nn.GRU",
    "ours GRU reset-after",
    "ours GRU reset-before",
    "torch.nn.LSTM",
    "ours LSTM",
    "torch.nn.RNN",
    "ours RNN",
):
    CELLS[_name + BF16] = CELLS[_name]
GRIDS = {
    "default": [(H, L, 32, 64) for H in (256, 512) for L in (1, 2)],
    "full": list(itertools.product((128, 256, 512, 1024), (1, 2), (1, 32, 128), (64, 256))),
}


def with_kernels(names: list[str], kernels: list[str]) -> list[str]:
    """Each of our cells once per kernel path it can take (when there is more than one); the rest as they are.
    A cell under bfloat16 can take the bfloat16 team path ("avx512", where the CPU has AVX-512 BF16) and the
    BLAS path; GRU_LM_KERNELS=avx2 sends it to the BLAS path too, so that is not measured twice."""
    bf16_here = available_bfloat16()
    bf16_paths = [k for k in kernels if k in bf16_here]

    def variants(name: str) -> list[str]:
        paths = bf16_paths if name.endswith(BF16) else kernels
        return [f"{name} [{k}]" for k in paths] if ours(name) and len(paths) > 1 else [name]

    return [variant for n in names for variant in variants(n)]


def with_other_products(names: list[str], path: str) -> list[str]:
    """names, and after each of our float32 cells on `path` the same cell with the other library's products
    ("[avx512 mkl]": GRU_LM_KERNELS=avx512 GRU_LM_PRODUCTS=mkl)."""
    other = "mkl" if products() == "onednn" else "onednn"

    def variants(name: str) -> list[str]:
        base, kernels = on_kernels(name)
        if not ours(base) or base.endswith(BF16) or kernels not in (None, path):
            return [name]
        return [name, f"{base} [{path} {other}]"]

    return [variant for n in names for variant in variants(n)]


def ours(name: str) -> bool:
    return name.startswith("ours") and "reference" not in name


class Step:
    """One training step of a char LM around a recurrent module, with its state carried (TBPTT).

    Every cell gets the same embedding, read-out and optimiser, so only the recurrent module differs. step
    "train" is gru-lm train's step (train_step: the fused read-out and its loss, clipping, the fused AdamW that
    build_optimizer makes); "plain" is the textbook one the earlier results files measured (nn.Linear,
    F.cross_entropy over its logits, torch.optim.Adam's loop, no clipping)."""

    def __init__(self, name: str, H: int, L: int, B: int, T: int, seed: int = 0, step: str = "train") -> None:
        torch.manual_seed(seed)
        name, self.kernels = on_kernels(name)
        self.rnn = CELLS[name](H, L)
        self.amp = name.endswith(BF16)
        self.lstm = isinstance(self.rnn, (nn.LSTM, LSTM))
        self.emb, self.head = nn.Embedding(V, E), nn.Linear(H, V)
        self.plain = step == "plain"
        self.clip = TRAIN_SETTINGS.grad_clip
        net = nn.ModuleDict({"embed": self.emb, "rnn": self.rnn, "head": self.head})
        self.params = list(net.parameters())
        self.opt = torch.optim.Adam(self.params, 3e-3) if self.plain else build_optimizer(net, TRAIN_SETTINGS)
        self.x, self.y = torch.randint(0, V, (T, B)), torch.randint(0, V, (T, B))
        z = torch.zeros(L, B, H)
        self.h = (z, z.clone()) if self.lstm else z
        self.chars = T * B

    def __call__(self) -> None:
        path, _, library = (self.kernels or "").partition(" ")
        for variable, value in (("GRU_LM_KERNELS", path), ("GRU_LM_PRODUCTS", library)):
            if value:
                os.environ[variable] = value
            else:  # the default, whatever the cell measured before this one forced
                os.environ.pop(variable, None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            x, first_gi = self.inputs()
            out, h = self.rnn(x, self.h) if first_gi is None else self.rnn(x, self.h, first_gi=first_gi)
            loss = self.loss(out)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if not self.plain:  # as train_step: clip, which needs the norm anyway
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.h = tuple(t.detach().float() for t in h) if self.lstm else h.detach().float()

    def inputs(self) -> tuple[Tensor | None, TableRows | None]:
        """The stack's input: the embedded ids (the plain step), or what gru-lm train's model feeds it
        (stack_inputs: our cells look their first layer's input projections up in a per-character table)."""
        if self.plain:
            return self.emb(self.x), None
        return stack_inputs(self.emb, self.rnn, self.x)

    def loss(self, out: Tensor) -> Tensor:
        if self.plain:
            logits = self.head(out)
            return nn.functional.cross_entropy(logits.float().flatten(0, 1), self.y.flatten())
        return linear_cross_entropy(out.flatten(0, 1), self.head.weight, self.head.bias, self.y.flatten())


def gates_of(name: str) -> int:
    return 4 if "LSTM" in name else 3 if "GRU" in name else 1


def flops_per_char(name: str, H: int, L: int) -> float:
    """6·(G·H·(I+H) per layer + H·V): forward, input gradient and weight gradient of every product."""
    G = gates_of(name)
    return 6.0 * (sum(G * H * ((E if k == 0 else H) + H) for k in range(L)) + H * V)


def work_flops_per_char(name: str, H: int, L: int, B: int, T: int, step: str) -> float:
    """The operations a step of this cell does per character: flops_per_char, less the first layer's input
    projections where our cells look them up in the model's table (stack_inputs: V rows a window, not T·B)."""
    looked_up = step == "train" and ours(name) and table_pays(V, T * B)
    saved = 6.0 * gates_of(name) * H * E * (1 - V / (T * B)) if looked_up else 0.0
    return flops_per_char(name, H, L) - saved


def matmul_rates(seconds: float = 1.0) -> dict[str, float]:
    """FLOP/s of a 2048³ float32 product on this machine, now, through each library here (best of three
    timings each): "mkl" is torch.mm's, "onednn" oneDNN's matmul where the compiled module has it
    (gru_lm/model/csrc/products.h). MKL runs its AVX2 kernels on processors that are not Intel's, so
    on an AMD processor with AVX-512 only oneDNN's rate is the machine's."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    c = a @ b
    k = compiled()
    timed = {"mkl": lambda: torch.mm(a, b, out=c)}
    if k is not None:
        timed["onednn"] = lambda: k.mm_into(c, a, b)
    rates = {}
    for library, product in timed.items():
        with forcing(library, "GRU_LM_PRODUCTS"):
            if k is None or k.float_products() == library:  # oneDNN takes float32 only on AVX-512 CPUs
                rates[library] = best_rate(product, 2 * 2048**3, seconds)
    return rates


def best_rate(product, flops: float, seconds: float) -> float:
    """FLOP/s of the best of three timings of product(), each over a third of `seconds`."""
    best = 0.0
    for _ in range(3):
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 3:
            product()
            k += 1
        best = max(best, flops * k / (time.perf_counter() - t0))
    return best


def matmul_rate(seconds: float = 1.0) -> float:
    """The ceiling's numerator: the faster library's rate of a 2048³ float32 product (matmul_rates)."""
    return max(matmul_rates(seconds).values())


def header(dtype: str = "float32", step: str = "train") -> dict:
    return {
        "cpu": cpu_model(),
        "cpuid": cpu_family_model(),
        "isa": isa_level(),
        "dtype": dtype,
        "step": step,
        "kernels": backend(),
        "products": products(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }


def throughput(names: list[str], shape: tuple, seconds: float, step: str, rounds: int = 3) -> dict[str, float]:
    """Characters per second of each cell, best of `rounds` interleaved rounds of `seconds`/rounds each."""
    H, L, B, T = shape
    steps = {n: Step(n, H, L, B, T, step=step) for n in names}
    for s in steps.values():
        s()
        s()
    best = dict.fromkeys(names, 0.0)
    for _ in range(rounds):
        for n, s in steps.items():
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds / rounds:
                s()
                k += 1
            best[n] = max(best[n], k * s.chars / (time.perf_counter() - t0))
    return best


def peak_memory(name: str, shape: tuple, step: str) -> float:
    """Growth of peak resident memory (MiB) over three training steps, measured in a fresh process.

    It reads VmHWM (this process's peak RSS) from /proc: ru_maxrss would carry the parent's peak
    over fork and exec, and hide the child's.
    """
    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.argv = ['x']\n"
        "from bench.rnn_speed import Step, keep_freed_memory\n"
        "hwm = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "keep_freed_memory()\n"
        f"s = Step({name!r}, *{tuple(shape)!r}, step={step!r})\n"
        "before = hwm()\n"
        "for _ in range(3): s()\n"
        "print(json.dumps((hwm() - before) / 1024))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def end_to_end(seconds: float, bfloat16: bool = False) -> list[tuple[str, float]]:
    """Characters per second of the real commands on Tiny Shakespeare with the default config."""
    import tempfile

    from gru_lm.model import checkpoint
    from gru_lm.text.vocab import Vocab
    from gru_lm.training.settings import resolve
    from gru_lm.training.train import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("shakespeare_gru", "float32"), ("shakespeare_rnn", "float32")]
        runs += (
            [("shakespeare_gru", "bfloat16"), ("shakespeare_30min", "float32"), ("shakespeare_30min", "bfloat16")]
            if bfloat16
            else []
        )
        for cfg, dtype in runs:
            s = resolve(ROOT / "configs" / f"{cfg}.toml", {"max_time": seconds, "eval_every": 10**9, "dtype": dtype})
            res = train(ROOT / "data" / "tinyshakespeare.txt", s, Path(tmp) / cfg, overwrite=True, progress=False)
            flag = f" --dtype {dtype}"
            rows.append(
                (f"gru-lm train --config configs/{cfg}.toml{flag} (incl. final eval)", res.chars / res.elapsed_s)
            )
        state = checkpoint.load(Path(tmp) / "shakespeare_gru" / "last.pt")
        rows += sampling_speed(checkpoint.build_model(state), Vocab(state["vocab"]))
    return rows


def sampling_speed(model, vocab, n: int = 2000) -> list[tuple[str, float]]:
    """`gru-lm sample`'s loop against a torch.nn.GRU of the same size stepped one character at a time
    (same embedding, read-out and character draw, so only the recurrent stepping differs)."""
    from gru_lm.generation.sample import generate, pick

    cfg = model.cfg
    size = f"{cfg.cell.upper()} {cfg.hidden_size}×{cfg.layers}"
    g = torch.Generator().manual_seed(0)
    for _ in generate(model, vocab, "ROMEO:", 50, generator=g):
        pass
    t0 = time.perf_counter()
    for _ in generate(model, vocab, "ROMEO:", n, generator=g):
        pass
    rows = [(f"gru-lm sample ({size}, one stream)", n / (time.perf_counter() - t0))]
    ref = (nn.GRU if cfg.cell == "gru" else nn.RNN)(cfg.embed_size, cfg.hidden_size, cfg.layers).eval()
    with torch.inference_mode():
        x, h = torch.zeros(1, 1, dtype=torch.long), None
        for _rep in range(2):  # the first round warms up
            t0 = time.perf_counter()
            for _ in range(n):
                out, h = ref(model.embed(x), h)
                x = torch.tensor([[pick(model.head(out[0, 0]), 1.0, None, None, g)]])
        rows.append(
            (
                f"torch.nn.{cfg.cell.upper()} {size.split()[1]} stepped one character at a time",
                n / (time.perf_counter() - t0),
            )
        )
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="default", help="which shapes to measure")
    ap.add_argument("--cells", nargs="*", default=None, help=f"subset of: {', '.join(CELLS)}")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell and shape")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each shape N times; the table gives the median and the range of the ratios",
    )
    ap.add_argument("--memory", action="store_true", help="also measure peak memory (slower)")
    ap.add_argument("--end-to-end", action="store_true", help="also time gru-lm train and sample")
    ap.add_argument(
        "--bfloat16",
        action="store_true",
        help="also the cells under CPU autocast to bfloat16 (mixed precision; not the same arithmetic)",
    )
    ap.add_argument(
        "--sample-only",
        type=Path,
        default=None,
        metavar="CKPT",
        help="only time sampling from this checkpoint against torch.nn.GRU",
    )
    ap.add_argument(
        "--kernels",
        nargs="*",
        default=None,
        help="window kernels to run our float32 cells on, side by side (default: every compiled path here)",
    )
    ap.add_argument(
        "--other-products",
        action="store_true",
        help="also our float32 cells on the first kernel path with their products outside the recurrent loop "
        "through the other library (GRU_LM_PRODUCTS: MKL where oneDNN is the default, and the reverse)",
    )
    ap.add_argument(
        "--plain-step",
        dest="step",
        action="store_const",
        const="plain",
        default="train",
        help="time the cells in the textbook step (nn.Linear, F.cross_entropy, torch.optim.Adam's loop, no clipping) "
        "instead of gru-lm train's (its fused read-out, clipping and fused AdamW)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings as they are")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    return ap.parse_args()


def measure_shapes(names: list[str], args: argparse.Namespace) -> list[dict]:
    """Every cell at every shape: chars/s, the ratio to torch.nn.GRU and (filled in later) the ceiling fraction."""
    spread = args.repeat > 1
    print(
        "| hidden | layers | batch | window | cell | chars/s | vs torch.nn.GRU |"
        + (" range |" if spread else "")
        + (" peak MiB | vs GRU |" if args.memory else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if spread else "") + ("---|---|" if args.memory else ""))
    results = []
    for shape in GRIDS[args.grid]:
        runs = [throughput(names, shape, args.seconds, args.step) for _ in range(args.repeat)]
        mem = {n: peak_memory(n, shape, args.step) for n in names} if args.memory else {}
        for n in names:
            ratios = sorted(r[n] / r["torch.nn.GRU"] for r in runs)
            speed = sorted(r[n] for r in runs)[len(runs) // 2]
            row = dict(
                zip(("hidden", "layers", "batch", "window"), shape),
                cell=n,
                chars_per_s=speed,
                ratio=ratios[len(ratios) // 2],
                ratios=ratios,
                flops_per_char=flops_per_char(n, *shape[:2]),
                work_flops_per_char=work_flops_per_char(n, *shape, args.step),
            )
            line = f"| {shape[0]} | {shape[1]} | {shape[2]} | {shape[3]} | {n} | {speed:,.0f} | {row['ratio']:.2f}x |"
            if spread:
                line += f" {ratios[0]:.2f}–{ratios[-1]:.2f} |"
            if mem:
                row.update(peak_mib=mem[n], mem_ratio=mem[n] / max(mem["torch.nn.GRU"], 1e-9))
                line += f" {mem[n]:.1f} | {row['mem_ratio']:.2f}x |"
            print(line, flush=True)
            results.append(row)
    return results


def ceiling_table(results: list[dict], rates: dict[str, float]) -> None:
    """The fraction of the arithmetic ceiling each row reached, as a second table."""
    rate = max(rates.values())
    by_library = ", ".join(f"{library} {r / 1e9:.1f}" for library, r in rates.items())
    print(f"\n2048³ float32 product: {rate / 1e9:.1f} GFLOP/s, the ceiling's numerator ({by_library})\n")
    print(
        "| hidden | layers | cell | chars/s | ceiling chars/s | of ceiling | of ceiling, work done |\n"
        "|---|---|---|---|---|---|---|"
    )
    for row in results:
        row["ceiling_chars_per_s"] = rate / row["flops_per_char"]
        row["of_ceiling"] = row["chars_per_s"] / row["ceiling_chars_per_s"]
        row["of_ceiling_work_done"] = row["chars_per_s"] * row["work_flops_per_char"] / rate
        print(
            f"| {row['hidden']} | {row['layers']} | {row['cell']} | {row['chars_per_s']:,.0f} | "
            f"{row['ceiling_chars_per_s']:,.0f} | {row['of_ceiling']:.0%} | {row['of_ceiling_work_done']:.0%} |"
        )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.default_malloc:
        keep_freed_memory()  # as `gru-lm train` does; it helps every cell alike
    if args.sample_only:
        from gru_lm.model import checkpoint
        from gru_lm.text.vocab import Vocab

        state = checkpoint.load(args.sample_only)
        for name, rate in sampling_speed(checkpoint.build_model(state), Vocab(state["vocab"])):
            print(f"| {name} | {rate:,.0f} |")
        return
    names = args.cells or [n for n in CELLS if "reference" not in n and (args.bfloat16 or not n.endswith(BF16))]
    if "torch.nn.GRU" not in names:
        names.insert(0, "torch.nn.GRU")
    kernels = args.kernels or [k for k in available() if k != "python"]
    names = with_kernels(names, kernels)
    if args.other_products:
        names = with_other_products(names, kernels[0])
    head = header("float32 and bfloat16 autocast" if args.bfloat16 else "float32", args.step)
    print("# " + ", ".join(f"{k} {v}" for k, v in head.items()))
    rates = matmul_rates()
    results = measure_shapes(names, args)
    rates = {library: max(r, rates[library]) for library, r in matmul_rates().items()}
    rate = max(rates.values())
    ceiling_table(results, rates)
    if args.end_to_end:
        print("\n| command | chars/s |\n|---|---|")
        for name, speed in end_to_end(max(args.seconds * 10, 20), args.bfloat16):
            print(f"| {name} | {speed:,.0f} |", flush=True)
            results.append({"command": name, "chars_per_s": speed})
    figures = {"machine": head, "matmul_flops": rate, "matmul_flops_by_library": rates, "rows": results}
    print("\n" + rnn_speed_summary([ResultFile("this run", figures)]))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(f"# peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
