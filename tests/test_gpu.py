"""Checks that need a CUDA device (marked `gpu`; they skip elsewhere): sizes and layouts the CPU suite cannot
reach, streams, CUDA graphs, several devices, and agreement of the cuda, triton and cpu backends. Each result is
compared with a float64 computation. `make gpu-check` runs them on a lent GPU."""

import pytest
import torch
from torch import nn

import gpkernels

pytestmark = pytest.mark.gpu
FUSED = ["cuda", "triton"]


def served(backend, device="cuda"):
    reasons = gpkernels.backends.refusals(backend, device)
    if reasons:
        pytest.skip(f"{backend} on {device}: {'; '.join(reasons)}")


def norms64(g, chunk=1 << 26):
    """Per-row norms of g (B, *) in float64, a chunk of columns at a time (g may hold 2^31 elements)."""
    rows = g.reshape(g.shape[0], -1)
    total = torch.zeros(rows.shape[0], dtype=torch.float64, device=g.device)
    for j in range(0, rows.shape[1], chunk):
        total += rows[:, j:j + chunk].double().square().sum(1)
    return total.sqrt()


def check_forward_backward(g, backend, rtol):
    """The penalty's value, norms and gradient on g against float64: d loss / d g_i = 2 w (n_i - 1) g_i / (B n_i)."""
    w = 10.0
    g = g.detach().requires_grad_(True)
    loss, norms = gpkernels.penalty(g, weight=w, return_norms=True, backend=backend)
    n64 = norms64(g.detach())
    torch.testing.assert_close(norms.double(), n64, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(loss.double(), w * (n64 - 1).square().mean(), rtol=rtol, atol=1e-6)
    (dg,) = torch.autograd.grad(loss, g)
    coef = (2 * w * (n64 - 1) / (g.shape[0] * n64)).to(torch.float32)
    view = (-1,) + (1,) * (g.dim() - 1)
    want = g.detach().float() * coef.view(view)
    err = (dg.float() - want).abs().max().item()
    assert err <= rtol * want.abs().max().item() + 1e-6, f"{backend}: gradient off by {err:.3g}"


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", [(70000, 3), (1_000_000, 2), (1, 4_200_000), (3, 4_200_001)], ids=str)
def test_grid_limits_many_rows_and_long_rows(backend, shape):
    served(backend)
    torch.manual_seed(0)
    check_forward_backward(torch.randn(shape, device="cuda"), backend, rtol=1e-5)
    real, fake = torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda")
    alpha = torch.rand(shape[0], device="cuda")
    got = gpkernels.interpolate(real, fake, alpha, backend=backend)
    want = alpha.double()[:, None] * real.double() + (1 - alpha.double()[:, None]) * fake.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", FUSED)
def test_more_than_2_to_the_31_elements(backend):
    served(backend)
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2 ** 30:
        pytest.skip("needs about 30 GiB of GPU memory")
    g = torch.randn(2, 2 ** 30 + 7, device="cuda", dtype=torch.bfloat16)      # 2^31 + 14 elements
    check_forward_backward(g, backend, rtol=2e-2)


@pytest.mark.parametrize("backend", FUSED)
def test_unaligned_storage_offset(backend):
    served(backend)
    base = torch.randn(8 * 1001 + 1, device="cuda")
    g = base[1:].view(8, 1001)                                   # storage offset 1: not 16-byte aligned
    assert g.storage_offset() == 1
    check_forward_backward(g, backend, rtol=1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_bitwise_deterministic(backend):
    served(backend)
    torch.manual_seed(0)
    g = torch.randn(64, 3 * 64 * 64, device="cuda").requires_grad_(True)
    v = torch.randn_like(g)
    outs = []
    for _ in range(3):
        loss = gpkernels.penalty(g, weight=10.0, backend=backend)
        (dg,) = torch.autograd.grad(loss, g, create_graph=True)
        (ddg,) = torch.autograd.grad(dg, g, v)
        outs.append((loss, dg, ddg))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FUSED)
def test_non_default_stream(backend):
    served(backend)
    torch.manual_seed(0)
    g = torch.randn(256, 3072, device="cuda")
    want = gpkernels.penalty(g, weight=10.0, backend=backend)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = gpkernels.penalty(g, weight=10.0, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(got, want)


def test_cuda_triton_and_cpu_agree():
    for b in FUSED:
        served(b)
    torch.manual_seed(0)
    g = torch.randn(33, 5, 7, 9)
    v = torch.randn_like(g)
    results = {}
    for backend, device in [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda"), ("reference", "cpu")]:
        if gpkernels.backends.refusals(backend, device):
            continue
        x = g.double().to(device).requires_grad_(True)
        loss = gpkernels.penalty(x, weight=10.0, exponent=3.0, backend=backend)
        (dg,) = torch.autograd.grad(loss, x, create_graph=True)
        (ddg,) = torch.autograd.grad(dg, x, v.double().to(device))
        results[backend] = [t.detach().cpu() for t in (loss, dg, ddg)]
    first = results.pop("reference")
    for backend, got in results.items():
        for a, b in zip(got, first):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=backend)


@pytest.mark.parametrize("backend", FUSED)
def test_tiny_norms_stay_finite(backend):
    served(backend)
    torch.manual_seed(0)
    g = (1e-14 * torch.randn(2, 8, device="cuda")).requires_grad_(True)
    v = torch.randn_like(g)
    v[1] = 0
    loss = gpkernels.penalty(g, weight=10.0, backend=backend)
    (dg,) = torch.autograd.grad(loss, g, create_graph=True)
    (ddg,) = torch.autograd.grad(dg, g, v)
    g64 = g.detach().double().requires_grad_(True)
    l64 = gpkernels.penalty(g64, weight=10.0, backend="reference")
    (d64,) = torch.autograd.grad(l64, g64, create_graph=True)
    (dd64,) = torch.autograd.grad(d64, g64, v.double())
    for got, want in ((loss, l64), (dg, d64), (ddg, dd64)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("backend", FUSED)
def test_tensors_on_another_device_than_the_current_one(backend):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    served(backend, "cuda:1")
    torch.manual_seed(0)
    g = torch.randn(64, 1000, device="cuda:1")
    with torch.cuda.device(0):
        loss = gpkernels.penalty(g, weight=10.0, backend=backend)
        x = gpkernels.interpolate(g, 2 * g, torch.rand(64, device="cuda:1"), backend=backend)
    torch.cuda.synchronize(1)
    n64 = norms64(g)
    torch.testing.assert_close(loss.double(), 10 * (n64 - 1).square().mean(), rtol=1e-5, atol=1e-6)
    assert x.device == g.device and torch.isfinite(x).all()


@pytest.mark.parametrize("backend", FUSED)
def test_the_penalty_step_does_not_synchronise_and_captures_in_a_cuda_graph(backend):
    """A whole GP critic step (forward, penalty, backward, Adam step) captured in a CUDA graph and replayed
    equals the eager step; the penalty call under AMP makes no host synchronisation."""
    served(backend)
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(16, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1)).cuda()
    real, fake = torch.randn(32, 16, device="cuda"), torch.randn(32, 16, device="cuda") + 1
    scaler = torch.amp.GradScaler("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.float16):
            gpkernels.gradient_penalty(critic, real, fake, scaler=scaler, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")

    opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9), capturable=True)
    alpha = torch.rand(32, device="cuda")

    def step():
        opt.zero_grad(set_to_none=False)
        loss = critic(fake).mean() - critic(real).mean() + gpkernels.gradient_penalty(
            critic, real, fake, alpha=alpha, backend=backend)
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    start = [p.detach().clone() for p in critic.parameters()]
    state = {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in v.items()} for k, v in opt.state.items()}
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured_loss = step()
    def restore():
        with torch.no_grad():
            for p, s in zip(critic.parameters(), start):
                p.copy_(s)
            for k, v in opt.state.items():
                for n, t in v.items():
                    if torch.is_tensor(t):
                        t.copy_(state[k][n])

    # Replay from the state before capture, then the same step eagerly from that state: equal.
    restore()
    graph.replay()
    replayed = [p.detach().clone() for p in critic.parameters()]
    restore()
    eager_loss = step()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(replayed, critic.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-7)
