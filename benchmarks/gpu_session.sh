#!/usr/bin/env bash
# The GPU-machine checks in one run (see benchmarks/RESULTS.md, "On a GPU"). Usage, from the
# repository root on a CUDA machine whose Python has torch, numpy, matplotlib, scikit-learn,
# tqdm, pytest and optuna (for the tune check): OUT=dir bash benchmarks/gpu_session.sh
# With an older lrkit unpacked in .old/ (lrkit/ and a copy of benchmarks/gpu_check.py), the
# range test's per-step overhead is measured for both, interleaved, on the same machine.
# The CPU-side timings (the main job on 2 cores, the monitor's and HD's overhead on one core)
# run on the CI-sized machine instead: see RESULTS.md.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
echo "== 1. range test on the GPU: device, AMP, memory, bitwise restore"
timeout 200 python3 benchmarks/gpu_check.py --only device,memory,bitwise --out "$OUT/gpu_check.json" \
    2>&1 | tee "$OUT/gpu_check.log"
echo "== 2. per-step overhead (this lrkit, then .old's if present, twice)"
for round in 1 2; do
    timeout 60 python3 benchmarks/gpu_check.py --only overhead 2>&1 | grep overhead | sed 's/^/new /'
    [ -d .old/lrkit ] && timeout 60 python3 .old/benchmarks/gpu_check.py --only overhead 2>&1 \
        | grep overhead | sed 's/^/old /'
done | tee "$OUT/overhead.log"
echo "== 3. SGD-HD / Adam-HD on the GPU; tune with a user's MLP, conv net, LightningModule and HF Trainer (default cuBLAS settings)"
TUNE_DIR=$(mktemp -d)
timeout 300 python3 benchmarks/gpu_check.py --only hd,tune,tune_amp,tune_cnn,integrations --tune-dir "$TUNE_DIR" \
    --out "$OUT/gpu_check_hd_tune.json" 2>&1 | tee "$OUT/gpu_check_hd_tune.log"
cp "$TUNE_DIR"/tune-cuda/report.html "$OUT/tune_cuda_report.html" 2>/dev/null
timeout 100 python3 benchmarks/gpu_hd_dot.py > "$OUT/hd_dot.log" 2>&1
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 100 python3 benchmarks/gpu_hd_dot.py \
    > "$OUT/hd_dot_deterministic_cublas.log" 2>&1
echo "== 4. CUDA tests (skipped on CPU in CI)"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_real_setups.py tests/test_optim.py tests/test_callbacks.py \
    tests/test_curvature.py -k "cuda or device" 2>&1 | tail -8 | tee "$OUT/cuda_tests.log"
