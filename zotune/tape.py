"""The tape: every loss a ZO step reads from its closure, recorded live and played back on replay.

A zeroth-order step is a pure function of the weights, the step's seeds and the scalars its
closure returned. Recording those scalars (``Tape.recording``) is therefore enough to redo the
step without any forward pass: on playback (``Tape.play``) the engine hands the method the
recorded values instead of calling the closure, and the method's rule computes the same update
bit for bit. ``zotune.trajectory`` stores a run's tapes; ``Engine.loss_at`` is where losses pass.
"""

from __future__ import annotations

import torch


class TapeMismatchError(ValueError):
    """A played-back step asked for more (or fewer) values than were recorded for it."""


class Tape:
    """The values of the step being taken: recorded (a training run) or played back (replay).
    Idle by default, so an optimizer used outside zotune's loop keeps nothing."""

    def __init__(self):
        self.recording = False
        self._taken: list[torch.Tensor] = []
        self._playback: list[float] | None = None
        self._next = 0

    @property
    def playing(self) -> bool:
        return self._playback is not None

    def record(self, value) -> None:
        """Keep one value the closure returned (a 0-dim tensor, kept on its device until ``take``)."""
        if self.recording:
            self._taken.append(value.detach().reshape(()).float() if isinstance(value, torch.Tensor)
                               else torch.tensor(float(value), dtype=torch.float32))

    def take(self) -> list[float]:
        """The values recorded since the last ``take`` (one host synchronisation), and forget them."""
        taken, self._taken = self._taken, []
        if not taken:
            return []
        return torch.stack([t.cpu() for t in taken]).tolist()

    def discard(self) -> None:
        """Forget what a failed step recorded."""
        self._taken = []

    def play(self, values: list[float]) -> None:
        """Play ``values`` back to the next step instead of calling its closure."""
        self._playback, self._next = list(values), 0

    def next(self) -> torch.Tensor:
        """The next recorded value, as the fp32 0-dim tensor the engine computed live."""
        if self._playback is None:
            raise RuntimeError("Tape.next() outside playback")
        if self._next >= len(self._playback):
            raise TapeMismatchError(f"the step asked for more than the {len(self._playback)} recorded values; "
                                    "the trajectory was made with another method or configuration")
        self._next += 1
        return torch.tensor(self._playback[self._next - 1], dtype=torch.float32)

    def stop(self) -> None:
        """End playback of a step, checking that every recorded value was used."""
        left = 0 if self._playback is None else len(self._playback) - self._next
        self._playback, self._next = None, 0
        if left:
            raise TapeMismatchError(f"the step used {left} fewer values than were recorded; "
                                    "the trajectory was made with another method or configuration")
