"""The trainer's parts on their own: metrics against values known in closed form, the data sets, the
networks' shapes, and the experiments' --quick figures and report."""

import json
import math

import pytest
import torch

pytest.importorskip("ot")
pytest.importorskip("sklearn")

from gpkernels.trainer import data, metrics, models  # noqa: E402
from gpkernels.trainer.config import resolve  # noqa: E402


# ------------------------------------------------------------------------------------------- metrics

def test_w1_of_a_translated_cloud_is_the_translation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.4], dtype=torch.float64)          # length 0.5
    assert metrics.w1(x, x) == pytest.approx(0.0, abs=1e-7)      # POT expands |x-y|^2: ~1e-9 on the diagonal
    # Moving every point by the same vector is an optimal plan (W1 >= |mean difference| = 0.5).
    assert metrics.w1(x, x + shift) == pytest.approx(0.5, rel=1e-7)


def test_w1_of_two_point_masses():
    a = torch.zeros(10, 2)
    b = torch.full((20, 2), 1.0)
    assert metrics.w1(a, b) == pytest.approx(math.sqrt(2), rel=1e-6)


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Same covariance, shifted mean: the distance is the squared shift.
    assert metrics.frechet_distance(a, a + torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)) == \
        pytest.approx(5.0, rel=1e-9)
    # Scaled by 2: Tr(S + 4S - 2 * 2S) = Tr(S).
    s = torch.cov(a.T)
    assert metrics.frechet_distance(a, 2 * a - a.mean(0)) == pytest.approx(float(s.trace()), rel=1e-6)


def test_js_divergence_bounds_and_a_hand_computed_value():
    assert metrics.js_divergence({"a": 3, "b": 1}, {"a": 6, "b": 2}) == pytest.approx(0.0, abs=1e-15)
    assert metrics.js_divergence({"a": 1}, {"b": 5}) == pytest.approx(1.0)
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); JS = 1/2 log2(4/3) + 1/2 (1/2 log2(2/3) + 1/2 log2(2))
    expected = 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25
    assert metrics.js_divergence({"a": 2}, {"a": 1, "b": 1}) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(metrics.js_divergence({}, {"a": 1}))


def test_ngram_js_counts_overlapping_ngrams():
    counts = metrics.ngram_counts(["abab"], 2)
    assert counts == {"ab": 2, "ba": 1}
    scores = metrics.ngram_js(["abcd"], ["abcd"])
    assert scores == {"js1": 0.0, "js2": 0.0, "js3": 0.0, "js4": 0.0}
    assert metrics.ngram_js(["aaaa"], ["bbbb"])["js4"] == pytest.approx(1.0)


@pytest.mark.slow                            # trains the digit classifier twice: about 15 s on one thread
def test_digit_classifier_is_cached_and_accurate(tmp_path, monkeypatch):
    monkeypatch.setenv("GPKERNELS_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    s = data.DigitsSampler()
    fd = metrics.DigitsFrechet(s.train, s.train_labels, s.heldout, s.heldout_labels)
    assert fd.accuracy > 0.95
    cached = list(tmp_path.glob("digit_classifier_v*.pt"))
    assert len(cached) == 1
    # Real held-out digits are far closer to themselves than uniform noise is.
    assert fd(s.heldout) == pytest.approx(0.0, abs=1e-5)
    noise = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert fd(noise) > 20 * fd.floor > 0
    # A corrupt cache file is replaced, not fatal.
    cached[0].write_bytes(b"not a checkpoint")
    again = metrics.DigitsFrechet(s.train, s.train_labels, s.heldout, s.heldout_labels)
    assert again.accuracy == pytest.approx(fd.accuracy)


# ---------------------------------------------------------------------------------------------- data

def test_toy_sets_have_their_modes():
    g = torch.Generator().manual_seed(0)
    x = data.ToySampler("8gaussians").sample(4000, g).double()
    radius = x.norm(dim=1)
    assert radius.mean().item() == pytest.approx(2 / 1.414, rel=0.01)
    angles = torch.atan2(x[:, 1], x[:, 0]) / (2 * math.pi / 8)
    assert (angles - angles.round()).abs().max() < 0.1                 # every point near one of 8 directions
    y = data.ToySampler("25gaussians").sample(4000, g).double() * 2.828
    assert (y - (y / 2).round() * 2).abs().max() < 0.4                 # near the 5x5 grid of spacing 2
    assert len(torch.unique((y / 2).round(), dim=0)) == 25
    with pytest.raises(ValueError, match="unknown toy set"):
        data.ToySampler("9gaussians")


def test_samplers_follow_their_generator():
    for name in ("swissroll", "digits", "text"):
        s = data.make_sampler(name)
        a = s.sample(5, torch.Generator().manual_seed(3))
        b = s.sample(5, torch.Generator().manual_seed(3))
        assert torch.equal(a, b)


def test_digits_are_scaled_and_split():
    s = data.DigitsSampler()
    assert s.train.shape[1:] == (1, 8, 8) and len(s.train) + len(s.heldout) == 1797
    assert s.train.min() == -1 and s.train.max() == 1
    batch = s.sample(16, torch.Generator().manual_seed(0))
    assert batch.shape == (16, 1, 8, 8) and batch.dtype == torch.float32


def test_text_set_is_one_hot_and_decodes_back():
    s = data.TextSampler()
    assert 30 < s.vocab_size <= len(data.ALPHABET)
    codes = s.windows(s.heldout_codes, 4, torch.Generator().manual_seed(0))
    x = s.one_hot(codes)
    assert x.shape == (4, s.vocab_size, 32)
    assert torch.equal(x.sum(1), torch.ones(4, 32))
    assert s.decode(x) == s.strings(codes)
    assert all(len(t) == 32 for t in s.decode(x))


def test_clean_text():
    assert data.clean_text("Hello,\n\n  World!\n=====\n“Quoted” — dash") == 'hello, world! "quoted" - dash'


# -------------------------------------------------------------------------------------------- models

@pytest.mark.parametrize("dataset", data.DATASETS)
def test_networks_map_noise_to_samples_to_scores(dataset):
    depths = {"digits": {}, "text": dict(depth=1)}.get(dataset, dict(depth=1, critic_depth=1))
    config = resolve(dict(dataset=dataset, width=16, **depths))
    vocab = 40 if dataset == "text" else None
    g, d, noise = models.build(config, vocab)
    fake = g(torch.randn(3, noise))
    real_shape = {"digits": (3, 1, 8, 8), "text": (3, 40, 32)}.get(dataset, (3, 2))
    assert fake.shape == real_shape
    assert d(fake).shape == (3,)
    if dataset == "text":
        assert torch.allclose(fake.sum(1), torch.ones(3, 32), atol=1e-6)   # softmax over characters
    if dataset == "digits":
        assert fake.abs().max() <= 1
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())


