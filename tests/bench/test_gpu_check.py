"""benchmarks/gpu_check.sh --quick: the GPU check script's plumbing, everything tiny on the CPU."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_quick_mode_runs_every_stage_and_writes_one_json(tmp_path):
    # a generous budget: the quick run takes ~20-30 s, more on a loaded machine (no timing is asserted)
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(tmp_path / "none"),
           "GPU_CHECK_BUDGET_S": "240"}
    done = subprocess.run(["bash", str(SCRIPT), "--quick"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["mode"] == "quick" and result["budget_s"] == 240 and result["elapsed_s"] > 0
    status = {s["stage"]: s["status"] for s in result["stages"]}
    assert list(status) == ["env", "pytest_cuda", "gsp_fp32", "gsp_bf16", "train_eager", "train_compiled", "eval"]
    assert status["eval"] == "ok"
    assert status["env"] == "ok" and status["gsp_fp32"] == "ok" and status["train_compiled"] == "ok"
    assert status["gsp_bf16"] in ("ok", "skipped")  # skipped while bench gsp has no --precision
    assert status["pytest_cuda"] in ("ok", "no tests")  # CUDA tests skip or are deselected on a CPU
    assert status["train_eager"] == "skipped"  # --quick: covered by train_compiled
    assert result["env"]["missing"] == [] and result["env"]["cuda_available"] in (False, True)
    assert result["env"]["gspdml_path"].startswith(str(ROOT / "src"))  # the checkout's code
    assert result["pytest_cuda"]["failures"] == 0 and result["pytest_cuda"]["errors"] == 0
    assert result["bench_gsp"]["fp32"]["rows"], "bench gsp JSON is embedded"
    rows = result["bench_train"]["compiled"]
    assert {(r["pooling"], r["mode"]) for r in rows} == {
        (p, m) for p in ("gap", "gsp", "gsp+zs") for m in ("eager", "compiled")}
    assert not any("error" in r for r in rows)
    assert any(t["target"].endswith("gsp step <= 1.05x gap") for t in result["targets"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## Stages" in md and "## bench train (compiled run)" in md and "| smallcnn | gsp+zs | compiled |" in md


def test_unknown_argument_is_refused(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--fast"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "OUT": str(tmp_path)})
    assert done.returncode == 2 and "unknown argument '--fast'" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()
