#!/usr/bin/env bash
# Table 2 at N = 512 on a CUDA machine, for every (dataset, arch) whose files are staged in
# device_assets/ (git-ignored; benchmarks/GPU.md says what goes there and how it travels). Stage
# one architecture at a time here (ResNet8: both models + both test sets, 54 MiB; VGG16: one
# dataset, 56 MiB for CIFAR-10); device_assets/wheels/ (the captum wheel) is kept:
#   bash benchmarks/studies/gpu_table2.sh --stage resnet8 [mnist cifar10]    # copies from ../shared ($SAS_SHARED)
# then, where the GPU is, with device_assets/ beside the checkout:
#   bash benchmarks/studies/gpu_table2.sh [OUT_DIR]        (default $OUT, else /tmp)
# Per setting, two steps, each reproduce_table2.py --n $N (default 512) --batch 128 in bf16 under
# $SETTING_TIMEOUT (default 240 s): SaS alone first (its table, curves and score profiles
# written when it ends), then the baselines (Gradient, Guided BP, IG, GradCAM) added with --update.
# The baselines need captum: where it does not import, the wheel device_assets/wheels/captum-*.whl
# is installed (no dependencies, no index) into a private folder put on PYTHONPATH. The JSON is
# written after every method, so a cut step keeps what finished. After every step OUT_DIR holds
# two files: table2.tar.gz (every table, JSON, curve and profile PNG, log) and table2.md (the tables).
# Render on this machine: python -m benchmarks.studies.reproduce_table2 --render-only --out DIR ...
set -uo pipefail
cd "$(dirname "$0")/../.."
ASSETS=${ASSETS:-device_assets} SHARED=${SAS_SHARED:-../shared}
if [ "${1:-}" = "--stage" ]; then
    arch=${2:?"--stage ARCH [DATASET...]"}; shift 2
    datasets=${*:-"mnist cifar10"}
    rm -rf "$ASSETS/models" "$ASSETS/data" && mkdir -p "$ASSETS/models"   # what is staged is what runs
    for d in $datasets; do
        mkdir -p "$ASSETS/data/$d"
        cp "$SHARED/data/$d/test.npz" "$ASSETS/data/$d/"
        cp "$SHARED"/models/${arch}_${d}*.pt "$ASSETS/models/"
    done
    ls "$ASSETS"/wheels/captum-*.whl 2>/dev/null || echo "no captum wheel in $ASSETS/wheels (see benchmarks/GPU.md)"
    du -sh "$ASSETS"
    exit 0
fi
OUT_DIR=${1:-${OUT:-/tmp}}
RESULTS=$(mktemp -d "${TMPDIR:-/tmp}/table2.XXXXXX")
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
DEVICE=${DEVICE:-cuda}
BASELINES="Gradient,Guided BP,IG,GradCAM"

stage_captum() {   # captum importable, from the carried wheel if need be; says which
    $PY -c "import captum" 2>/dev/null && { echo "captum: installed"; return 0; }
    local wheel site="$RESULTS/.captum"
    wheel=$(ls "$ASSETS"/wheels/captum-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || { echo "captum: not installed and no $ASSETS/wheels/captum-*.whl"; return 1; }
    $PY -m pip install --quiet --no-deps --no-index --target "$site" "$wheel" || return 1
    export PYTHONPATH="$site:$PYTHONPATH"
    echo "captum: staged from $wheel"
}

publish() {
    cat "$RESULTS"/table2_*.md > "$OUT_DIR/table2.md" 2>/dev/null
    tar czf "$OUT_DIR/table2.tar.gz.part" --exclude=.captum -C "$RESULTS" . \
        && mv "$OUT_DIR/table2.tar.gz.part" "$OUT_DIR/table2.tar.gz"
}

run_setting() {   # run_setting NAME DATASET ARCH METHODS [--update]
    local name=$1 dataset=$2 arch=$3 methods=$4
    shift 4
    timeout "${SETTING_TIMEOUT:-240}" $PY -m benchmarks.studies.reproduce_table2 --dataset "$dataset" --arch "$arch" \
        --n "${N:-512}" --batch "${BATCH:-128}" --precision bf16 --device "$DEVICE" --shared "$ASSETS" \
        --iterations "${ITERATIONS:-200}" --methods "$methods" --out "$RESULTS" "$@" 2>&1 | tee "$RESULTS/$name.log"
    echo "exit code ${PIPESTATUS[0]}" | tee -a "$RESULTS/$name.log"
    publish
}

settings=$(ls "$ASSETS"/models | sed -E 's/(\.part[0-9]+)?\.pt$//' | sort -u)
for name in $settings; do
    echo "== $name: SaS =="
    run_setting "${name}_sas" "${name#*_}" "${name%_*}" SaS
done
stage_captum | tee "$RESULTS/captum.log"
if [ "${PIPESTATUS[0]}" = 0 ]; then
    for name in $settings; do
        echo "== $name: baselines =="
        [ -f "$RESULTS/table2_${name#*_}_${name%_*}.json" ] && update=(--update) || update=()   # SaS's
        run_setting "${name}_baselines" "${name#*_}" "${name%_*}" "$BASELINES" "${update[@]}"
    done
fi
publish
rm -rf "$RESULTS"
