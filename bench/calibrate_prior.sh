#!/usr/bin/env bash
# Issue 10: the shipped denoiser fine-tuned on RELION-faithful pairs and its confidence ramp
# measured through the hook's own path. Run by hand (CPU is enough; hours on 2 cores), from the
# repository root with the README's .venv:
#   bash bench/calibrate_prior.sh [WORKDIR]        (default /work/data10; resumable)
# 1. training pairs: relion_reconstruct on simulated half-sets of the TRAINING families with drawn
#    pose errors (credgui.denoise.reconstructed), one shard per stack;
# 2. validation pairs the same way from the HELD-OUT families (LDH/MDH, nuclear-receptor LBDs,
#    class-A GPCRs) with another seed;
# 3. fine-tune the shipped U-Net on (1) (--init-weights), validation loss on (2);
# 4. the confidence curve of the result on (2) (and on harvested real refinements, if given in
#    EXTRA_SETS) through recon.update.denoise_map, the hook's function; the ramp it proposes is
#    stored in the weights.
set -euo pipefail
work="${1:-/work/data10}"
py=.venv/bin/credgui
mkdir -p "$work"
pip_models() { .venv/bin/python -m pip install -q --no-deps dockstring==0.3.4 MDAnalysisTests==2.11.0; }
pip_models
[ -d /usr/share/doc/theseus/examples ] || { echo "apt-get install -y theseus-examples first" >&2; exit 2; }

time $py train-data reconstruct --out "$work/recon_train" --stacks "${TRAIN_STACKS:-110}" --split train --seed 1
time $py train-data reconstruct --out "$work/recon_val" --stacks "${VAL_STACKS:-16}" --split val --seed 2

# fine-tune (resumes from $work/ft/checkpoint.pt when run again)
time $py train --intermediates "$work/recon_train" --val-intermediates "$work/recon_val" --out "$work/ft" \
    --init-weights resources/models/cwred_unet.pt --steps "${STEPS:-600}" --batch-size 4 --box 64 --lr 1e-4 \
    --checkpoint-every 50 --threads 2 --device "${DEVICE:-cpu}" --seed 10 --time-limit "${MINUTES:-60}" \
    --description "cwred_unet fine-tuned on relion_reconstruct pairs (issue 10)"

# the curve through the hook's path; stores lambda_low_res / lambda_high_res in the weights
$py evaluate-denoiser "$work/ft/model.pt" --sets "$work/recon_val" ${EXTRA_SETS:-} --threads 2
