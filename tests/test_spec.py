"""PenaltySpec, the one configuration object of the public penalties: presets, checks once, signatures kept,
and gpkernels.reference's whole penalty (what the demo, the trainer's --compare-reference and the benchmarks
compare with) against the fused one on the same draws."""

import dataclasses
import inspect

import pytest
import torch

import gpkernels
from gpkernels import PenaltySpec, reference


def critic():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def test_presets_pin_their_fields():
    assert gpkernels.wgan_gp_penalty.spec == PenaltySpec()
    assert gpkernels.lipschitz_penalty.spec == PenaltySpec(one_sided=True)
    assert gpkernels.r1_penalty.spec == PenaltySpec(weight=5.0, target=0.0, sample="real")
    assert gpkernels.r2_penalty.spec == PenaltySpec(weight=5.0, target=0.0, sample="fake")
    assert gpkernels.dragan_penalty.spec == PenaltySpec(sample="dragan")
    assert gpkernels.wdiv_penalty.spec == PenaltySpec(weight=2.0, target=0.0, sample="real_and_fake", exponent=6.0)
    assert gpkernels.finite_difference_penalty.spec == PenaltySpec(method="finite_difference")


def test_signatures_are_the_documented_ones():
    sig = inspect.signature(gpkernels.gradient_penalty)
    assert list(sig.parameters) == [
        "critic", "real", "fake", "critic_args", "weight", "target", "one_sided", "exponent", "sample", "alpha",
        "generator", "dragan_scale", "dragan_correction", "dragan_noise", "scaler", "return_norms", "score",
        "critic_kwargs", "fraction", "strict", "backend", "fast_relu", "more_critic_kwargs"]
    assert sig.parameters["fake"].default is None and sig.parameters["weight"].default == 10.0
    r1 = inspect.signature(gpkernels.r1_penalty).parameters
    assert "target" not in r1 and "alpha" not in r1 and r1["weight"].default == 5.0
    fd = inspect.signature(gpkernels.finite_difference_penalty).parameters
    assert "return_slopes" in fd and "scaler" not in fd and "fast_relu" not in fd


def test_a_pinned_field_goes_to_the_critic_as_before():
    """r1_penalty has no `target`: like any unknown keyword it is the critic's (conditioning) argument."""
    seen = {}

    def scored(x, target=None):
        seen["target"] = target
        return x.sum(1)

    gpkernels.r1_penalty(scored, torch.randn(4, 3), target="label")
    assert seen["target"] == "label"


def test_keyword_data_arguments_and_missing_ones():
    D, real, fake = critic(), torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    a = torch.rand(6, dtype=torch.float64)
    torch.testing.assert_close(gpkernels.gradient_penalty(critic=D, real=real, fake=fake, alpha=a),
                               gpkernels.gradient_penalty(D, real, fake, alpha=a))
    with pytest.raises(TypeError, match="gpkernels.wgan_gp_penalty: missing a required argument: 'fake'"):
        gpkernels.wgan_gp_penalty(D, real)


@pytest.mark.parametrize("field,value,error,match", [
    ("weight", -1.0, ValueError, "weight must be finite and >= 0"),
    ("target", float("nan"), ValueError, "target must be finite"),
    ("one_sided", 1, TypeError, "one_sided must be a bool"),
    ("sample", "middle", ValueError, "sample must be one of"),
    ("backend", "fastest", ValueError, "unknown backend 'fastest'"),
])
def test_checked_once_with_the_function_named(field, value, error, match):
    D, real, fake = critic(), torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    with pytest.raises(error, match=f"gpkernels.gradient_penalty: {match}"):
        gpkernels.gradient_penalty(D, real, fake, **{field: value})
    with pytest.raises(error, match=f"gpkernels.PenaltySpec: {match}"):
        PenaltySpec(**{field: value})


