"""The M-step: RELION's Gaussian-prior reconstruction (eq. 11) and the CW-RED update (eq. 17)."""
