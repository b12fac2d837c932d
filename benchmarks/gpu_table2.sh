#!/usr/bin/env bash
# Table 2 at N = 512 on a lent GPU (issue #5), for every (dataset, arch) whose files are staged in
# device_assets/ (git-ignored). A device call sends the checkout only and carries at most 64 MiB,
# so stage one architecture per call here first (ResNet8: both models + both test sets, 54 MiB;
# VGG16: one dataset per call, 56 MiB for CIFAR-10):
#   bash benchmarks/gpu_table2.sh --stage resnet8 [mnist cifar10]    # copies from ../shared ($SAS_SHARED)
# then on the device, with carry=["device_assets"]:
#   bash benchmarks/gpu_table2.sh [OUT_DIR]        (results in OUT_DIR/table2, default $OUT or /tmp)
# Each setting runs reproduce_table2.py --n $N (default 512) --batch 128 in bf16 under a
# $SETTING_TIMEOUT (default 240 s); the JSON is written after every method, so a cut run keeps
# what finished. Render on this machine: python benchmarks/reproduce_table2.py --render-only ...
set -uo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-device_assets} SHARED=${SAS_SHARED:-../shared}
if [ "${1:-}" = "--stage" ]; then
    arch=${2:?"--stage ARCH [DATASET...]"}; shift 2
    datasets=${*:-"mnist cifar10"}
    rm -rf "$ASSETS" && mkdir -p "$ASSETS/models"   # what is staged is what runs
    for d in $datasets; do
        mkdir -p "$ASSETS/data/$d"
        cp "$SHARED/data/$d/test.npz" "$ASSETS/data/$d/"
        cp "$SHARED"/models/${arch}_${d}*.pt "$ASSETS/models/"
    done
    du -sh "$ASSETS"
    exit 0
fi
OUT_DIR=${1:-${OUT:-/tmp}}/table2
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
DEVICE=${DEVICE:-cuda}
for name in $(ls "$ASSETS"/models | sed -E 's/(\.part[0-9]+)?\.pt$//' | sort -u); do
    arch=${name%_*}; dataset=${name#*_}
    echo "== $dataset / $arch =="
    timeout "${SETTING_TIMEOUT:-240}" $PY benchmarks/reproduce_table2.py --dataset "$dataset" --arch "$arch" \
        --n "${N:-512}" --batch "${BATCH:-128}" --precision bf16 --device "$DEVICE" --shared "$ASSETS" \
        --iterations "${ITERATIONS:-200}" --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/$name.log"
    echo "exit code ${PIPESTATUS[0]}"
done
