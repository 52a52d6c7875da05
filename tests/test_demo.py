"""`python -m gpkernels demo` runs end to end (a few training steps) and its correctness check passes."""

import re

import torch

from gpkernels import demo


def test_demo_runs_and_agrees_with_plain_autograd(capsys):
    threads = torch.get_num_threads()
    try:
        assert demo.main(steps=3) == 0
    finally:
        torch.set_num_threads(threads)  # the demo pins one thread
    out = capsys.readouterr().out
    diff = float(re.search(r"largest difference over all critic parameter gradients: (\S+)", out).group(1))
    assert diff <= 1e-9
    assert "whole penalty call" in out and "gpkernels.gradient_penalty" in out
