"""The README's quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs_and_separates_the_digits():
    text = README.read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    from sklearn.metrics import roc_auc_score

    pipe, X_test, y_test = (namespace[k] for k in ("pipe", "X_test", "y_test"))
    # no training sample is in the test set, and the detector ranks well
    assert not set(map(bytes, namespace["X_train"])) & set(map(bytes, X_test))
    assert roc_auc_score(y_test, pipe.decision_function(X_test)) > 0.95
