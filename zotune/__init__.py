"""zotune: forward-only (zeroth-order) fine-tuning of language models on one exact, seeded engine."""

from zotune import models, optim, tasks

__version__ = "0.1.0"
__all__ = ["models", "optim", "tasks", "__version__"]
