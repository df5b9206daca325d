"""The command-line entry point: help, version, routing and clean user errors."""
import subprocess
import sys

import pytest

from gspdml import cli
from gspdml.errors import ConfigError


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "gspdml.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("gspdml ")


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_user_errors_print_one_line_without_traceback(monkeypatch, capsys):
    def fake_run(args):
        raise ConfigError("unknown loss 'X'; valid choices are: C1, C2")

    def fake_add(parser):
        pass

    import types

    module = types.SimpleNamespace(add_arguments=fake_add, run=fake_run)
    monkeypatch.setitem(sys.modules, "gspdml.fake_cmd", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("gspdml.fake_cmd", "test command"))
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert "unknown loss 'X'" in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        cli.main(["fake", "--debug"])


def test_chosen_path_imports_only_the_named_command():
    assert cli._chosen_path(["bench", "--quick", "gsp"]) == ["bench", "gsp"]
    assert cli._chosen_path(["--help"]) == []
    assert cli._chosen_path(["train", "--config", "x.yaml"]) == ["train"]
