#!/usr/bin/env bash
# GPU check of gspdml (issue 15): ONE command, at most 8 minutes on one H100/H200, offline.
#
#   benchmarks/gpu_check.sh            # on the GPU machine (needs CUDA)
#   benchmarks/gpu_check.sh --quick    # (alias --dry-run) everything tiny on the CPU, < 60 s:
#                                      # checks the script itself, numbers mean nothing
#
# It uses the checkout's code (PYTHONPATH=src, nothing is installed into the environment) with
# the python3 found there (PYTHON=... to choose another) and what that environment holds (torch
# with CUDA, numpy, ...). Missing packages are listed; stages that need one are skipped with the
# reason. Wheels in .whl/ (or $GPU_CHECK_WHEELS) are installed first, offline, into a private
# folder (see benchmarks/README.md, "GPU check", for carrying pytorch-metric-learning and
# faiss-cpu to a machine without internet).
#
# Stages (each under its own time limit, all under one budget, GPU_CHECK_BUDGET_S, default 450 s):
#   env            torch/CUDA/GPU and the packages there          -> gpu_check_logs/env.json
#   pytest_cuda    pytest -m cuda (solver, module, compile, export, precision on CUDA)
#   gsp_fp32/bf16  gspdml bench gsp at the four shapes, maps and tokens, fp32 and bf16
#   train_eager    gspdml bench train: BN-Inception, 227 px, batch 32, GAP vs GSP vs GSP+L_ZS
#   train_compiled the same, eager and torch.compile-d side by side
#   eval           gspdml bench eval: kNN metrics on the GPU (knn=auto) vs the CPU baselines, 60k x 128
#                  self-retrieval and 5,000 queries against a 200,000 x 128 gallery
# and writes ONE JSON, ${OUT:-bench_results}/gpu_check.json, and a summary gpu_check.md next to it
# (the logs of every stage in gpu_check_logs/).
set -u -o pipefail

