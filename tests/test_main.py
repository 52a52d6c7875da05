"""`python -m gpkernels COMMAND`: one entry for every command."""

import sys

import pytest

from gpkernels.__main__ import COMMANDS, main


def test_unknown_and_missing_commands_say_what_exists(capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'nope'" in err and all(c in err for c in COMMANDS)
    assert main([]) == 2
    assert main(["--help"]) == 0 and "experiments" in capsys.readouterr().out


def test_bench_runs_a_checkout_benchmark_by_name(capsys):
    argv, path = list(sys.argv), list(sys.path)
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("head", "penalty", "step", "conv_weight_grad"))
    with pytest.raises(SystemExit) as stop:
        main(["bench", "conv_weight_grad", "--help"])
    assert stop.value.code == 0 and "--threads" in capsys.readouterr().out
    assert sys.argv == argv and sys.path == path     # the caller's process is left as it was


@pytest.mark.parametrize("command", ["train", "experiments", "demo"])
def test_each_command_has_its_options_under_its_own_name(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0 and f"python -m gpkernels {command}" in capsys.readouterr().out
