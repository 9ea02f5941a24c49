"""Hooks into `Trainer.fit` (`training.trainer`): subclass `Callback`, override what you need.

The Trainer calls each hook that a callback object has (any object with some of these
methods works, no subclassing needed)::

    class PrintDice(Callback):
        def on_epoch_end(self, trainer, logs):
            logger.info("epoch %d: Dice %.3f", logs["epoch"], logs["val_dice"])

Early stopping is built into the Trainer (``patience``) because its state must be saved in
checkpoints; a callback can still stop a run by setting ``trainer.should_stop = True``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callback"]


class Callback:
    """Hooks called by `Trainer.fit`; override what you need. Set ``trainer.should_stop``
    to end training after the current epoch.

    ``logs`` is the epoch's `history.csv` row: ``epoch``, ``lr``, ``train_loss``,
    ``val_loss``, ``val_dice``, ``dice_<class>``, ``seconds`` (NaN when not validated).
    """

    def on_train_begin(self, trainer: Any) -> None: ...

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Any, metrics: dict[str, Any]) -> None: ...
