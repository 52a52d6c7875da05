"""The frontier experiment's bookkeeping: the Pareto set, the verdict rule, and one shortened end-to-end run
(one data set, three variants, two seeds) that writes its figures and numbers, with the subsampled penalty
and the lazy schedule in the trainer."""

import json
import math

import pytest
import torch

from gpkernels.trainer import frontier


def test_pareto_keeps_the_points_nothing_beats_on_both():
    pts = [(1.0, 5.0), (1.2, 3.0), (2.0, 2.0), (1.5, 4.0), (2.5, 2.0), (3.0, 1.0)]
    assert frontier.pareto(pts) == [0, 1, 2, 5]


def test_verdict_reaches_within_gps_seed_spread_at_the_budget():
    row = lambda cost, mean, std: dict(cost=cost, final=(mean, std))  # noqa: E731
    table = {"clip": row(1.0, 9.0, 0.1), "gp": row(1.8, 1.0, 0.2), "cheap-good": row(1.2, 1.15, 0.1),
             "cheap-bad": row(1.1, 2.0, 0.1), "dear-good": row(1.6, 0.9, 0.1), "cheap-noisy": row(1.3, 1.4, 0.5)}
    table["cheap-diverged"] = dict(row(1.1, 0.9, 0.1), diverged=1)
    v = frontier.verdict(table)
    # cheap-noisy: 1.4 +- 0.5 is outside GP's 1.0 +- 0.2, however wide its own spread
    assert v == dict(reach=["cheap-good"], miss=["cheap-bad", "cheap-noisy", "cheap-diverged"])


def test_a_shortened_frontier_run_writes_its_figures_and_numbers(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from gpkernels.trainer import experiments

    monkeypatch.setattr(frontier, "DATASETS", ("25gaussians",))
    monkeypatch.setattr(frontier, "VARIANTS", [v for v in frontier.VARIANTS
                                               if v[0] in ("clip", "gp", "gp lazy 2 f=1/2")])
    real_run = frontier.run
    monkeypatch.setattr(frontier, "run", lambda ctx: real_run(ctx, seeds=2))
    threads = torch.get_num_threads()
    try:
        code = experiments.main(["frontier", "--quick", "--scale", "0.1", "--out", str(tmp_path), "--no-progress",
                                 "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())["frontier"]["25gaussians"]
    assert set(summary["variants"]) == {"clip", "gp", "gp lazy 2 f=1/2"}
    assert summary["variants"]["clip"]["cost"] == 1.0 and summary["seeds"] == 2
    for v in summary["variants"].values():
        assert math.isfinite(v["final"][0]) and v["cost"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "](frontier.png)" in report and "](frontier_time.png)" in report


def test_calibration_times_every_variant_in_turns(monkeypatch):
    """Every variant is timed the same number of steps (warm-up + rounds x steps), and the costs are positive."""
    from gpkernels.trainer import loop

    calls = {}
    real_step = loop.Trainer.train_step

    def counted(self):
        key = (self.config["regularizer"], self.config["lazy"])
        calls[key] = calls.get(key, 0) + 1
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", counted)
    variants = [("clip", dict(regularizer="clip")), ("gp lazy 4", dict(regularizer="gp", lazy=4))]
    cost = frontier.calibrate("25gaussians", variants, rounds=2, steps=3, warmup=1)
    assert set(cost) == {"clip", "gp lazy 4"} and all(c > 0 and math.isfinite(c) for c in cost.values())
    assert sorted(calls.values()) == [1 + 2 * 3] * 2


def _pinned_run(monkeypatch, tmp_path, jobs):
    from gpkernels.trainer import experiments

    monkeypatch.setattr(frontier, "DATASETS", ("25gaussians",))
    monkeypatch.setattr(frontier, "VARIANTS", [v for v in frontier.VARIANTS if v[0] in ("clip", "gp", "gp lazy 2")])
    monkeypatch.setattr(frontier, "calibrate",
                        lambda dataset, variants, rounds: {"clip": 0.01, "gp": 0.025, "gp lazy 2": 0.02})
    ctx = experiments.Context(tmp_path, quick=True, scale=0.05, progress=False, jobs=jobs, threads=1)
    return frontier.run(ctx, seeds=2)


def test_runs_in_parallel_give_the_serial_numbers(monkeypatch, tmp_path):
    """The step counts come from the calibration, not from the clock while training: the same calibration gives
    the same numbers whether the runs go one at a time or two at a time in worker processes."""
    threads = torch.get_num_threads()
    try:
        serial = _pinned_run(monkeypatch, tmp_path, jobs=1)
        parallel = _pinned_run(monkeypatch, tmp_path, jobs=2)
    finally:
        torch.set_num_threads(threads)
    res = serial["25gaussians"]
    assert res["variants"]["clip"]["steps"] == 20 and res["variants"]["gp lazy 2"]["steps"] == 10  # 0.2 s / cost
    assert res["variants"]["gp lazy 2"]["cost"] == 2.0 and res["common_steps"] == 8
    assert serial == parallel
    curves = res["variants"]["gp lazy 2"]["curves"]
    assert len(curves) == 2 and [p[0] for p in curves[0]][-1] == 10 * 0.02      # seconds = steps x cost


def test_a_failing_run_in_a_worker_stops_the_experiment_with_its_error(monkeypatch, tmp_path):
    from gpkernels.trainer import experiments

    monkeypatch.setattr(frontier, "DATASETS", ("25gaussians",))
    monkeypatch.setattr(frontier, "VARIANTS", [("clip", dict(regularizer="clip")), ("gp", dict(regularizer="gp")),
                                               ("broken", dict(regularizer="gp", lazy=-3))])
    monkeypatch.setattr(frontier, "calibrate", lambda dataset, variants, rounds: dict.fromkeys(
        ("clip", "gp", "broken"), 0.01))
    ctx = experiments.Context(tmp_path, quick=True, scale=0.05, progress=False, jobs=2, threads=1)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(Exception, match="lazy"):
            frontier.run(ctx, seeds=1)
    finally:
        torch.set_num_threads(threads)


def test_runs_in_this_process_leave_the_callers_subnormal_flushing_on(monkeypatch, tmp_path):
    """`experiments` flushes subnormal floats around the whole experiment; the runs must not switch it off."""
    from gpkernels.trainer.loop import flushed_denormals

    tiny = torch.tensor([1e-30], dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        with flushed_denormals():
            if not torch.equal(tiny * 1e-9, torch.zeros(1)):
                pytest.skip("this CPU does not flush subnormal floats")
            _pinned_run(monkeypatch, tmp_path, jobs=1)
            assert torch.equal(tiny * 1e-9, torch.zeros(1))
    finally:
        torch.set_num_threads(threads)