MODE=gpu
for arg in "$@"; do
  case "$arg" in
    --quick | --dry-run) MODE=quick ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (expected --quick, --dry-run or --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
OUT_DIR=${OUT:-bench_results}
LOGS="$OUT_DIR/gpu_check_logs"
mkdir -p "$LOGS" || exit 2
PY=${PYTHON:-python3}
if [ "$MODE" = quick ]; then BUDGET=${GPU_CHECK_BUDGET_S:-55}; else BUDGET=${GPU_CHECK_BUDGET_S:-450}; fi
RESERVE=10 # seconds kept for the summary
START=$SECONDS
STAGES="$LOGS/stages.tsv"
rm -f "$LOGS"/*.json "$LOGS"/*.log "$LOGS"/*.xml "$OUT_DIR/gpu_check.json" "$OUT_DIR/gpu_check.md" # no stale results
: >"$STAGES"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# ---------------------------------------------------------------------------------------- wheels
WHEELS=${GPU_CHECK_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=${GPU_CHECK_SITE:-/tmp/gspdml_gpu_check_site}
  echo "== installing $(ls "$WHEELS"/*.whl | wc -l) wheel(s) from $WHEELS into $SITE (offline, no dependencies)"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "   wheel install failed; continuing with what is installed"
  fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------------------------------- stages
# run_stage NAME CAP_SECONDS COMMAND...: run COMMAND under min(CAP, time left) seconds, log to
# $LOGS/NAME.log, record "name status rc seconds limit note" in $STAGES, print the log's tail.
run_stage() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START) - RESERVE))
  local limit=$((cap < left ? cap : left))
  if ((limit < 5)); then
    printf '%s\tskipped\t\t0\t0\ttime budget spent\n' "$name" >>"$STAGES"
    echo "== $name: skipped (time budget spent)"
    return 0
  fi
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS rc status
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    5) [ "$name" = pytest_cuda ] && status="no tests" || status=failed ;; # pytest: nothing collected
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t\n' "$name" "$status" "$rc" "$((SECONDS - t0))" "$limit" >>"$STAGES"
  tail -n 30 "$LOGS/$name.log" | sed 's/^/   /'
  echo "   -> $status (exit $rc, $((SECONDS - t0)) s)"
}

skip_stage() { # NAME REASON
  printf '%s\tskipped\t\t0\t0\t%s\n' "$1" "$2" >>"$STAGES"
  echo "== $1: skipped ($2)"
}

# env: what is there (also decides which stages can run)
cat >"$LOGS/env.py" <<'EOF'
import importlib, importlib.metadata, importlib.util, json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
try:
    import torch
    info.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), cuda=torch.version.cuda,
                threads=torch.get_num_threads())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                    capability=f"{p.major}.{p.minor}", bf16_supported=torch.cuda.is_bf16_supported())
except ImportError as exc:
    info["torch"] = None
    info["torch_error"] = str(exc)
# module -> distribution (found without importing them: fast; versions from the installed metadata)
names = {"numpy": "numpy", "torchvision": "torchvision", "scipy": "scipy", "tqdm": "tqdm", "yaml": "PyYAML",
         "PIL": "Pillow", "pytorch_metric_learning": "pytorch-metric-learning", "faiss": "faiss-cpu",
         "timm": "timm", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "pytest": "pytest",
         "onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}
info["packages"], info["missing"] = {}, []
for name, dist in names.items():
    if importlib.util.find_spec(name) is None:
        info["missing"].append(name)
        continue
    try:
        info["packages"][name] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        info["packages"][name] = "?"
try:
    import gspdml
    info["gspdml"], info["gspdml_path"] = gspdml.__version__, gspdml.__file__
except Exception as exc:
    info["gspdml_error"] = str(exc)
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(f"python {info['python']}, torch {info.get('torch')}, CUDA {info.get('cuda')} "
      f"({'available' if info.get('cuda_available') else 'not available'}), GPU {info.get('gpu', '-')}, "
      f"gspdml {info.get('gspdml', info.get('gspdml_error'))} from {info.get('gspdml_path', '-')}")
print("packages:", ", ".join(f"{k} {v}" for k, v in info["packages"].items()))
print("missing:", " ".join(info["missing"]) or "nothing")
EOF
run_stage env 60 "$PY" "$LOGS/env.py" "$LOGS/env.json"
MISSING=$("$PY" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["missing"]))' "$LOGS/env.json" 2>/dev/null || echo "?")
has() { [[ "$MISSING" == "?" || " $MISSING " != *" $1 "* ]]; } # unknown (env failed): try anyway

if [ "$MODE" = gpu ]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: CUDA is not available to $PY; run it on the GPU machine, or use --quick on a CPU" >&2
    skip_stage pytest_cuda "no CUDA"
    DEVICE=none
  else
    DEVICE=cuda
  fi
else
  DEVICE=cpu
fi

if [ "$DEVICE" != none ]; then
  # pytest -m cuda: the CUDA-marked tests (they skip without CUDA, so --quick only checks the plumbing)
  if has pytest; then
    run_stage pytest_cuda 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda --continue-on-collection-errors \
      --junitxml="$LOGS/pytest_cuda.xml" tests
  else
    skip_stage pytest_cuda "pytest is missing"
  fi

  # bench gsp at the four shapes, maps and tokens (options as far as this checkout's bench gsp has
  # them); --quick swaps in one tiny shape (the script's plumbing is checked, not the layer)
  GSP_HELP=$("$PY" -m gspdml.cli bench gsp --help 2>/dev/null)
  GSP_OPTS=(--device "$DEVICE" --no-progress)
  [[ "$GSP_HELP" == *"--layouts"* ]] && GSP_OPTS+=(--layouts maps tokens)
  if [ "$MODE" = quick ]; then
    GSP=("$PY" -c 'import sys, gspdml.bench.gsp as b; b.SHAPES[:] = [(4, 8, 9, 16)]
from gspdml.cli import main; sys.exit(main(sys.argv[1:]))' bench gsp --repeats 1)
  else
    GSP=("$PY" -m gspdml.cli bench gsp)
  fi
  for prec in fp32 bf16; do
    if [[ "$GSP_HELP" == *"--precision"* ]]; then
      run_stage "gsp_$prec" 90 "${GSP[@]}" "${GSP_OPTS[@]}" --precision "$prec" --out "$LOGS/gsp_$prec.json"
    elif [ "$prec" = fp32 ]; then
      run_stage gsp_fp32 90 "${GSP[@]}" "${GSP_OPTS[@]}" --out "$LOGS/gsp_fp32.json"
    else
      skip_stage gsp_bf16 "this checkout's bench gsp has no --precision option"
    fi
  done

  # bench train: BN-Inception at 227 px, batch 32, GAP vs GSP vs GSP+L_ZS; eager first (always
  # fast), then eager and compiled side by side (compilation takes most of that stage's time)
  if [ "$MODE" = quick ]; then
    TRAIN=(--backbones smallcnn --image-size 16 --batch-size 8 --device cpu --precision fp32)
    COMPILED=(--steps 1 --warmup 1 --compile --compile-backend eager)
  else
    TRAIN=(--backbones bninception --image-size 227 --batch-size 32 --device cuda --precision auto)
    EAGER=(--steps 30 --warmup 5)
    COMPILED=(--steps 20 --warmup 3 --compile)
  fi
  if ! has pytorch_metric_learning; then
    skip_stage train_eager "pytorch_metric_learning is missing (the MS loss); carry its wheel in .whl/"
    skip_stage train_compiled "pytorch_metric_learning is missing (the MS loss); carry its wheel in .whl/"
  else
    if [ "$MODE" = quick ]; then
      skip_stage train_eager "--quick: the eager setups run side by side in train_compiled"
    else
      run_stage train_eager 90 "$PY" -m gspdml.cli bench train "${TRAIN[@]}" --poolings gap gsp gsp+zs \
        "${EAGER[@]}" --no-progress --json "$LOGS/train_eager.json"
    fi
    run_stage train_compiled 300 "$PY" -m gspdml.cli bench train "${TRAIN[@]}" --poolings gap gsp gsp+zs \
      "${COMPILED[@]}" --no-progress --json "$LOGS/train_compiled.json"
  fi

  # bench eval: the retrieval metrics with knn=auto (faiss GPU or torch on CUDA) against the CPU
  # baselines (PML stock + faiss-cpu, plain torch) in the same run
  if ! has pytorch_metric_learning || ! has faiss; then
    skip_stage eval "pytorch_metric_learning or faiss is missing; carry their wheels in .whl/"
  elif [ "$MODE" = quick ]; then
    run_stage eval 40 "$PY" -m gspdml.cli bench eval --quick --methods ours naive --gallery-methods ours naive \
      --json "$LOGS/eval.json"
  else
    run_stage eval 90 "$PY" -m gspdml.cli bench eval --num 60000 --classes 11000 --gallery 200000 \
      --gallery-queries 5000 --methods ours pml naive --gallery-methods ours ours_memmap naive \
      --json "$LOGS/eval.json"
  fi
fi

# --------------------------------------------------------------------------------------- summary
cat >"$LOGS/summary.py" <<'EOF'
"""Collect the stages' outputs into gpu_check.json and gpu_check.md."""
import json, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

out_dir, mode, budget, elapsed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
logs = out_dir / "gpu_check_logs"
try:
    from gspdml.io import format_table, write_json
except Exception:  # the checkout's code did not import: still write what there is
    def format_table(header, rows, markdown=True):
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])

    def write_json(path, obj):
        Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")

def load(name):
    p = logs / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None

def log_text(name):
    try:
        lines = (logs / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines if not line.startswith("wrote "))

stages = []
for line in (logs / "stages.tsv").read_text().splitlines():
    name, status, rc, seconds, limit, note = (line.split("\t") + [""] * 6)[:6]
    stages.append({"stage": name, "status": status, "exit_code": int(rc) if rc else None,
                   "seconds": int(seconds or 0), "limit_s": int(limit or 0), "note": note})
status = {s["stage"]: s["status"] for s in stages}

pytest = None
xml = logs / "pytest_cuda.xml"
if xml.is_file():
    try:
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        cases = suite.findall("testcase")
        failed = [f"{c.get('classname')}::{c.get('name')}" for c in cases
                  if c.find("failure") is not None or c.find("error") is not None]
        pytest = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        pytest["passed"] = pytest["tests"] - pytest["failures"] - pytest["errors"] - pytest["skipped"]
        pytest["failed_tests"] = failed
    except (ET.ParseError, AttributeError) as exc:
        pytest = {"error": f"cannot read {xml}: {exc}"}

gsp = {p: load(f"gsp_{p}.json") for p in ("fp32", "bf16")}
train = {m: load(f"train_{m}.json") for m in ("eager", "compiled")}
bench_eval = load("eval.json")

targets = []  # {"target", "value", "met"}
for prec, res in gsp.items():
    if isinstance(res, dict) and isinstance(res.get("targets_met"), dict):
        targets += [{"target": f"bench gsp {prec}: {k}", "value": None, "met": bool(v)}
                    for k, v in res["targets_met"].items()]
for m, rows in train.items():
    for r in rows or []:
        if r.get("pooling") in ("gsp", "gsp+zs") and r.get("ratio_to_gap") is not None:
            targets.append({"target": f"bench train ({m} run) {r['backbone']} {r['mode']}: {r['pooling']} step "
                                      f"<= 1.05x gap", "value": round(r["ratio_to_gap"], 3),
                            "met": r["ratio_to_gap"] <= 1.05})

result = {
    "script": "benchmarks/gpu_check.sh",
    "mode": mode,
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "budget_s": budget,
    "elapsed_s": elapsed,
    "env": load("env.json"),
    "stages": stages,
    "pytest_cuda": pytest,
    "bench_gsp": gsp,
    "bench_train": train,
    "bench_eval": bench_eval,
    "targets": targets,
}
write_json(out_dir / "gpu_check.json", result)

env = result["env"] or {}
md = [f"# gspdml GPU check ({mode})", "",
      f"{env.get('gpu', 'no GPU')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, python {env.get('python')}; "
      f"finished {result['finished']}, {elapsed} s of a {budget} s budget.",
      f"Missing packages: {', '.join(env.get('missing') or []) or 'none'}.", "", "## Stages", "",
      format_table(["stage", "status", "exit", "seconds", "limit s", "note"],
                   [[s["stage"], s["status"], "" if s["exit_code"] is None else s["exit_code"], s["seconds"],
                     s["limit_s"], s["note"]] for s in stages])]
if pytest:
    md += ["", "## pytest -m cuda", ""]
    if "error" in pytest:
        md.append(pytest["error"])
    else:
        md.append(f"{pytest['passed']} passed, {pytest['failures']} failed, {pytest['errors']} errors, "
                  f"{pytest['skipped']} skipped")
        md += [f"- FAILED {t}" for t in pytest["failed_tests"]]
for prec in ("fp32", "bf16"):
    text = log_text(f"gsp_{prec}")
    if text:
        md += ["", f"## bench gsp ({prec}; {status.get(f'gsp_{prec}')})", "", "```", text, "```"]
for m, rows in train.items():
    if rows:
        md += ["", f"## bench train ({m} run)", ""]
        ok = [r for r in rows if "error" not in r]
        if ok:
            r0 = ok[0]
            md.append(f"{r0['image_size']} px, batch {r0['batch_size']}, {r0['device']}, precision "
                      f"{r0['precision']}, median of {r0['steps']} steps")
            md.append("")
        md.append(format_table(
            ["backbone", "pooling", "mode", "step ms", "steps/s", "images/s", "vs gap", "vs eager", "first step s"],
            [[r["backbone"], r["pooling"], r["mode"]] + (["failed: " + r["error"]] + [""] * 5 if "error" in r else [
                f"{r['step_ms']:.1f}", f"{1000 / r['step_ms']:.2f}", f"{r['images_per_s']:.1f}",
                "-" if r.get("ratio_to_gap") is None else f"{r['ratio_to_gap']:.3f}x",
                f"{r['speedup_vs_eager']:.2f}x" if r.get("speedup_vs_eager") else "-",
                "-" if r.get("first_step_s") is None else f"{r['first_step_s']:.2f}"]) for r in rows]))
    elif status.get(f"train_{m}") not in (None, "ok"):
        md += ["", f"## bench train ({m} run): {status.get(f'train_{m}')}"]
        tail = "\n".join(log_text(f"train_{m}").splitlines()[-15:])
        md += ["", "```", tail, "```"] if tail else []
if isinstance(bench_eval, dict) and bench_eval.get("cases"):
    md += ["", f"## bench eval ({status.get('eval')})", "", "```", log_text("eval"), "```"]
elif status.get("eval") not in (None, "ok"):
    md += ["", f"## bench eval: {status.get('eval')}"]
if targets:
    md += ["", "## Targets", ""]
    md += [f"- {t['target']}: {'met' if t['met'] else 'MISSED'}"
           + ("" if t["value"] is None else f" ({t['value']}x)") for t in targets]
(out_dir / "gpu_check.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
print(f"\nwrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")
EOF
"$PY" "$LOGS/summary.py" "$OUT_DIR" "$MODE" "$BUDGET" "$((SECONDS - START))"
rc=$?
if [ $rc -ne 0 ]; then
  echo "gpu_check.sh: the summary failed (exit $rc); the stages' logs are in $LOGS" >&2
  exit $rc
fi
# exit 1 without CUDA (GPU mode) or when a stage failed or timed out (skipped stages are reported)
[ "$DEVICE" = none ] && exit 1
if cut -f2 "$STAGES" | grep -qE '^(failed|timeout)$'; then exit 1; fi
exit 0
