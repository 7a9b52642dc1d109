"""``credgui``: the command-line entry point. Subcommands live in ``credgui.commands``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys

import credgui.commands
from credgui.errors import InputError


def _command_modules() -> dict[str, str]:
    """subcommand name (``train_data`` -> ``train-data``) -> module name."""
    return {
        info.name.replace("_", "-"): f"credgui.commands.{info.name}"
        for info in pkgutil.iter_modules(credgui.commands.__path__)
        if not info.name.startswith("_")
    }


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credgui", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, modname in sorted(_command_modules().items()):
        if only is not None and name != only:
            sub.add_parser(name, help="(see credgui %s --help)" % name)
            continue
        module = importlib.import_module(modname)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0] if doc else name,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # import only the chosen command's module: `credgui simulate` need not import torch or Qt
    chosen = next((a for a in argv if not a.startswith("-")), None)
    only = chosen if chosen in _command_modules() else None
    args = build_parser(only).parse_args(argv)
    try:
        code = int(args._main(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except BrokenPipeError:  # `credgui status | head`: the reader has all it wanted
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command its pipe cut short
    except InputError as exc:
        print(f"credgui {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"credgui {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
