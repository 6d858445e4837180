#!/usr/bin/env bash
# Download the public cats_and_dogs_filtered.zip (the TensorFlow transfer-learning tutorial's
# data) into a cache folder and unzip it, printing the folder that holds train/{cats,dogs}.
#   MT_DATA_CACHE  cache folder (default: ~/.cache/mobiletune)
#   MT_FETCH_URL   the archive's URL (default: Google's public copy; tests point it elsewhere)
# Exit status 1, with the reason, when the archive cannot be downloaded or unpacked; nothing
# partial is left behind (the download and the unzip go to temporary names first).
set -euo pipefail

url="${MT_FETCH_URL:-https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip}"
cache="${MT_DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mobiletune}"
dest="$cache/cats_and_dogs_filtered"

if [[ -d "$dest/train/cats" && -d "$dest/train/dogs" ]]; then
    echo "$dest"
    exit 0
fi
mkdir -p "$cache"
zip="$cache/cats_and_dogs_filtered.zip"
part="$zip.part-$$"
tmpdir="$cache/unzip-$$"
trap 'rm -rf "$part" "$tmpdir"' EXIT

if [[ ! -s "$zip" ]]; then
    echo "fetch_cats_dogs: downloading $url" >&2
    if command -v curl >/dev/null; then
        fetch=(curl -fL --retry 2 --connect-timeout 20 -o "$part" "$url")
    elif command -v wget >/dev/null; then
        fetch=(wget -q --tries=2 --timeout=20 -O "$part" "$url")
    else
        echo "fetch_cats_dogs: neither curl nor wget is installed (apt-get install curl)" >&2
        exit 1
    fi
    if ! "${fetch[@]}"; then
        echo "fetch_cats_dogs: could not download $url (no internet access here?)." >&2
        echo "  Fix: download it elsewhere and put it at $zip, or pack your own folder of" >&2
        echo "  class subfolders with mobiletune-pack." >&2
        exit 1
    fi
    mv "$part" "$zip"
fi
if ! command -v unzip >/dev/null; then
    echo "fetch_cats_dogs: unzip is not installed (apt-get install unzip)" >&2
    exit 1
fi
mkdir -p "$tmpdir"
if ! unzip -q "$zip" -d "$tmpdir" || [[ ! -d "$tmpdir/cats_and_dogs_filtered/train" ]]; then
    echo "fetch_cats_dogs: $zip is not the expected archive (no cats_and_dogs_filtered/train in" >&2
    echo "  it); delete it and run this script again" >&2
    exit 1
fi
mv "$tmpdir/cats_and_dogs_filtered" "$dest"
echo "$dest"
