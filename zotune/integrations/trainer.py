"""``ZOTrainer``: a transformers ``Trainer`` whose training step is a zeroth-order step.

Everything else stays Trainer's own: ``TrainingArguments``, evaluation, logging, callbacks,
``save_strategy`` checkpoints and ``resume_from_checkpoint``, learning-rate schedulers (they set
the ZO optimizer's ``lr`` per step). What changes, and why:

- ``training_step`` runs ``zo_optimizer.step(closure)`` with a forward-only closure (the model's
  loss, under no_grad): no backward, no gradient buffer is ever allocated. The model is put in
  eval mode for it: dropout would give the two perturbed forwards different masks, and their
  difference would measure the masks, not the direction.
- Gradient accumulation (``gradient_accumulation_steps = k``): the k micro-batches Trainer hands
  over are kept (their inputs, not their activations) until the last, then one ZO step reads all k
  at every perturbed point and averages their losses: the step of the whole batch, with one
  micro-batch's activations alive at a time.
- Trainer's optimizer is a thin stand-in (``_ZOStepDone``) around the ZO optimizer: Trainer calls
  ``optimizer.step()`` without a closure after each accumulated step, and by then the ZO step has
  been taken. Its ``state_dict`` is the ZO optimizer's, which carries the step counter and seed, so
  a run resumed from a checkpoint draws the same directions.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from zotune.optim import ZOOptimizer


class _ZOStepDone(torch.optim.Optimizer):
    """What Trainer (and Accelerate's wrapper around it) hold as the optimizer: the ZO optimizer's
    groups, state and state_dict; ``step()`` without a closure does nothing (the step was taken in
    ``training_step``). A torch Optimizer, so Trainer's learning-rate schedulers accept it."""

    def __init__(self, zo: ZOOptimizer):  # no super().__init__: every field is the ZO optimizer's
        self.zo = zo
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @property
    def param_groups(self):
        return self.zo.param_groups

    @property
    def state(self):
        return self.zo.state

    @property
    def defaults(self):
        return self.zo.defaults

    def step(self, closure=None):
        return None if closure is None else self.zo.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: a ZO step leaves no gradient."""

    def state_dict(self):
        return self.zo.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.zo.load_state_dict(state_dict)


class ZOTrainer(Trainer):
    """A ``Trainer`` that trains with a zotune ZO optimizer.

    Give the optimizer as ``optimizer_cls`` (e.g. ``zotune.optim.MeZO``) with ``optimizer_kwargs``,
    or built, as ``zo_optimizer``. A class gets the model's trainable named parameters, and ``lr``,
    ``weight_decay`` and ``seed`` from the ``TrainingArguments`` unless ``optimizer_kwargs`` sets them.
    Every other argument is Trainer's.
    """

    def __init__(self, model=None, args=None, *, optimizer_cls=None, optimizer_kwargs=None,
                 zo_optimizer: ZOOptimizer | None = None, **kwargs):
        if (optimizer_cls is None) == (zo_optimizer is None):
            raise ValueError("ZOTrainer needs a zeroth-order optimizer: give optimizer_cls=MeZO (and "
                             "optimizer_kwargs=...) or zo_optimizer=MeZO(model.named_parameters(), ...), not both")
        if zo_optimizer is not None and not isinstance(zo_optimizer, ZOOptimizer):
            raise ValueError(f"zo_optimizer must be a zotune zeroth-order optimizer, got {type(zo_optimizer).__name__}; "
                             "for a first-order optimizer use transformers.Trainer")
        if kwargs.get("optimizers", (None, None))[0] is not None:
            raise ValueError("ZOTrainer builds Trainer's optimizer from the ZO optimizer: pass it as zo_optimizer, "
                             "not in optimizers=(...)")
        super().__init__(model=model, args=args, **kwargs)
        self.zo_optimizer = zo_optimizer
        self.zo_optimizer_cls = optimizer_cls
        self.zo_optimizer_kwargs = dict(optimizer_kwargs or {})
        self.micro_batches: list[dict] = []  # inputs of the step being accumulated

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            if self.zo_optimizer is None:
                named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
                options = {"lr": self.args.learning_rate, "weight_decay": self.args.weight_decay,
                           "seed": self.args.seed, **self.zo_optimizer_kwargs}
                self.zo_optimizer = self.zo_optimizer_cls(named, **options)
            self.optimizer = _ZOStepDone(self.zo_optimizer)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Keep the micro-batch; at the last one of the step, take the ZO step on all of them and
        return its loss (Trainer sums what this returns over the micro-batches of a step)."""
        self.micro_batches.append(self._prepare_inputs(inputs))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        batches, self.micro_batches = self.micro_batches, []
        model.eval()

        def closure():
            total = 0.0
            for batch in batches:
                with self.compute_loss_context_manager():
                    total = total + self.compute_loss(model, batch).float()
            return total / len(batches)

        loss = self.zo_optimizer.step(closure)
        return torch.as_tensor(loss, dtype=torch.float32).detach().to(self.args.device)
