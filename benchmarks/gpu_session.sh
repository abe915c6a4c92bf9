#!/usr/bin/env bash
# The GPU-machine checks in one run (see benchmarks/RESULTS.md, "On a GPU"). Usage, from the
# repository root on a CUDA machine whose Python has torch, numpy, matplotlib, scikit-learn,
# tqdm, pytest (and optuna for the tune timing): OUT=dir bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
echo "== 1. range test on the GPU"
timeout 240 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
echo "== 2. CUDA tests (skipped on CPU in CI)"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_real_setups.py tests/test_optim.py \
    tests/test_curvature.py -k cuda 2>&1 | tail -5 | tee "$OUT/cuda_tests.log"
echo "== 3. CPU overheads on this machine's idle cores (one thread each)"
timeout 150 taskset -c 2 python3 benchmarks/bench_adaptive.py overhead 2>&1 | tail -40 > "$OUT/adaptive_overhead.log" &
timeout 200 taskset -c 3 python3 benchmarks/bench_monitor.py overhead 2>&1 | tail -40 > "$OUT/monitor_overhead.log" &
echo "== 4. the README's main job on 2 cores"
( cd "$(mktemp -d)" && time timeout 200 taskset -c 0,1 python3 -m lrkit.cli tune --task digits --no-progress ) > "$OUT/tune_main_job.log" 2>&1
wait
tail -25 "$OUT/tune_main_job.log"; cat "$OUT/adaptive_overhead.log" "$OUT/monitor_overhead.log" | tail -60
