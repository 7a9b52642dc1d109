"""Denoisers for the CW-RED M-step: the plugin interface, the registry, the 3D U-Net."""
