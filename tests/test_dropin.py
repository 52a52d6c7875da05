"""Drop-in for the critics people have: the critic's own keyword arguments (critic_kwargs=), critics that return
dicts or tuples (score=), DRAGAN's conventions (std correction, noise form), and W-div's real-and-fake points.
Each against a penalty written here in plain autograd as the papers and popular scripts write it."""

import pytest
import torch
from torch import nn

import gpkernels

B = 6


def data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(B, 4, generator=gen, dtype=torch.float64)
    fake = torch.randn(B, 4, generator=gen, dtype=torch.float64) + 0.5
    return real, fake


class Conditional(nn.Module):
    """A critic whose forward takes arguments named like penalty options."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)).double()

    def forward(self, x, weight, target=0.0):
        return self.net(x).squeeze(1) * weight + target


def plain(critic, x, *, weight=10.0, target=1.0, exponent=2.0):
    """weight * mean_i |  ||grad D(x_i)|| - target |^exponent, plain autograd."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return weight * (g.flatten(1).norm(dim=1) - target).abs().pow(exponent).mean()


def test_critic_kwargs_reach_the_critic_even_when_named_like_options():
    D, (real, fake) = Conditional(), data()
    alpha = torch.rand(B, dtype=torch.float64)
    got = gpkernels.gradient_penalty(D, real, fake, alpha=alpha, weight=10.0, critic_kwargs={"weight": 2.0})
    x = alpha[:, None] * real + (1 - alpha[:, None]) * fake
    torch.testing.assert_close(got, plain(lambda y: D(y, weight=2.0), x))
    # Positional critic arguments are unambiguous too.
    torch.testing.assert_close(gpkernels.gradient_penalty(D, real, fake, 2.0, alpha=alpha), got)


def test_an_option_named_like_a_critic_argument_must_be_disambiguated():
    D, (real, fake) = Conditional(), data()
    with pytest.raises(TypeError, match=r"gpkernels.gradient_penalty: weight= is ambiguous: it is the penalty's "
                                        r"weight and the critic also takes an argument called 'weight'.*"
                                        r"critic_kwargs=\{'weight': \.\.\.\}"):
        gpkernels.gradient_penalty(D, real, fake, weight=3.0)
    with pytest.raises(TypeError, match=r"target= is ambiguous"):      # an optional critic argument too
        gpkernels.gradient_penalty(D, real, fake, 2.0, target=1.0)
    # critic_kwargs={} says "the penalty's": the critic keeps its default.
    alpha = torch.rand(B, dtype=torch.float64)
    got = gpkernels.gradient_penalty(D, real, fake, 2.0, target=1.0, alpha=alpha, critic_kwargs={})
    torch.testing.assert_close(got, gpkernels.gradient_penalty(lambda x: D(x, 2.0), real, fake, alpha=alpha))
    with pytest.raises(TypeError, match=r"weight= is a tensor, but the penalty's weight is a number. If it is the "
                                        r"critic's argument 'weight', pass it as critic_kwargs="):
        gpkernels.gradient_penalty(D, real, fake, weight=torch.tensor(2.0))


def test_a_taken_option_the_critic_needed_is_named_where_its_signature_is_hidden():
    """Behind *args/**kwargs (a wrapper) the ambiguity shows only when the critic fails: its error is explained."""
    D, (real, fake) = Conditional(), data()

    def hidden(*args, **kwargs):
        return D(*args, **kwargs)

    with pytest.raises(TypeError, match=r"weight= was taken as the penalty's weight, but the critic needs an "
                                        r"argument called 'weight'.*critic_kwargs="):
        gpkernels.gradient_penalty(hidden, real, fake, weight=3.0)
    with pytest.raises(TypeError, match="given both as a keyword and in critic_kwargs"):
        gpkernels.gradient_penalty(D, real, fake, critic_kwargs={"y": 1}, y=2)
    with pytest.raises(TypeError, match="critic_kwargs must be a mapping"):
        gpkernels.gradient_penalty(D, real, fake, critic_kwargs=[("weight", 1.0)])


def test_one_alpha_for_the_whole_batch_is_refused_with_the_replay_recipe():
    D, (real, fake) = Conditional(), data()
    with pytest.raises(ValueError, match=r"gpkernels.gradient_penalty: alpha must hold one mixing weight per "
                                         r"sample.*pass alpha=eps.reshape\(1\).expand\(6\)"):
        gpkernels.gradient_penalty(D, real, fake, 2.0, alpha=torch.rand(1, dtype=torch.float64))


@pytest.mark.parametrize("score,out", [
    ("adv", lambda s: {"adv": s, "aux": s.detach()}),
    (0, lambda s: (s, None)),
    (1, lambda s: [None, s[:, None]]),
    (lambda o: o["logits"][:, 0], lambda s: {"logits": torch.stack([s, s], 1)}),
])
def test_score_selects_from_dicts_tuples_or_by_callable(score, out):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    real, fake = data()
    alpha = torch.rand(B, dtype=torch.float64)
    want = gpkernels.gradient_penalty(lambda x: net(x), real, fake, alpha=alpha)
    got = gpkernels.gradient_penalty(lambda x: out(net(x).squeeze(1)), real, fake, alpha=alpha, score=score)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    gp = gpkernels.GradientPenalty(score=score)
    torch.testing.assert_close(gp(lambda x: out(net(x).squeeze(1)), real, fake, alpha=alpha), want, rtol=0, atol=0)


def test_dict_output_without_score_and_a_wrong_key_say_what_to_do():
    real, fake = data()
    critic = lambda x: {"adv_output": x.sum(1)}  # noqa: E731
    with pytest.raises(TypeError, match=r"returned a dict \(keys: 'adv_output'\); pass score=KEY"):
        gpkernels.gradient_penalty(critic, real, fake)
    with pytest.raises(ValueError, match=r"score='adv' selects nothing .* \(keys: 'adv_output'\)"):
        gpkernels.gradient_penalty(critic, real, fake, score="adv")
    with pytest.raises(TypeError, match="score must be None, a key"):
        gpkernels.gradient_penalty(critic, real, fake, score=1.5)


@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("noise", ["uniform", "normal"])
def test_dragan_conventions(correction, noise):
    """DRAGAN's points as the authors' code (population std, U[0,1) noise) and as the paper's text and torch
    ports write them (Bessel-corrected std; normal noise), drawn alpha first, then the noise."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    real, _ = data()
    gen = torch.Generator().manual_seed(11)
    alpha = torch.rand(B, generator=gen, dtype=torch.float64)
    draw = torch.rand if noise == "uniform" else torch.randn
    u = draw(real.shape, generator=gen, dtype=torch.float64)
    perturbed = real + 0.5 * real.std(correction=correction) * u
    x = alpha[:, None] * perturbed + (1 - alpha[:, None]) * real
    got = gpkernels.dragan_penalty(net, real, generator=torch.Generator().manual_seed(11),
                                   dragan_correction=correction, dragan_noise=noise)
    torch.testing.assert_close(got, plain(net, x))


def test_real_and_fake_points_take_one_norm_per_point():
    """sample="real_and_fake": the 2B points real and fake, as W-div takes them; exponent 2 here (W-div's own
    exponent is tested with the fused kernels' exponent)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    real, fake = data()
    got = gpkernels.gradient_penalty(net, real, fake, sample="real_and_fake", target=0.0, weight=2.0)
    want = (plain(net, real, weight=2.0, target=0.0) + plain(net, fake, weight=2.0, target=0.0)) / 2
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="alpha is used only with"):
        gpkernels.gradient_penalty(net, real, fake, sample="real_and_fake", alpha=torch.rand(B))
