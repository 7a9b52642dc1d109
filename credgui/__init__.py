"""credgui: cryo-EM refinement with a learned prior (CW-RED, Kimanius et al., IUCrJ 2021).

The package root imports nothing heavy and no Qt: the RELION hook, the CLI and cluster
nodes import the science core without a display.
"""

__version__ = "0.1.0"
