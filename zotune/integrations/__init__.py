"""zotune's optimizers inside the loops users already have: ``ZOTrainer`` (a transformers
``Trainer``), and Accelerate, which needs nothing from zotune (``docs/integrations.md``)."""

from zotune.integrations.trainer import ZOTrainer

__all__ = ["ZOTrainer"]
