#!/usr/bin/env bash
# Build RELION 4.0 or 5.0 (CPU only) from a source checkout into a prefix, then run credgui's
# tiny CW-RED refinement, a continue and the final map with it (bench/relion_versions.py).
#
#   git clone https://github.com/3dem/relion.git ~/src/relion       # the user clones it
#   bash bench/build_relion.sh ~/src/relion ver4.0 ~/opt/relion-4.0 [JOBS]
#   bash bench/build_relion.sh ~/src/relion ver5.0 ~/opt/relion-5.0 [JOBS]
#
# SRC: a git checkout of github.com/3dem/relion (this script never fetches anything; the
#      branch/tag given as REF is checked out into SRC/../relion-REF-src with `git worktree`,
#      so SRC's own checkout is left as it is).
# REF: ver4.0, ver5.0 or any tag (4.0.1, 5.0.0 ...).
# PREFIX: install prefix (bin/relion_refine_mpi ...). JOBS: make -j (default 1).
# Needs: cmake >= 3.10, a C++ compiler, MPI (mpicxx), FFTW3 (libfftw3-dev), libtiff-dev,
# libpng-dev; on Debian: apt-get install cmake g++ libopenmpi-dev libfftw3-dev libtiff-dev libpng-dev
# CPU only: -DCUDA=OFF -DALTCPU=OFF -DGUI=OFF; 5.0 also -DFETCH_WEIGHTS=OFF (Blush/ModelAngelo
# weights: not needed, credgui refuses --blush with its hook) and no conda environment.
# Results: PREFIX/credgui_check/ (results.json, results.md), see bench/relion_versions.py.
# Skip the check with CREDGUI_BUILD_ONLY=1.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,20p' "$0"; exit 2
fi
src="$(cd "$1" && pwd)"; ref="$2"; prefix="$3"; jobs="${4:-1}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -e "$src/.git" ] || { echo "build_relion.sh: $src is not a git checkout of github.com/3dem/relion" >&2; exit 2; }
for tool in cmake mpicxx make git; do
    command -v "$tool" >/dev/null || { echo "build_relion.sh: $tool not found" >&2; exit 2; }
done
tree="$(dirname "$src")/relion-${ref//\//_}-src"
if [ ! -d "$tree" ]; then
    git -C "$src" worktree add --detach "$tree" "$ref"
fi
build="$tree/build-cpu"
mkdir -p "$build" "$prefix"
flags=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" -DCUDA=OFF -DALTCPU=OFF -DGUI=OFF
       -DDoublePrec_CPU=ON)
case "$ref" in
    *5.0*|*5.*) flags+=(-DFETCH_WEIGHTS=OFF) ;;
    *4.0*|*4.*) flags+=(-DFETCH_TORCH_MODELS=OFF) ;;
esac
echo "build_relion.sh: $(date -u +%FT%TZ) configuring $ref in $build"
(cd "$build" && cmake "${flags[@]}" ..)
echo "build_relion.sh: $(date -u +%FT%TZ) make -j$jobs"
(cd "$build" && make -j"$jobs" && make install)
echo "build_relion.sh: $(date -u +%FT%TZ) installed: $("$prefix/bin/relion_refine" --version 2>&1 | head -1)"
[ "${CREDGUI_BUILD_ONLY:-0}" = 1 ] && exit 0
# the tiny CW-RED refinement, a continue and the final map with this RELION
PATH="$prefix/bin:$PATH" PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" \
    "$here/.venv/bin/python" "$here/bench/relion_versions.py" --out "$prefix/credgui_check"
