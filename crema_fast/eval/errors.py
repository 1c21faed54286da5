"""Errors of evaluation input: each is one line naming what is wrong (the CLI prints it and exits 2)."""

from crema_fast.errors import CremaError


class EvalError(CremaError, ValueError):
    """Base of evaluation errors."""


class LabelsError(EvalError):
    """A store without labels, an unknown label set, a missing or malformed scp_statements.csv / CSV."""


class SplitError(EvalError):
    """No folds and no patient ids, or a split that leaves a part empty."""


class MetricError(EvalError):
    """A class with no positives or no negatives in a split, or mismatched shapes."""


class CheckpointMismatchError(EvalError):
    """A checkpoint written for another architecture (preset) than the one asked for."""
