"""scikit-learn names that are not public API, imported in this one place.

Parameter validation (``Interval``, ``StrOptions``) and the ``_fit_context``
decorator are what scikit-learn's own estimators use; they live in private
modules, so a scikit-learn release that moves them needs a fix here only.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

__all__ = ["Interval", "StrOptions", "fit_context"]

fit_context = _fit_context
