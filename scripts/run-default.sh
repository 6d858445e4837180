#!/usr/bin/env bash
# The main job on the default data, end to end: build mobiletune, pack the cats/dogs photos into
# data/cats_vs_dogs/{train,val,test} (below), train the tutorial's frozen run
# (configs/cats_vs_dogs/frozen.ini: ImageNet MobileNetV2 backbone, new head, 10 epochs) into
# runs/cats_vs_dogs/frozen, and print the test accuracy. Running it again re-packs the same data
# and continues the run (--resume auto): a finished run only evaluates again.
#
# Default data, first found:
#   1. ../shared/data/cats_vs_dogs/train (cats/, dogs/): the 2,000 photos beside the repo, split
#      80/10/10 (seeded, stratified)
#   2. the tutorial's public cats_and_dogs_filtered.zip, downloaded by data-prep/fetch_cats_dogs.sh:
#      its own train/ and validation/ folders, as the tutorial uses them: train/ is the training
#      split; a fifth of validation/ is the test split (the tutorial's
#      `validation_dataset.take(val_batches // 5)`; here a seeded, stratified fifth: --seed 1
#      --test-from-val 0.2) and the rest stays the validation split
# Neither: a message saying so and exit 1.
#
# Environment (all optional): MT_BUILD_DIR (default build), MT_PACK (use this mobiletune-pack,
# no build), MT_SHARED_DIR (default ../shared), MT_DATA_OUT (default data/cats_vs_dogs),
# MT_THREADS (default: all cores), and fetch_cats_dogs.sh's MT_FETCH_URL / MT_DATA_CACHE;
# MT_MOBILETUNE (use this mobiletune), MT_TRAIN_ARGS (more `mobiletune train` arguments, e.g.
# "--set data.random_flip=false"), MT_SKIP_TRAIN=1 (pack and stop).
#
# A small slice of the same job (CI runs one; .ci/run), all optional, unset = the full job:
#   MT_FRACTION   pack this stratified fraction 0<F<=1 of the photos (mobiletune-pack --fraction)
#   MT_EPOCHS     train this many epochs instead of the config's 10
#   MT_RUN_DIR    train into this folder instead of runs/cats_vs_dogs/frozen (a slice then never
#                 resumes, nor is resumed by, the full run; pair it with MT_DATA_OUT)
# e.g.  MT_FRACTION=0.05 MT_EPOCHS=1 MT_DATA_OUT=data/slice MT_RUN_DIR=runs/slice scripts/run-default.sh
set -euo pipefail
cd "$(dirname "$0")/.."

build="${MT_BUILD_DIR:-build}"
pack="${MT_PACK:-}"
if [[ -z "$pack" ]]; then
    if [[ ! -f "$build/CMakeCache.txt" ]]; then
        cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    fi
    cmake --build "$build" -j "$(nproc)" --target mobiletune-pack mobiletune_cli
    pack="$build/data-prep/mobiletune-pack"
fi
mobiletune="${MT_MOBILETUNE:-$build/mobiletune}"

shared="${MT_SHARED_DIR:-../shared}/data/cats_vs_dogs/train"
if [[ -d "$shared/cats" && -d "$shared/dogs" ]]; then
    input="$shared"
    splits=(--split train=0.8,val=0.1,test=0.1)
    echo "run-default: using the shared photos in $input"
else
    echo "run-default: $shared is absent; fetching the public cats_and_dogs_filtered archive" >&2
    if ! fetched="$(data-prep/fetch_cats_dogs.sh)"; then
        echo "run-default: no default data: $shared does not exist and the archive could not be" >&2
        echo "  downloaded (see above). Put the photos there, or pack your own folder with" >&2
        echo "  $pack --split train=0.8,val=0.1,test=0.1 YOUR_FOLDER data/cats_vs_dogs" >&2
        exit 1
    fi
    input="$fetched"
    splits=(--test-from-val 0.2)
fi

out="${MT_DATA_OUT:-data/cats_vs_dogs}"
threads=()
if [[ -n "${MT_THREADS:-}" ]]; then threads=(--threads "$MT_THREADS"); fi
fraction=()
if [[ -n "${MT_FRACTION:-}" ]]; then fraction=(--fraction "$MT_FRACTION"); fi
"$pack" "${splits[@]}" --seed 1 --force "${threads[@]}" "${fraction[@]}" "$input" "$out"
for split in train val test; do
    "$pack" info "$out/$split"
done

if [[ "${MT_SKIP_TRAIN:-0}" == 1 ]]; then exit 0; fi

weights="${MT_SHARED_DIR:-../shared}/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5"
if [[ ! -f "$weights" ]]; then
    echo "run-default: $weights is absent; fetching Keras' ImageNet MobileNetV2 weights" >&2
    if ! weights="$(data-prep/fetch_imagenet_weights.sh)"; then
        echo "run-default: no ImageNet weights for the frozen run (see above)" >&2
        exit 1
    fi
fi
slice=()
if [[ -n "${MT_EPOCHS:-}" ]]; then slice+=(--set "train.epochs=$MT_EPOCHS"); fi
if [[ -n "${MT_RUN_DIR:-}" ]]; then slice+=(--set "output.run_dir=$MT_RUN_DIR"); fi
echo
echo "run-default: training configs/cats_vs_dogs/frozen.ini (the tutorial's frozen-backbone run)"
"$mobiletune" train --config configs/cats_vs_dogs/frozen.ini --resume auto \
    --set "data.train=$out/train" --set "data.val=$out/val" --set "data.test=$out/test" \
    --set "model.weights=$weights" "${slice[@]}" ${MT_TRAIN_ARGS:-}
