"""One module per ``credgui`` subcommand.

Each module has a docstring (the ``--help`` text, with example command lines),
``add_args(parser)`` and ``main(args) -> int``. ``main`` converts arguments and calls library
code in the science core; no reusable maths lives here.
"""
