#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The container image's build stage (Dockerfile), also run by scripts/check-container-build in a clean
# Debian root: installs the build dependencies (scripts/setup build), builds the server, the CLI and
# the load generator, and lays out PREFIX as the runtime stage copies it:
#   PREFIX/bin       attribution-server, attribution-cli, attribution-bench, attribution-batch
#   PREFIX/lib       every shared library they need beyond the base image's C/C++ runtime, LibTorch's
#                    (and, in the CUDA variant, the wheel's CUDA libraries, which LibTorch opens lazily)
#                    and the SentencePiece module
#   PREFIX/models    the embedded default model (the server's default without --model / --config)
#   PREFIX/config    an example config (mount your own over it)
# Usage: build-image.sh cuda|cpu PREFIX      (run from the source tree's root)
set -euo pipefail
variant=$1
prefix=$2
case "$variant" in
  cuda) cuda_flags=(-DCMAKE_CUDA_ARCHITECTURES=80\;90 -DTORCH_CUDA_ARCH_LIST=8.0\;9.0) ;;
  cpu) cuda_flags=() ;;
  *) echo "build-image.sh: variant must be cuda or cpu, not '$variant'" >&2; exit 2 ;;
esac

ATTRIBUTION_VENV=${ATTRIBUTION_VENV:-/opt/venv} scripts/setup build
cmake -S . -B build-image -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTRIBUTION_BUILD_TESTS=OFF \
  -DATTRIBUTION_BUILD_BENCH=OFF -DATTRIBUTION_BUILD_COMMIT="${BUILD_COMMIT:-unknown}" "${cuda_flags[@]}"
cmake --build build-image --target attribution-server attribution-cli attribution-bench attribution-batch attribution_sentencepiece

mkdir -p "$prefix/bin" "$prefix/lib" "$prefix/models" "$prefix/config"
cp build-image/server/attribution-server build-image/client/attribution-cli build-image/client/attribution-bench \
  build-image/client/attribution-batch "$prefix/bin/"
cp build-image/lib/libattribution_sentencepiece.so "$prefix/lib/"
cp -r models/tiny-qa-llama "$prefix/models/"
cp deploy/config/server.json "$prefix/config/"

# LibTorch and the wheel's CUDA libraries whole: they open parts of each other at run time (cuDNN's
# engines, NVRTC), which ldd cannot see.
torch_lib=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib
cp -L "$torch_lib"/*.so* "$prefix/lib/"
nvidia=$(dirname "$torch_lib")/../nvidia
if [ -d "$nvidia" ]; then
  find "$nvidia" -path '*/lib/*.so*' -exec cp -L {} "$prefix/lib/" \;
fi
# Then what ldd resolves for our binaries and module (gRPC, Protobuf, abseil, ICU, SentencePiece, ...),
# except the C and C++ runtime every base image has.
base_runtime='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libstdc\+\+|libgcc_s)'
for binary in "$prefix"/bin/* "$prefix/lib/libattribution_sentencepiece.so"; do
  LD_LIBRARY_PATH="$prefix/lib" ldd "$binary" | awk '$3 ~ /^\// {print $1, $3}' | while read -r name path; do
    if ! [[ $name =~ $base_runtime ]] && [ ! -e "$prefix/lib/$name" ]; then cp -L "$path" "$prefix/lib/$name"; fi
  done
done
if LD_LIBRARY_PATH="$prefix/lib" ldd "$prefix/bin/attribution-server" | grep -q "not found"; then
  echo "build-image.sh: unresolved libraries:" >&2
  LD_LIBRARY_PATH="$prefix/lib" ldd "$prefix/bin/attribution-server" | grep "not found" >&2
  exit 1
fi
echo "build-image.sh: $variant image tree in $prefix ($(du -sh "$prefix" | cut -f1))"
