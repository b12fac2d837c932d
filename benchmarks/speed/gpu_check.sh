#!/usr/bin/env bash
# The GPU check, one prepared script for a CUDA machine with torch + triton + pytest (installs
# nothing; pytest-xdist used when present). Headline numbers first, then the rest:
#   pipeline         benchmarks/speed/pipeline_graph.py: the mask pipeline captured in a CUDA graph, ms per
#                    replay at 224 px B = 1 and 32 px B = 128 (K = 20), solve iterations cold / warm,
#                    a torch.profiler kernel table (in pipeline.log);
#   attribute_*      benchmarks/speed/bench_attribute.py: CNN alone vs reference step vs fused step vs the
#                    whole iteration replayed from a CUDA graph; ResNet8 at 32 px (B = 1 16 128) and
#                    VGG16 at 224 px (B = 1 16; GPU_CHECK_FULL=1 adds 128), fp32 and bf16 models;
#   ops              benchmarks/speed/test_ops_bench.py, reference vs triton, inputs drawn on the GPU; one
#                    JSON line per benchmark as it finishes (ops_rows.jsonl), pipelines first;
#   nli              benchmarks/speed/bench_nli.py: the batched NLI solver vs scipy, per mask;
#   conformance      every backend on CUDA against the reference and whole CUDA-graph runs
#                    (pytest -n auto when pytest-xdist is there; skip and failure reasons shown).
# Every step has a time cap within a whole-script budget (GPU_CHECK_BUDGET, default 400 s); a step
# the budget cannot start is recorded as not run. After every step the results so far go to
# OUT_DIR as two files: gpu_check.tar.gz (every log and JSON) and summary.md (the tables).
#   bash benchmarks/speed/gpu_check.sh [OUT_DIR]              (default $OUT, else /tmp/sas_gpu_check)
# GPU_CHECK_STEPS (names, space-separated) runs only those steps, e.g. the conformance suite in a
# second process beside other work; GPU_CHECK_WORKERS sets pytest-xdist's worker count.
# GPU_CHECK_REHEARSAL=1 runs the same steps on the CPU (TRITON_INTERPRET=1, tiny sizes, a few
# interpreter conformance cases) in about a minute: tests/test_gpu_check.py. See benchmarks/GPU.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-${OUT:-/tmp/sas_gpu_check}}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-400}
REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OPS_TESTS=(test_step_pipeline test_mask_pipeline test_solve_thresholds test_threshold_masks
           test_masked_images test_smooth_softmax_pool test_pyramid_mask test_blur_pyramid)
CONFORMANCE=(tests/ops/test_backends.py tests/ops/test_triton.py tests/ops/test_deterministic.py tests/test_cuda_attribute.py
             tests/test_iteration_cost.py tests/test_imagenet_study.py)
if [ "$REHEARSAL" = 1 ]; then
    export TRITON_INTERPRET=1
    PIPELINE=(--device cpu --backend triton --quick --profile)
    RESNET8=(--quick --device cpu --fused-backend triton --models resnet8)
    VGG16=(--quick --device cpu --fused-backend triton --models vgg16 --vgg-size 32)
    OPS_SELECT="reference and B1-32px" OPS_TIME=(--benchmark-min-rounds=1 --benchmark-max-time=0.01)
    NLI=(--device cpu --sizes 32 --images 1 --batch 1)
    CONFORMANCE_SELECT="cuda or (triton and cpu and (warm_start or solve_thresholds_is))"
else
    export TRITON_INTERPRET=0
    vgg_batch=(1 16)
    [ "${GPU_CHECK_FULL:-0}" = 1 ] && vgg_batch=(1 16 128)
    PIPELINE=(--cases 224x1 32x128 --iters 50 --repeats 5 --profile)
    RESNET8=(--models resnet8 --batch 1 16 128 --precision fp32 bf16 --warmup 2 --iters 5)
    VGG16=(--models vgg16 --batch "${vgg_batch[@]}" --precision fp32 bf16 --warmup 1 --iters 3)
    OPS_SELECT="not compiled and not cpp" OPS_TIME=(--benchmark-min-rounds=3 --benchmark-max-time=0.1)
    NLI=(--sizes 224 32 --images 4 --batch 4)
    CONFORMANCE_SELECT="cuda"
