"""No raw traceback for a user error in the CLI: output paths that cannot be written are refused
before any work starts, file-system errors and errors raised inside DataLoader worker processes
print as one line (issue 11: `--out` naming a file, a read-only output folder, a corrupt image with
``data.num_workers > 0``)."""
from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset

from gspdml import cli
from gspdml.errors import DataError


def _one_error_line(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"gspdml {command}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "a_file"
    f.write_text("not a folder\n")
    return f


def _read_only_folder(tmp_path) -> Path:
    """A folder this process cannot write into (a chmod-ed folder; as root, /sys)."""
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("x")
    except OSError:
        return ro
    (ro / "probe").unlink()  # root ignores permission bits; sysfs refuses new files even to root
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(probe)
    pytest.skip("no folder that this process cannot write")


@pytest.mark.parametrize(
    "argv, command, shown",
    [
        (["train", "-c", "digits_collage_gsp", "train.max_steps=1", "--out", "{file}", "--no-progress"],
         "train", "{file}"),
        (["train", "-c", "digits_collage_gsp", "train.max_steps=1", "--out", "{file}/runs"], "train", "{file}/runs"),
        (["protocol", "-c", "digits_collage_gsp", "train.max_steps=1", "--folds", "0", "--out", "{file}"],
         "protocol", "{file}"),
        (["demo", "--quick", "--no-progress", "--out", "{file}/demo"], "demo", "{file}/demo"),
        (["bench", "eval", "--quick", "--json", "{tmp}"], "bench eval", "{tmp}"),
        (["bench", "gsp", "--quick", "--no-progress", "--out", "{file}/gsp.json"], "bench gsp", "{file}/gsp.json"),
    ],
)
def test_unwritable_output_is_refused_before_any_work(argv, command, shown, tmp_path, a_file, capsys):
    fill = {"file": str(a_file), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    assert cli.main(argv) == 2
    line = _one_error_line(capsys, command)
    path = shown.format(**fill)
    assert f"cannot write {path!r} (--" in line
    reason = "is a folder, not a file" if path == str(tmp_path) else "is a file, not a folder"
    assert reason in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing was written


def test_read_only_output_folder_is_refused(tmp_path, capsys):
    ro = _read_only_folder(tmp_path)
    assert cli.main(["train", "-c", "digits_collage_gsp", "train.max_steps=1", "--out", str(ro / "runs"),
                     "--no-progress"]) == 2
    line = _one_error_line(capsys, "train")
    assert f"cannot write {str(ro / 'runs')!r} (--out): " in line and "Permission denied" in line


def _fake_command(monkeypatch, run):
    module = types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
    monkeypatch.setitem(sys.modules, "gspdml.fake_cmd", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("gspdml.fake_cmd", "test command"))


class _BrokenImages(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise DataError(f"cannot read image '/data/img{i}.jpg': UnidentifiedImageError: not an image")


def test_data_error_in_a_dataloader_worker_is_one_line(monkeypatch, capsys):
    def run(args):
        # what a DataLoader worker process does with an exception: torch wraps it with the worker's
        # traceback and the main process re-raises it (a real worker: tests/cli/test_output_errors.py)
        from torch._utils import ExceptionWrapper

        try:
            next(iter(DataLoader(_BrokenImages(), batch_size=2, num_workers=0)))
        except DataError:
            wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
        wrapped.reraise()

    _fake_command(monkeypatch, run)
    with pytest.raises(DataError, match="Caught DataError in DataLoader worker process 0"):
        run(None)  # the message torch builds holds the worker's traceback
    assert cli.main(["fake"]) == 2
    line = _one_error_line(capsys, "fake")
    assert line == "gspdml fake: error: cannot read image '/data/img0.jpg': UnidentifiedImageError: not an image"


def test_file_system_errors_are_one_line(monkeypatch, capsys):
    def run(args):
        raise PermissionError(13, "Permission denied", "/results/metrics.json")

    _fake_command(monkeypatch, run)
    assert cli.main(["fake"]) == 2
    assert _one_error_line(capsys, "fake") == "gspdml fake: error: cannot access '/results/metrics.json': Permission denied"
    with pytest.raises(PermissionError):
        cli.main(["fake", "--debug"])
