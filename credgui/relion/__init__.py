"""RELION's files: STAR tables, MRC volumes, job directories, the external-reconstruct protocol."""
