"""``geoct fit|validate|test``: LightningCLI over the contrastive segmentation task.

The model is always :class:`~geoct.tasks.ContrastiveSemanticSegmentationTask`
(its arguments go under ``model:``); the datamodule is any
``LightningDataModule`` given by ``data.class_path`` (normally
:class:`geoct.datasets.PotsdamDataModule`), so ``--data.root DIR`` overrides the
dataset folder. The seed defaults to 13 (the reference's) and the resolved config
is saved next to the logs, overwriting an older one.
"""

import warnings
from collections.abc import Sequence

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from .errors import ConfigError
from .tasks import ContrastiveSemanticSegmentationTask

#: Sub-commands handled here.
SUBCOMMANDS = ("fit", "validate", "test")


def main(argv: Sequence[str]) -> int:
    """Run a LightningCLI sub-command.

    Args:
        argv: The command line, starting with ``fit``, ``validate`` or ``test``.

    Returns:
        The exit status (0); argument errors exit through argparse with status 2.

    Raises:
        ConfigError: If *argv* does not start with a sub-command of this module.
    """
    if not argv or argv[0] not in SUBCOMMANDS:
        raise ConfigError(f"expected one of {', '.join(SUBCOMMANDS)}, got {argv[:1]}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "LightningCLI's args parameter", UserWarning)
        LightningCLI(
            ContrastiveSemanticSegmentationTask,
            LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=13,
            save_config_kwargs={"overwrite": True},
            args=list(argv),
            auto_configure_optimizers=False,
        )
    return 0
