"""The evaluation's own error."""

from __future__ import annotations

from ..errors import HfRopeIDError


class EvaluationError(HfRopeIDError, ValueError):
    """Bad evaluation input; the message says what was wrong and what is accepted."""
