"""First-order baselines from torch.optim, selectable by name for comparisons."""

import torch

from zotune.optim.registry import register

register("sgd", zeroth_order=False)(torch.optim.SGD)
register("adamw", zeroth_order=False)(torch.optim.AdamW)
