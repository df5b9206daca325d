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


def _leaf_commands():
    return [path for path, _ in cli._leaves(cli.COMMANDS)]


def test_table_lists_every_command():
    assert {" ".join(p) for p in _leaf_commands()} == {
        "demo", "train", "eval", "protocol", "configs", "bench gsp", "bench train", "bench eval",
        "analyze zeroshot", "viz weights", "viz prototypes", "viz assignments", "export", "study poolings",
        "pretrain"}


@pytest.mark.parametrize("path", [[]] + [list(p[:1]) for p in _leaf_commands() if len(p) > 1] + _leaf_commands(),
                         ids=lambda p: " ".join(p) or "gspdml")
def test_every_help_ends_with_an_example(path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*path, "--help"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    heading = "examples:" if "examples:" in lines else "example:"
    assert heading in lines
    examples = lines[lines.index(heading) + 1:]
    assert examples and all(line.startswith("  gspdml ") for line in examples)
    if len(path) == 2 or path in (["demo"], ["train"], ["eval"], ["protocol"], ["configs"]):
        assert examples[-1].startswith("  gspdml " + " ".join(path))


def test_overrides_may_stand_before_and_after_flags():
    for argv in (["train", "-c", "digits_collage_gsp", "train.max_steps=7", "--no-progress", "name=x"],
                 ["train", "train.max_steps=7", "-c", "digits_collage_gsp", "name=x", "--no-progress"]):
        args = cli._parse(cli.build_parser(argv), argv)
        assert args.overrides == ["train.max_steps=7", "name=x"] and args.no_progress
        from gspdml.cli.train import resolve_config

        cfg = resolve_config(args)
        assert cfg.train.max_steps == 7 and cfg.name == "x"
    argv = ["protocol", "-c", "digits_collage_gsp", "a.b=1", "--repeats", "2", "c.d=2", "--no-progress", "e=3"]
    args = cli._parse(cli.build_parser(argv), argv)
    assert args.overrides == ["a.b=1", "c.d=2", "e=3"] and args.repeats == 2


def test_stray_arguments_are_still_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "-c", "digits_collage_gsp", "--no-such-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["configs", "stray"])
    assert exc.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_interrupt_exits_130(monkeypatch, capsys):
    import types

    def interrupted(args):
        raise KeyboardInterrupt

    module = types.SimpleNamespace(add_arguments=lambda parser: None, run=interrupted)
    monkeypatch.setitem(sys.modules, "gspdml.fake_cmd", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", cli.Command("gspdml.fake_cmd", "test command", "gspdml fake"))
    assert cli.main(["fake"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_config_by_name_or_path(tmp_path, capsys):
    from gspdml.cli.train import resolve_config
    from gspdml.config import shipped_configs

    by_name = resolve_config(cli._parse(cli.build_parser(["train"]), ["train", "-c", "digits_collage_gsp"]))
    path = tmp_path / "mine.yaml"
    path.write_text(shipped_configs()["digits_collage_gsp"].read_text())
    argv = ["train", "-c", str(path)]
    assert resolve_config(cli._parse(cli.build_parser(argv), argv)) == by_name
    assert cli.main(["train", "-c", "digits_colage_gsp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gspdml train: error: ") and "digits_collage_gsp" in err and "gspdml configs" in err


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_every_example_parses(path):
    import shlex

    example = dict(cli._leaves(cli.COMMANDS))[path].example
    argv = shlex.split(example)[1:]
    assert argv[:len(path)] == list(path)
    args = cli._parse(cli.build_parser(argv), argv)
    assert args._command == " ".join(path) and callable(args._run)
