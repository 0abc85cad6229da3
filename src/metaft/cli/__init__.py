"""The ``metaft`` command line: a thin shell over the stage functions.

Each sub-module registers its sub-commands (``register(subparsers)``) and maps parsed arguments onto a
config dataclass; no stage logic lives here. User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import MetaftError

# sub-command modules, in the order they appear in --help
COMMAND_MODULES = ("prepare", "preprocess", "train", "study")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaft",
        description="Meta Fine-Tuning (MFT) of pretrained language models across related domains.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # sub-command not built yet
            raise
        module.register(subparsers)
    return parser


def _quiet_transformers(verbose: bool) -> None:
    """Hide transformers' weight-loading bars and load reports; metaft reports what matters itself."""
    import transformers

    if not verbose:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "accelerate", "urllib3", "filelock", "matplotlib", "PIL", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    _quiet_transformers(verbose=args.verbose)
    try:
        code = int(args.func(args) or 0)
        from ..devices import end_processes  # torch is loaded by then

        end_processes()
        return code
    except MetaftError as exc:
        print(f"metaft: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a full disk or a read-only folder outside the checkpoint saves
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"metaft: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metaft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
