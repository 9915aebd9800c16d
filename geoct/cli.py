"""The ``geoct`` command: LightningCLI training verbs plus the GIS verbs."""

import importlib
import sys
from collections.abc import Callable, Sequence

from .errors import GeoctError
from .runtime import tune_for_streaming

#: Commands that stream large arrays through threads: they get the process settings of
#: :func:`~geoct.runtime.tune_for_streaming` before they load torch.
STREAMING_COMMANDS = frozenset({"predict"})

#: Sub-command name -> module whose ``main(argv) -> int`` runs it.
COMMANDS: dict[str, str] = {
    "fit": "geoct.train_cli",
    "validate": "geoct.train_cli",
    "test": "geoct.train_cli",
    "predict": "geoct.predict.cli",
    "vectorize": "geoct.export.vectorize_cli",
    "evaluate": "geoct.export.evaluate_cli",
    "export": "geoct.export.onnx_cli",
}

USAGE = (
    "usage: geoct {fit,validate,test} --config CONFIG.yaml [...]\n"
    "       geoct predict SCENE.tif [SCENE.tif ...] --checkpoint MODEL.ckpt [...]\n"
    "       geoct vectorize CLASSES.tif [...]\n"
    "       geoct evaluate PRED.tif LABELS.tif [...]\n"
    "       geoct export MODEL.ckpt --onnx MODEL.onnx [...]\n"
    "Run 'geoct COMMAND --help' for the options of a command."
)


def _entry(command: str) -> Callable[[list[str]], int]:
    return importlib.import_module(COMMANDS[command]).main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``geoct`` command line and return its exit status.

    Errors derived from :class:`~geoct.errors.GeoctError` are printed as one
    line on stderr with exit status 2; Ctrl-C exits with status 130.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    if args[0] in {"-V", "--version"}:
        from . import __version__

        print(f"geoct {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"geoct: error: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    if args[0] in STREAMING_COMMANDS:
        tune_for_streaming()
    try:
        return _entry(args[0])(args)
    except GeoctError as e:
        print(f"geoct: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geoct: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
