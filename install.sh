#!/usr/bin/env bash
# Install everything credgui needs on a Debian machine into .venv/ in the repository root.
# Idempotent: Debian packages are installed only when missing; the venv is reused.
#   bash install.sh            # core + GUI + test extras
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

apt_pkgs=()
command -v relion_refine_mpi >/dev/null 2>&1 || apt_pkgs+=(relion)
command -v mpirun >/dev/null 2>&1 || apt_pkgs+=(openmpi-bin)
command -v Xvfb >/dev/null 2>&1 || apt_pkgs+=(xvfb)
command -v sbatch >/dev/null 2>&1 || apt_pkgs+=(slurmctld slurmd slurm-client munge)
# Qt's xcb platform plugin and OpenGL for napari under Xvfb
for p in libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
         libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 \
         libgl1 libegl1 libdbus-1-3 libfontconfig1; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || apt_pkgs+=("$p")
done
if [ ${#apt_pkgs[@]} -gt 0 ]; then
    echo "install.sh: apt-get install ${apt_pkgs[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch 2.13.0 (never let pip resolve a multi-GB CUDA build on its own).
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[gui,test]"
echo "install.sh: ready (.venv/bin/credgui, .venv/bin/credgui-reconstruct)"
