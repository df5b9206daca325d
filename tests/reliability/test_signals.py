"""SIGINT / SIGTERM during training (issue 11): the current step finishes, ``last.pt`` is written
(also with ``checkpoint_every_steps: 0``), the message says where it is and gives the resume
command, the exit code is 130 / 143, and resuming gives the same parameters as an uninterrupted
run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine_fixtures import blob_datasets, digits_cli_spec, single_thread, tiny_config, write_yaml  # noqa: F401
from gspdml.cli import main
from gspdml.config import load_config, shipped_configs
from gspdml.engine.checkpoint import load_checkpoint
from gspdml.engine.runs import Interrupted
from gspdml.engine.trainer import train

MAX_STEPS = 40


def _tiny_cli_config(tmp_path: Path) -> Path:
    """Digits Collage (shipped with the install), the shipped small configs' checkpoint setting
    (``checkpoint_every_steps: 0``), one DataLoader worker (a terminal's Ctrl-C reaches it too)."""
    spec = digits_cli_spec(tmp_path, "tiny_cli", data={"num_workers": 1}, loss={"name": "MS"},
                           train={"max_steps": MAX_STEPS, "checkpoint_every_steps": 0, "eval_every_steps": 0},
                           eval={"test_at_end": False})
    return write_yaml(tmp_path / "tiny.yaml", spec)


def _model_params(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def test_sigint_to_a_running_train_command_leaves_a_resumable_exact_checkpoint(tmp_path, capsys):
    config = _tiny_cli_config(tmp_path)
    run = tmp_path / "runs" / "tiny_cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gspdml.cli", "train", "-c", str(config), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group, like a terminal's job
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            log = run / "log.txt"
            if log.is_file() and " step 3 epoch" in log.read_text():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the main process and its DataLoader worker
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    ckpt = load_checkpoint(run, prefer="last")
    assert 3 <= ckpt["step"] < MAX_STEPS
    assert f"interrupted by SIGINT after step {ckpt['step']}; checkpoint written: {run / 'checkpoints' / 'last.pt'}" in err
    assert f"resume with: gspdml train --resume {run}" in err
    assert not (run / ".lock").exists()

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert load_checkpoint(run, prefer="last")["step"] == MAX_STEPS
    assert main(["train", "-c", str(config), "--out", str(tmp_path / "ref"), "--no-progress"]) == 0
    resumed, reference = _model_params(run), _model_params(tmp_path / "ref" / "tiny_cli")
    assert resumed.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], rtol=0, atol=1e-6, msg=k)


class _NotHandled(Exception):
    pass


def _unhandled(signum, frame):
    raise _NotHandled(f"{signal.Signals(signum).name} reached the test's own handler: train() installed none")


@pytest.fixture
def signal_guard():
    """While a test sends itself SIGINT/SIGTERM: a handler of its own underneath train()'s (so a
    missing one fails the test instead of killing pytest); put back afterwards."""
    previous = {s: signal.signal(s, _unhandled) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def _signal_at(step: int, signum: int):
    def callback(info):
        if info["step"] == step:
            os.kill(os.getpid(), signum)
    return callback


def test_sigterm_writes_last_pt_without_periodic_checkpoints_and_resumes_exactly(tmp_path, signal_guard):
    over = ["train.max_steps=8", "train.checkpoint_every_steps=0", "data.fold=0", "train.eval_every_steps=3",
            "eval.use_best=false"]
    with pytest.raises(Interrupted) as exc:
        train(tiny_config(tmp_path / "b", over), progress=False, datasets=blob_datasets(),
              callback=_signal_at(3, signal.SIGTERM))
    stop = exc.value
    run = tmp_path / "b" / "tiny"
    assert stop.exit_code == 143 and stop.step == 3 and stop.checkpoint == run / "checkpoints" / "last.pt"
    assert f"resume with: gspdml train --resume {run}" in str(stop)
    assert load_checkpoint(stop.checkpoint)["step"] == 3
    assert "interrupted by SIGTERM after step 3" in (run / "log.txt").read_text()
    assert signal.getsignal(signal.SIGTERM) is _unhandled  # the previous handler is restored

    resumed = train(tiny_config(tmp_path / "b", over), progress=False, datasets=blob_datasets(), resume=run)
    full = train(tiny_config(tmp_path / "a", over), progress=False, datasets=blob_datasets())
    assert resumed.steps == full.steps == 8
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    assert [r["loss"] for r in resumed.history if "loss" in r] == pytest.approx(
        [r["loss"] for r in full.history if "loss" in r], abs=1e-6)


@pytest.mark.parametrize("name", sorted(n for n, p in shipped_configs().items()
                                        if load_config(p).train.checkpoint_every_steps == 0))
def test_shipped_configs_without_periodic_checkpoints_can_be_resumed_after_an_interrupt(tmp_path, name,
                                                                                       signal_guard):
    over = [f"output_dir={tmp_path}", "train.device=cpu", "train.max_steps=5", "eval.test_at_end=false",
            "train.plot=false"]
    cfg = load_config(name, over)
    assert cfg.train.checkpoint_every_steps == 0
    with pytest.raises(Interrupted) as exc:
        train(cfg, progress=False, callback=_signal_at(2, signal.SIGINT))
    assert exc.value.exit_code == 130 and load_checkpoint(exc.value.checkpoint)["step"] == 2
    res = train(load_config(name, over), progress=False, resume=exc.value.run_dir)
    assert res.steps == 5 and res.run_dir == exc.value.run_dir


def test_every_shipped_config_writes_the_interrupt_checkpoint():
    """The interrupt checkpoint needs a run folder and checkpoints: every shipped config has both."""
    configs = shipped_configs()
    assert len(configs) >= 50
    for name, path in configs.items():
        cfg = load_config(path)
        assert cfg.output_dir is not None and cfg.train.save_checkpoints, name