def test_digits_critic_layernorm_keeps_samples_independent():
    d = models.DigitsCritic(width=8, layernorm=True).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    alone = torch.stack([d(x[i:i + 1])[0] for i in range(4)])
    assert torch.allclose(d(x), alone, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------- experiments

def _png_size(path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


@pytest.mark.slow                            # every experiment end to end: over a minute on one CPU thread
def test_quick_experiments_write_pngs_and_a_report(tmp_path, monkeypatch):
    """Every experiment's --quick mode, shortened by --scale so the suite stays fast: the whole path from the
    runs to the figures, the report and summary.json, plus the findings that already show at that length."""
    pytest.importorskip("matplotlib")
    from gpkernels.trainer import experiments

    monkeypatch.setenv("GPKERNELS_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    try:
        code = experiments.main(["all", "--quick", "--scale", "0.05", "--out", str(tmp_path / "out"),
                                 "--no-progress", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    # The subnormal flush the experiments use is process-wide: it must be off again for the rest of the suite.
    assert torch.tensor([1e-40], dtype=torch.float32).item() != 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    for name in ("weights.png", "grad_norms.png", "toy.png", "convergence.png", "digits.png", "text.png"):
        width, height = _png_size(out / name)
        assert width > 300 and height > 200
        assert f"]({name})" in report
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"weights", "grad-norms", "toy", "convergence", "digits", "text"}
    # Clipping piles weights up at +-c within a few steps.
    assert summary["weights"]["clip"]["at_bound"] > 0.3
    assert summary["weights"]["gp"]["std"] > 3 * summary["weights"]["clip"]["std"]
    # The tiniest clip bound leaves the first layer with a vanishing gradient; GP does not.
    norms = summary["grad-norms"]
    assert norms["clip c=0.001"]["norms"][0] < 1e-6 * norms["gradient penalty"]["norms"][0]
    for dataset in experiments.TOY_SETS:
        assert all(0 < v < 10 for v in summary["toy"]["w1"][dataset].values())
        assert 0 < summary["toy"]["real"][dataset] < 0.3
    for method in ("clip", "gp", "gp, lazy 4", "fd"):
        assert summary["convergence"][method]["steps"] >= 2
    for reg in ("clip", "gp", "fd"):
        assert summary["digits"][reg]["final"] > 0
    assert summary["digits"]["classifier_accuracy"] > 0.95
    assert 0 <= summary["text"]["final"]["js4"] <= 1
    assert len(summary["text"]["samples"]) == 8


def test_experiments_reject_an_unknown_name(capsys):
    from gpkernels.trainer import experiments
    with pytest.raises(SystemExit) as e:
        experiments.main(["everything", "--out", "x"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
