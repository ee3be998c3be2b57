"""scikit-learn names that are not public API, used through this one module.

Parameter validation (``Interval``, ``StrOptions``), the ``_fit_context``
decorator and ``_get_param_names`` are what scikit-learn's own estimators
use; they are private, so a scikit-learn release that moves them needs a
fix here only.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

__all__ = ["Interval", "StrOptions", "fit_context", "param_names"]

fit_context = _fit_context


def param_names(estimator_class):
    """The constructor parameter names of an estimator class, sorted."""
    return estimator_class._get_param_names()
