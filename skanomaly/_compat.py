"""scikit-learn names that are not public API, used through this one module.

Parameter validation (``Interval``, ``StrOptions``), the ``_fit_context``
decorator and ``_get_param_names`` are what scikit-learn's own estimators
use; they are private, so a scikit-learn release that moves them needs a
fix here only.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

__all__ = ["Interval", "ListOf", "StrOptions", "fit_context", "param_names"]

fit_context = _fit_context


class ListOf(HasMethods):
    """Parameter constraint: a list whose every item passes ``accepts``.

    scikit-learn's validation takes only its own constraint classes, so this
    one is a ``HasMethods`` (of no methods) with its own test and wording.

    Parameters
    ----------
    accepts : callable
        ``accepts(item) -> bool``.
    description : str
        What the constraint asks for, completing "must be ...".
    """

    def __init__(self, accepts, description):
        super().__init__([])
        self.accepts = accepts
        self.description = description

    def is_satisfied_by(self, val):
        return isinstance(val, list) and all(self.accepts(item) for item in val)

    def __str__(self):
        return self.description


def param_names(estimator_class):
    """The constructor parameter names of an estimator class, sorted."""
    return estimator_class._get_param_names()
