"""A non-editable install ships the configs and trains by config name from an empty folder.

The project is copied (pyproject, README, LICENSE, src/) into a temporary folder, built into a
wheel with the current interpreter's setuptools (no build isolation, no index), installed with
``pip --target`` into a fresh folder, and run with ``PYTHONPATH`` set to that folder from an empty
working directory, so neither the checkout nor its editable install is used.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_wheel_install_trains_a_shipped_config_by_name(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          project, "-w", wheels], cwd=project, env=pip_env)
    (wheel,) = wheels.glob("gspdml-*.whl")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", site, wheel],
         env=pip_env)

    empty, runs = tmp_path / "empty", tmp_path / "runs"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    where = _run([sys.executable, "-c", "import gspdml; print(gspdml.__file__)"], cwd=empty, env=env)
    assert Path(where.stdout.strip()).resolve().is_relative_to(site.resolve())
    listed = _run([sys.executable, "-m", "gspdml.cli", "configs"], cwd=empty, env=env)
    assert "digits_collage_gsp" in listed.stdout

    _run([sys.executable, "-m", "gspdml.cli", "train", "-c", "digits_collage_gsp", "train.max_steps=2",
          "data.options.samples_per_class=4", "eval.test_at_end=false", "train.device=cpu", "--no-progress",
          "train.plot=false", "--out", runs], cwd=empty, env=env)
    run = runs / "digits_collage_gsp"
    for name in ("config.yaml", "metrics.json", "metrics.csv", "log.txt", "checkpoints/last.pt"):
        assert (run / name).is_file(), f"missing {name} in the run folder"
    assert list(empty.iterdir()) == []  # nothing written to the working directory
