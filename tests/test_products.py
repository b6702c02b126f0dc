"""The float32 products outside the recurrent loop (gru_lm/model/products.py, csrc/products.h) through each
library, MKL and oneDNN, against torch's own arithmetic in float64; and the windows that use them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gru_lm.model import products
from gru_lm.model.cells import GRU, LSTM, RNN
from gru_lm.model.kernels import compiled

LIBRARIES = ("mkl", "onednn")


@pytest.fixture(params=LIBRARIES)
def library(request, monkeypatch):
    """GRU_LM_PRODUCTS set to each library in turn (the compiled module reads it at every product)."""
    if compiled() is None:
        pytest.skip("no compiler here: the compiled kernels could not be built")
    monkeypatch.setenv("GRU_LM_PRODUCTS", request.param)
    if compiled().float_products() != request.param:
        assert request.param == "onednn"  # MKL is always there
        pytest.skip("PyTorch's oneDNN matmul takes float32 only on a CPU with AVX-512 (F, BW, VL, DQ)")
    return request.param


def _close(ours: torch.Tensor, exact: torch.Tensor) -> None:
    """Within float32 rounding of the float64 result, relative to the result's scale."""
    scale = exact.abs().max().item()
    torch.testing.assert_close(ours.double(), exact, atol=1e-5 * scale, rtol=0)


def _operands(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """a (37×29) and b (29×23) as the window passes them: contiguous, transposed, or the recurrent weight
    gradient's transposed column slice of a wider T·B×width matrix."""
    b = torch.randn(29, 23)
    if kind == "contiguous":
        return torch.randn(37, 29), b
    if kind == "transposed":
        return torch.randn(29, 37).t(), b
    wide = torch.randn(29, 3 * 37)
    return wide.narrow(1, 37, 37).t(), b


@pytest.mark.parametrize("kind", ["contiguous", "transposed", "column-slice"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_mm_matches_torch(library, kind, accumulate):
    a, b = _operands(kind)
    out = torch.randn(37, 23)
    exact = a.double() @ b.double() + (out.double() if accumulate else 0)
    _close(products.mm(a, b, out=out, accumulate=accumulate), exact)
    _close(products.mm(a, b), a.double() @ b.double())


def test_addmm_broadcasts_the_bias(library):
    bias, a, b = torch.randn(23), torch.randn(37, 29), torch.randn(29, 23)
    exact = bias.double() + a.double() @ b.double()
    _close(products.addmm(bias, a, b), exact)
    out = torch.randn(37, 23)  # what out held before is overwritten, not added to
    assert products.addmm(bias, a, b, out=out) is out
    _close(out, exact)


def test_mm_refuses_an_out_of_the_wrong_shape(library):
    with pytest.raises(RuntimeError, match="cannot hold"):
        products.mm(torch.randn(4, 3), torch.randn(3, 5), out=torch.empty(4, 6))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("leading", [(7, 5), (9,)], ids=["3-d", "2-d"])
def test_linear_forward_and_backward_match_f_linear(library, bias, leading):
    x = torch.randn(*leading, 11, requires_grad=True)
    w = torch.randn(13, 11, requires_grad=True)
    b = torch.randn(13, requires_grad=True) if bias else None
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    weights = torch.randn(*leading, 13)
    y, y64 = products.linear(x, w, b), F.linear(x64, w64, b64)
    (y * weights).sum().backward()
    (y64 * weights.double()).sum().backward()
    _close(y.detach(), y64.detach())
    for ours, exact in [(x.grad, x64.grad), (w.grad, w64.grad), *([(b.grad, b64.grad)] if bias else [])]:
        _close(ours, exact)


STACKS = {
    "gru-before": lambda fast: GRU(6, 16, 2, fast=fast),
    "gru-after": lambda fast: GRU(6, 16, 2, reset_after=True, fast=fast),
    "lstm": lambda fast: LSTM(6, 16, 2, fast=fast),
    "rnn": lambda fast: RNN(6, 16, 2, fast=fast),
}


@pytest.mark.parametrize("path", ["avx512", "avx2", "blas"])
@pytest.mark.parametrize("kind", list(STACKS))
def test_windows_with_each_library_match_the_reference_loop(library, path, kind, monkeypatch):
    """A two-layer window (the recurrent weight gradients, and the BLAS path's per-step products) on each
    compiled path and library against autograd through the plain loop of cells.py."""
    monkeypatch.setenv("GRU_LM_KERNELS", path)
    if compiled().preferred_kernels() != path:
        pytest.skip(f"this CPU or build has no {path} kernels")
    torch.manual_seed(3)
    quick, ref = STACKS[kind](True), STACKS[kind](False)
    ref.load_state_dict(quick.state_dict())
    x = torch.randn(9, 5, 6)
    for m in (quick, ref):
        out, _ = m(x)
        (out * out).sum().backward()
    torch.testing.assert_close(quick(x)[0], ref(x)[0], atol=1e-6, rtol=1e-5)
    for (name, p), q in zip(quick.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")


def _cpuinfo() -> tuple[str, set[str]]:
    """The vendor and the flags of the first processor in /proc/cpuinfo."""
    vendor, flags = "", set[str]()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id" and not vendor:
            vendor = value.strip()
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
    return vendor, flags


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads /proc/cpuinfo")
def test_onednn_is_the_default_exactly_where_mkl_runs_narrower_kernels(monkeypatch):
    if compiled() is None:
        pytest.skip("no compiler here: the compiled kernels could not be built")
    monkeypatch.delenv("GRU_LM_PRODUCTS", raising=False)
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        pytest.skip("ONEDNN_MAX_CPU_ISA caps oneDNN below what the CPU has")
    vendor, flags = _cpuinfo()
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    wants_onednn = avx512 and vendor != "GenuineIntel" and torch.backends.mkldnn.is_available()
    assert compiled().float_products() == ("onednn" if wants_onednn else "mkl")
