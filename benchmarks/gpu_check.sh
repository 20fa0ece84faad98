#!/usr/bin/env bash
# One check of vqtok on a machine with an NVIDIA GPU, in under ten minutes:
#
#   1. environment: GPU, driver, CUDA / cuDNN as torch sees them;
#   2. the test suite's CUDA-marked tests (pytest -m cuda);
#   3. CPU vs CUDA indices of the shipped models, fp32 / bf16 / fp16 (cuda_agreement.py);
#   4. benchmarks/model.py on CUDA in fp32 / bf16 / fp16 (frames/s, CUDA memory peaks);
#   5. benchmarks/pipeline.py on CUDA in fp32 / bf16 / fp16 (end-to-end encode, memory peak);
#   6. everything appended to benchmarks/RESULTS.md as a dated "## GPU check" section.
#
# On a machine without CUDA it still runs to its end: each CUDA step says "no CUDA", the
# CUDA tests are skipped, no benchmark runs and RESULTS.md is left alone.
#
#   bash benchmarks/gpu_check.sh            # from anywhere; uses the repository's .venv
#   PY=python3 RESULTS=/tmp/r.md bash benchmarks/gpu_check.sh
#
# Each step has its own time limit (STEP_LIMITS below) so the whole stays under ten minutes;
# a step that fails or times out is reported and the check goes on. Exit status: 0 when every
# step that ran passed, 1 otherwise.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
PY=${PY:-.venv/bin/python}
RESULTS=${RESULTS:-benchmarks/RESULTS.md}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vqtok-gpu-check.XXXXXX")
REPORT="$WORK/report.md"
failed=0
started=$(date +%s)

say() { printf '%s\n' "$*" | tee -a "$REPORT"; }

# run LIMIT_S NAME COMMAND...: run a step under a time limit, its output to the terminal and
# to $WORK/NAME.log; a failure is counted, not fatal.
run() {
  local limit=$1 name=$2
  shift 2
  echo "--- $name: $* (limit ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
  local status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    failed=1
    say "**$name failed** (exit $status$([ "$status" -eq 124 ] && echo ", timed out after ${limit}s")); last lines:"
    say '```'
    tail -n 5 "$WORK/$name.log" | tee -a "$REPORT" >/dev/null
    say '```'
  fi
  return "$status"
}

# --- 1. environment ------------------------------------------------------------------------
say "## GPU check — $(date -u '+%Y-%m-%d %H:%M UTC')"
say ""
say "\`bash benchmarks/gpu_check.sh\` on $(uname -n), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' + local changes')."
say ""
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)
  say "- nvidia-smi: $(echo "$gpus" | paste -sd ';' -)"
else
  say "- nvidia-smi: not found"
fi
torch_env=$("$PY" - <<'EOF' 2>&1
import torch
cuda = torch.cuda.is_available()
print(f"- torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if cuda else None}")
if cuda:
    p = torch.cuda.get_device_properties(0)
    print(f"- CUDA device 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
          f"{p.major}.{p.minor}, {torch.cuda.device_count()} device(s); TF32 matmul "
          f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}")
else:
    print("- CUDA: absent (torch.cuda.is_available() is False)")
EOF
)
say "$torch_env"
if echo "$torch_env" | grep -q "CUDA device 0"; then has_cuda=1; else has_cuda=0; fi

# --- 2. CUDA-marked tests ------------------------------------------------------------------
say ""
say "### CUDA tests"
say ""
# only the files that hold a cuda marker: collecting the whole suite costs CPU time for nothing
mapfile -t cuda_files < <(grep -rl --include="test_*.py" "pytest.mark.cuda" tests | sort)
run 90 cuda-tests "$PY" -m pytest -m cuda -rs -p no:cacheprovider "${cuda_files[@]}"
say "- \`pytest -m cuda\` (${#cuda_files[@]} file(s)): $(grep -E '[0-9]+ (passed|failed|skipped|error)' "$WORK/cuda-tests.log" | tail -n 1)"
[ "$has_cuda" -eq 1 ] || say "- no CUDA: the CUDA tests were skipped"

# --- 3..5. CUDA against the CPU, and the benchmarks ----------------------------------------
if [ "$has_cuda" -eq 1 ]; then
  say ""
  say "### CPU vs CUDA indices (shipped models)"
  say ""
  if run 120 agreement "$PY" benchmarks/cuda_agreement.py; then
    { grep '^CPU float32' "$WORK/agreement.log"; echo; grep '^|' "$WORK/agreement.log"; } >>"$REPORT"
  fi

  say ""
  say "### Model on CUDA (benchmarks/model.py)"
  say ""
  if run 240 model "$PY" benchmarks/model.py --devices cuda --dtypes fp32 bf16 fp16 \
       --sizes 128 256 --results "$WORK/model.md"; then
    sed -e '1,/^## Model/d' "$WORK/model.md" | sed -e '1{/^$/d;}' >>"$REPORT"
  fi

  say ""
  say "### Pipeline on CUDA (benchmarks/pipeline.py, vqtok-ema)"
  for dtype in fp32 bf16 fp16; do
    say ""
    if run 45 "pipeline-$dtype" "$PY" benchmarks/pipeline.py --model vqtok-ema --device cuda \
         --dtype "$dtype" --repeat 2 --results "$WORK/pipeline-$dtype.md"; then
      sed -e '1,/^## Pipeline/d' "$WORK/pipeline-$dtype.md" | sed -e '1{/^$/d;}' >>"$REPORT"
    fi
  done
else
  say ""
  say "### CPU vs CUDA indices, model and pipeline benchmarks"
  say ""
  say "- no CUDA: not run"
fi

# --- 6. results -----------------------------------------------------------------------------
say ""
say "Took $(( $(date +%s) - started )) s in all; step logs in $WORK."
if [ "$has_cuda" -eq 1 ]; then
  { echo ""; cat "$REPORT"; } >>"$RESULTS"
  echo "appended to $RESULTS" >&2
else
  echo "no CUDA: $RESULTS not changed (the report above is in $REPORT)" >&2
fi
exit "$failed"
