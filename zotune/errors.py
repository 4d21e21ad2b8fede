"""Errors the command line maps to exit codes, kept here so that every module can raise them."""


class TrainingFailure(RuntimeError):
    """A failure during training that the user can fix and then resume from (exit code 1), such
    as a checkpoint that could not be written because the disk is full."""
