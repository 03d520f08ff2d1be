"""Dynamic Convolution's softmax temperature schedule in ``Trainer`` (``docs/pad.md``, "## Partially dynamic
convolution")."""

from __future__ import annotations

from transformers import TrainerCallback

from ..core.validation import check_number
from .conv import DynamicConv2d, check_temperature

__all__ = ["TemperatureAnnealingCallback"]


class TemperatureAnnealingCallback(TrainerCallback):
    """Dynamic Convolution's temperature schedule: the softmax temperature of every :class:`DynamicConv2d` falls
    linearly from ``start`` to ``end`` over the first ``anneal_epochs`` epochs (fractional, by optimiser step), then
    stays at ``end``. The current value is also written to ``model.config.temperature`` (when the config has that
    field), so a checkpoint saved mid-schedule records the temperature it was trained at.
    """

    def __init__(self, start: float = 30.0, end: float = 1.0, anneal_epochs: float = 10.0):
        self.start, self.end = check_temperature(start), check_temperature(end)
        check_number("anneal_epochs", anneal_epochs, ge=0)
        self.anneal_epochs = float(anneal_epochs)

    def temperature_at(self, epoch: float) -> float:
        if self.anneal_epochs == 0 or epoch >= self.anneal_epochs:
            return self.end
        return self.start + (self.end - self.start) * max(epoch, 0.0) / self.anneal_epochs

    def apply(self, model, epoch: float) -> float:
        """Set the temperature for ``epoch`` on ``model``'s dynamic convolutions; return it."""
        temperature = self.temperature_at(epoch)
        for module in model.modules():
            if isinstance(module, DynamicConv2d):
                module.set_temperature(temperature)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "temperature"):
            config.temperature = temperature
        return temperature

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("TemperatureAnnealingCallback needs the Trainer's model")
        self.apply(model, state.epoch or 0.0)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.apply(model, state.epoch or 0.0)
