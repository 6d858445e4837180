#!/usr/bin/env bash
# Download Keras' ImageNet MobileNetV2 weights (alpha 1.0, trained for 160x160, no top: the file
# the tutorial's `MobileNetV2(weights='imagenet')` fetches) into a cache folder and print its path.
#   MT_DATA_CACHE      cache folder (default: ~/.cache/mobiletune)
#   MT_WEIGHTS_URL     the file's URL (default: Keras' public copy; tests point it elsewhere)
# Exit status 1, with the reason, when it cannot be downloaded; a partial download is removed.
set -euo pipefail

url="${MT_WEIGHTS_URL:-https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5}"
cache="${MT_DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mobiletune}"
dest="$cache/$(basename "$url")"
if [[ -s "$dest" ]]; then
    echo "$dest"
    exit 0
fi
mkdir -p "$cache"
part="$dest.part-$$"
trap 'rm -f "$part"' EXIT
echo "fetch_imagenet_weights: downloading $url" >&2
if ! curl -fL --retry 2 --connect-timeout 20 -o "$part" "$url"; then
    echo "fetch_imagenet_weights: could not download $url (no internet access here?)." >&2
    echo "  Fix: download it elsewhere and put it at $dest" >&2
    exit 1
fi
mv "$part" "$dest"
echo "$dest"