def test_a_cached_spec_does_not_let_an_equal_value_of_another_type_through():
    D, real, fake = critic(), torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    gpkernels.gradient_penalty(D, real, fake, one_sided=True)       # cached for (one_sided, bool, True)
    with pytest.raises(TypeError, match="one_sided must be a bool"):
        gpkernels.gradient_penalty(D, real, fake, one_sided=1)       # 1 == True, but not a bool


def test_spec_is_frozen_and_replace_checks():
    spec = PenaltySpec(target=0.0, sample="real")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.weight = 1.0
    varied = dataclasses.replace(spec, weight=2)
    assert varied.weight == 2.0 and isinstance(varied.weight, float) and varied.target == 0.0
    with pytest.raises(ValueError, match="weight"):
        dataclasses.replace(spec, weight=-2)


def test_module_holds_a_spec():
    spec = PenaltySpec(weight=3.0, target=0.0, sample="real")
    gp = gpkernels.GradientPenalty(spec=spec, lazy=2)
    assert gp.spec is spec and gp.weight == 3.0 and gp.sample == "real" and gp.lazy == 2
    assert gpkernels.GradientPenalty(3.0, 0.0, False, "real").spec == spec    # positional fields as before
    with pytest.raises(TypeError, match="either spec= or the fields"):
        gpkernels.GradientPenalty(spec=spec, weight=1.0)
    D, real = critic(), torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(gp(D, real), gpkernels.r1_penalty(D, real, weight=6.0))   # lazy 2: weight x 2


@pytest.mark.parametrize("kwargs", [dict(), dict(one_sided=True), dict(target=0.0, sample="real"),
                                    dict(target=0.0, sample="fake"), dict(sample="dragan", dragan_scale=0.3),
                                    dict(weight=2.5, target=0.5)], ids=str)
def test_reference_penalty_equals_the_fused_one_on_the_same_draws(kwargs):
    D, real, fake = critic(), torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    fused = gpkernels.gradient_penalty(D, real, fake, generator=torch.Generator().manual_seed(3), **kwargs)
    params = list(D.parameters())[:-1]   # the last bias does not enter a gradient w.r.t. the input
    plain = reference.gradient_penalty(D, real, fake, generator=torch.Generator().manual_seed(3), **kwargs)
    fused_grads = torch.autograd.grad(fused, params, allow_unused=True, materialize_grads=True)
    plain_grads = torch.autograd.grad(plain, params, allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reference_finite_difference_equals_the_fused_one():
    D, real, fake = critic(), torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    fused = gpkernels.finite_difference_penalty(D, real, fake, generator=torch.Generator().manual_seed(3))
    plain = reference.finite_difference_penalty(D, real, fake, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(sample="dragan", dragan_correction=1, dragan_noise="normal"),
                                    dict(target=0.0, exponent=3.0),
                                    dict(target=0.0, exponent=6.0, sample="real_and_fake", weight=2.0),
                                    dict(exponent=1.5, one_sided=True)], ids=str)
def test_reference_penalty_follows_the_newer_options(kwargs):
    D, real, fake = critic(), torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    fused = gpkernels.gradient_penalty(D, real, fake, generator=torch.Generator().manual_seed(3), **kwargs)
    plain = reference.gradient_penalty(D, real, fake, generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(fused, plain, rtol=1e-11, atol=1e-12)


def test_wdiv_equals_the_popular_formula():
    """k/2 * mean(||grad D(real)||^p + ||grad D(fake)||^p), k = 2, p = 6, as the popular W-div code writes it."""
    D, real, fake = critic(), torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    r, f = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(D(r).sum(), r, create_graph=True)
    (gf,) = torch.autograd.grad(D(f).sum(), f, create_graph=True)
    k, p = 2, 6
    want = (gr.reshape(8, -1).pow(2).sum(1) ** (p / 2) + gf.reshape(8, -1).pow(2).sum(1) ** (p / 2)).mean() * k / 2
    got = gpkernels.wdiv_penalty(D, real, fake)
    torch.testing.assert_close(got, want)
    params = list(D.parameters())[:-1]
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b)
