#!/usr/bin/env bash
# One prepared check for a lent GPU machine (torch + triton + pytest already there; installs nothing):
#   1. every backend on CUDA against the reference (tests/ops/test_backends.py, test_triton.py: CUDA cases) and
#      whole runs: CUDA-graph iterations vs eager, Triton vs reference (tests/test_cuda_attribute.py);
#   2. the op benchmarks, reference vs triton: benchmarks/test_ops_bench.py (torch.compile left
#      out: it compiles for minutes; SAS_GPU_COMPILED=1 includes it);
#   3. benchmarks/bench_attribute.py: CNN-only vs reference SaS step vs fused SaS step vs the whole
#      iteration replayed from a CUDA graph,
#      ResNet8 at 32 px (B = 1 16 128, fp32 and bf16) and VGG16 at 224 px (B = 1 16, fp32 and bf16 models;
#      SAS_GPU_FULL=1 adds B = 128);
#   4. benchmarks/bench_nli.py: the batched NLI solver on the GPU vs scipy on the host, per mask;
#   5. benchmarks/pipeline_graph.py: the mask pipeline alone (forward, a synthetic upstream
#      gradient, backward, Adam) captured in a CUDA graph, replays timed with CUDA events at 224 px
#      B = 1 and 32 px B = 128 (K = 20, both modes), the solve's iteration counts (cold, warm), a
#      torch.profiler kernel table and the ops + launches of one iteration outside the model;
# then prints the short tables last. Expected 3-5 minutes on an H100; the timeouts add up to 480 s (8 min)
# at most, and the summary prints whatever finished. At most 10 files go to OUT_DIR.
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (logs and JSON go to OUT_DIR, default $OUT or /tmp)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/sas_gpu_check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
start=$SECONDS

$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name(0))" || exit 1

echo "== 1. kernels vs reference (compiled) =="
timeout 160 $PY -m pytest -q -p no:cacheprovider tests/ops/test_backends.py tests/ops/test_triton.py \
    tests/test_cuda_attribute.py -k "cuda" \
    -o addopts="" -rfE 2>&1 | tee "$OUT_DIR/test_triton.log"
tests_rc=${PIPESTATUS[0]}
echo "tests exit code $tests_rc after $((SECONDS - start)) s"

echo "== 2. op benchmarks =="
select="not compiled and not cpp"
[ "${SAS_GPU_COMPILED:-0}" = 1 ] && select="not cpp"
timeout 70 $PY -m pytest -q -p no:cacheprovider benchmarks/test_ops_bench.py -k "$select" -o addopts="" \
    --benchmark-min-rounds=3 --benchmark-max-time=0.3 --benchmark-columns=median,rounds \
    --benchmark-group-by=param:case --benchmark-json="$OUT_DIR/ops_bench.json" \
    > "$OUT_DIR/ops_bench.log" 2>&1
echo "op benchmarks exit code $? after $((SECONDS - start)) s (log: $OUT_DIR/ops_bench.log)"

echo "== 3. SaS step vs CNN =="
vgg_batch="1 16"
[ "${SAS_GPU_FULL:-0}" = 1 ] && vgg_batch="1 16 128"
timeout 80 $PY benchmarks/bench_attribute.py --models resnet8 --batch 1 16 128 --precision fp32 bf16 --warmup 2 --iters 5 \
    --json "$OUT_DIR/attribute_resnet8.json" > "$OUT_DIR/attribute_resnet8.log" 2>&1
echo "resnet8 exit code $? after $((SECONDS - start)) s"
timeout 80 $PY benchmarks/bench_attribute.py --models vgg16 --batch $vgg_batch --precision fp32 bf16 \
    --warmup 1 --iters 3 \
    --json "$OUT_DIR/attribute_vgg16.json" > "$OUT_DIR/attribute_vgg16.log" 2>&1
echo "vgg16 exit code $? after $((SECONDS - start)) s"

echo "== 4. NLI solver =="
timeout 25 $PY benchmarks/bench_nli.py --sizes 224 32 --images 4 --batch 4 > "$OUT_DIR/nli.log" 2>&1
echo "nli exit code $? after $((SECONDS - start)) s"

echo "== 5. captured mask pipeline =="
timeout 65 $PY benchmarks/pipeline_graph.py --cases 224x1 32x128 --iters 50 --repeats 5 --profile \
    --json "$OUT_DIR/pipeline.json" > "$OUT_DIR/pipeline.log" 2>&1
echo "pipeline exit code $? after $((SECONDS - start)) s (kernel table: $OUT_DIR/pipeline.log)"

echo
echo "================ summary ($((SECONDS - start)) s) ================"
tail -n 1 "$OUT_DIR/test_triton.log"
$PY - "$OUT_DIR" <<'EOF'
import json, os, sys
out = sys.argv[1]
path = os.path.join(out, "ops_bench.json")
if os.path.exists(path):
    med = {}
    for b in json.load(open(path))["benchmarks"]:
        op, (batch, size, _) = b["name"].split("[")[0].removeprefix("test_"), b["params"]["case"]
        med[(op, f"B{batch}-{size}px", b["params"]["backend"])] = b["stats"]["median"] * 1e3
    print(f"{'op (fwd+bwd)':22} {'case':12} {'reference ms':>13} {'triton ms':>10} {'speed-up':>9}")
    for (op, case, backend), ms in sorted(med.items()):
        if backend == "reference":
            tri = med.get((op, case, "triton"))
            tri_ms, speed = ("n/a", "") if tri is None else (f"{tri:.3f}", f"{ms / tri:.1f}")
            print(f"{op:22} {case:12} {ms:13.3f} {tri_ms:>10} {speed:>9}")
else:
    print("no op benchmark results")
EOF
cat "$OUT_DIR/nli.log"
grep -E "px B=|Error" "$OUT_DIR/pipeline.log" || true
for m in resnet8 vgg16; do
    sed -n '/^device:/,$p' "$OUT_DIR/attribute_$m.log" || true
    grep -m1 -E "Error|error" "$OUT_DIR/attribute_$m.log" || true
done
exit "$tests_rc"