fi
XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n "${GPU_CHECK_WORKERS:-auto}")
start=$SECONDS

publish() {   # the results so far: archive and summary, each replaced in one move
    $PY -m benchmarks.speed.gpu_check_summary "$WORK" > "$WORK/summary.md" 2> "$WORK/summary.err"
    cp "$WORK/summary.md" "$OUT_DIR/summary.md.part" && mv "$OUT_DIR/summary.md.part" "$OUT_DIR/summary.md"
    tar czf "$OUT_DIR/gpu_check.tar.gz.part" -C "$WORK" . \
        && mv "$OUT_DIR/gpu_check.tar.gz.part" "$OUT_DIR/gpu_check.tar.gz"
}

step() {      # step NAME CAP_S COMMAND...: output to NAME.log, a row in steps.tsv, then publish
    local name=$1 cap=$2 left=$((BUDGET - (SECONDS - start))) t0=$SECONDS rc
    shift 2
    if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then
        printf '%s\tnot asked\t0\t%s\n' "$name" "$cap" >> "$WORK/steps.tsv"
    elif [ "$left" -lt 5 ]; then
        printf '%s\tnot run\t0\t%s\n' "$name" "$cap" >> "$WORK/steps.tsv"
        echo "== $name: not run (budget spent)"
    else
        [ "$cap" -gt "$left" ] && cap=$left
        echo "== $name (cap $cap s)"
        timeout -k 5 "$cap" "$@" > "$WORK/$name.log" 2>&1
        rc=$?
        printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$cap" >> "$WORK/steps.tsv"
        echo "   exit code $rc after $((SECONDS - t0)) s (total $((SECONDS - start)) s)"
    fi
    publish
}

printf 'step\texit code\tseconds\tcap s\n' > "$WORK/steps.tsv"
step env 60 $PY -c "import platform, torch, triton; from sas_fast.precision import cpu_capability
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', '| torch', torch.__version__,
      '| triton', triton.__version__, '| python', platform.python_version(), '| CPU', cpu_capability())"
step pipeline 70 $PY -m benchmarks.speed.pipeline_graph "${PIPELINE[@]}" --json "$WORK/pipeline.json"
step attribute_resnet8 70 $PY -m benchmarks.speed.bench_attribute "${RESNET8[@]}" --json "$WORK/attribute_resnet8.json"
step attribute_vgg16 70 $PY -m benchmarks.speed.bench_attribute "${VGG16[@]}" --json "$WORK/attribute_vgg16.json"
step ops 90 env BENCH_ROWS="$WORK/ops_rows.jsonl" \
    $PY -m pytest -p no:cacheprovider -p benchmarks.speed.bench_rows -o addopts="" -rfEs \
    "${OPS_TESTS[@]/#/benchmarks/speed/test_ops_bench.py::}" -k "$OPS_SELECT" "${OPS_TIME[@]}" \
    --benchmark-columns=median,rounds --benchmark-group-by=param:case --benchmark-json="$WORK/ops_bench.json"
step nli 25 $PY -m benchmarks.speed.bench_nli "${NLI[@]}"
step conformance 180 $PY -m pytest -p no:cacheprovider -o addopts="" -v -rfEs "${XDIST[@]}" \
    "${CONFORMANCE[@]}" -k "$CONFORMANCE_SELECT" --junitxml="$WORK/conformance.xml"

echo "================ $OUT_DIR/summary.md ($((SECONDS - start)) s) ================"
cat "$OUT_DIR/summary.md"
failed=$(awk -F'\t' 'NR > 1 && $2 != "0" && $2 != "not asked" { printf " %s", $1 }' "$WORK/steps.tsv")
rm -rf "$WORK"
[ -z "$failed" ] || { echo "steps that did not pass:$failed"; exit 1; }
