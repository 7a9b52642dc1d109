#!/bin/bash
#SBATCH --job-name=XXXnameXXX
#SBATCH --partition=XXXqueueXXX
#SBATCH --ntasks=XXXmpinodesXXX
#SBATCH --cpus-per-task=XXXthreadsXXX
#SBATCH --output=XXXoutfileXXX
#SBATCH --error=XXXerrfileXXX
#SBATCH --open-mode=append
#SBATCH --overcommit
# credgui's Slurm template for RELION 3.1 jobs, with RELION's template variables (see the
# help of RELION's "Standard submission script"). RELION's leader rank mostly idles, hence
# --overcommit and, for Open MPI, --oversubscribe. Copy and edit it for your cluster (a time
# limit or GPUs, e.g. an "#SBATCH --time=" line with RELION's extra1 variable), then point
# RELION_QSUB_TEMPLATE at it.
MPIRUN="${RELION_MPIRUN:-mpirun}"
if $MPIRUN --version 2>&1 | grep -q "Open MPI"; then
    MPIRUN="$MPIRUN --oversubscribe"
    if [ "$(id -u)" = 0 ]; then MPIRUN="$MPIRUN --allow-run-as-root"; fi
fi
$MPIRUN -n XXXmpinodesXXX XXXcommandXXX
