"""gpkernels.GradientPenalty: the configuration it holds, lazy regularisation and its saved schedule."""

import pytest
import torch
from torch import nn

import gpkernels

B = 4


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def data():
    torch.manual_seed(0)
    return torch.randn(B, 3), torch.randn(B, 3) + 1, torch.rand(B)


def test_default_is_wgan_gp():
    critic, (real, fake, alpha) = Counting(), data()
    gp = gpkernels.GradientPenalty()
    torch.testing.assert_close(gp(critic, real, fake, alpha=alpha),
                               gpkernels.wgan_gp_penalty(critic, real, fake, alpha=alpha), rtol=0, atol=0)
    assert gp.last_norms.shape == (B,) and not gp.last_norms.requires_grad


def test_lazy_computes_every_kth_call_with_k_times_the_weight():
    critic, (real, fake, alpha) = Counting(), data()
    gp = gpkernels.GradientPenalty(weight=2.0, lazy=3)
    once = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, weight=2.0)
    critic.calls = 0
    seen = []
    for step in range(7):
        assert gp.due == (step % 3 == 0)
        loss, norms = gp(critic, real, fake, alpha=alpha, return_norms=True)
        seen.append(loss.item())
        if step % 3 == 0:
            torch.testing.assert_close(loss, 3 * once, rtol=1e-6, atol=0)
            assert norms is not None and loss.requires_grad
        else:
            assert loss.item() == 0.0 and norms is None and not loss.requires_grad
    assert critic.calls == 3  # the critic runs on computed calls only
    assert [s != 0 for s in seen] == [True, False, False, True, False, False, True]


def test_schedule_survives_a_state_dict_round_trip():
    critic, (real, fake, _) = Counting(), data()
    gp = gpkernels.GradientPenalty(lazy=4)
    for _ in range(5):
        gp(critic, real, fake)
    resumed = gpkernels.GradientPenalty(lazy=4)
    resumed.load_state_dict(gp.state_dict())
    assert resumed.calls == 5 and resumed.due == gp.due is False
    fresh = gpkernels.GradientPenalty(lazy=4)
    assert fresh.due  # a fresh module would compute on this call: the saved state matters


def test_finite_difference_method_and_its_arguments():
    critic, (real, fake, alpha) = Counting(), data()
    gp = gpkernels.GradientPenalty(method="finite_difference", target=0.5, one_sided=True)
    a2 = torch.rand(B)
    got = gp(critic, real, fake, alpha=(alpha, a2))
    want = gpkernels.finite_difference_penalty(critic, real, fake, alpha=(alpha, a2), target=0.5, one_sided=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="takes no scaler"):
        gp(critic, real, fake, scaler=torch.amp.GradScaler("cpu"))


@pytest.mark.parametrize("sample", ["real", "fake", "dragan"])
def test_sample_modes_pass_through(sample):
    critic, (real, fake, _) = Counting(), data()
    gp = gpkernels.GradientPenalty(target=0.0, sample=sample)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(
        gp(critic, real, fake, generator=gen()),
        gpkernels.gradient_penalty(critic, real, fake, target=0.0, sample=sample, generator=gen()), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lazy=0), "lazy must be an int >= 1"),
    (dict(lazy=2.5), "lazy must be an int"),
    (dict(lazy=True), "lazy must be an int"),
    (dict(method="fd"), "method must be one of"),
    (dict(method="finite_difference", sample="real"), "sample must be 'interpolate'"),
    (dict(sample="both"), "sample must be one of"),
    (dict(weight=-2), "weight must be finite"),
    (dict(dragan_scale=0.0), "dragan_scale"),
])
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        gpkernels.GradientPenalty(**kwargs)


def test_skipped_call_still_rejects_bad_inputs():
    gp = gpkernels.GradientPenalty(lazy=2)
    critic, (real, fake, _) = Counting(), data()
    gp(critic, real, fake)
    with pytest.raises(TypeError, match="real must be float"):
        gp(critic, real.long(), fake)


def test_repr_names_the_configuration():
    assert "lazy=4" in repr(gpkernels.GradientPenalty(lazy=4)) and "method='gradient'" in repr(
        gpkernels.GradientPenalty())


def test_a_call_that_raises_does_not_advance_the_lazy_schedule():
    gp = gpkernels.GradientPenalty(lazy=3)
    real, fake = torch.randn(4, 2), torch.randn(4, 2)

    def broken(x):
        raise RuntimeError("critic failed")

    with pytest.raises(RuntimeError, match="critic failed"):
        gp(broken, real, fake)
    assert gp.calls == 0 and gp.due                      # the retry is the due call
    critic = torch.nn.Linear(2, 1)
    assert gp(critic, real, fake).requires_grad          # computed
    assert gp.calls == 1 and not gp.due
