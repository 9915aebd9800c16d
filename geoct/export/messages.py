"""One-line warnings for the GIS commands."""

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def report_warnings(prog: str = "geoct") -> Iterator[None]:
    """Collect the warnings raised inside the block and print each as one line.

    Args:
        prog: Program name prefixed to each line.

    Yields:
        Nothing; warnings are printed on exit, also when the block fails.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                if issubclass(warning.category, UserWarning):
                    print(f"{prog}: warning: {warning.message}", file=sys.stderr)
