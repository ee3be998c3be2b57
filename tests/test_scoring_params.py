"""The threshold belongs to the fitted score.

A parameter the score reads (``_scoring_parameters``), changed after
``fit``, changes the scores that ``offset_`` and ``calibration_scores_``
were set from: ``predict`` would flag far more or far fewer samples than
``contamination``, silently. Such a change is refused until a refit; and
every parameter whose change moves ``score_samples`` of a fitted detector
must be declared, so a new one cannot slip past the check.
"""

import copy
from numbers import Integral, Real

import numpy as np
import pytest
from sklearn.utils._param_validation import Interval, StrOptions

import skanomaly
from skanomaly import load, save
from skanomaly.testing import _data, _images, fast_detector

# parameters that never change a fitted model's scores by design (devices,
# batching) or whose change only makes scoring fail (sizes of the fitted
# network, the feature stage), which other tests cover
_NOT_PROBED = {
    "device",
    "random_state",
    "verbose",
    "batch_size",
    "scoring_batch_size",
    "search",
    "runtime",
}


def _fitted(name):
    detector = fast_detector(skanomaly.get_detector(name))
    return detector.fit(_data(detector)), _data(detector, seed=1, n_samples=12)


@pytest.fixture(scope="module")
def fitted_detectors():
    return {name: _fitted(name) for name in skanomaly.list_detectors()}


def _alternatives(value, constraints):
    """Other valid values of a parameter, from its declared constraints."""
    out = []
    for constraint in constraints:
        if isinstance(constraint, StrOptions):
            out += sorted(option for option in constraint.options if option != value)
        elif isinstance(constraint, Interval) and not isinstance(value, bool):
            if constraint.type is Integral and isinstance(value, Integral):
                out.append(value + 1)
            elif isinstance(value, Real):
                out.append(value * 0.5 if value else 0.5)
    return [v for v in out if _valid(constraints, v)]


def _valid(constraints, value):
    for constraint in constraints:
        if isinstance(constraint, StrOptions) and value in constraint.options:
            return True
        if isinstance(constraint, Interval) and constraint.is_satisfied_by(value):
            return True
    return False


def _probes(detector):
    params = detector.get_params(deep=False)
    for name, constraints in type(detector)._parameter_constraints.items():
        if name in _NOT_PROBED or name not in params:
            continue
        for value in _alternatives(params[name], constraints):
            yield name, value


@pytest.mark.parametrize("name", skanomaly.list_detectors())
def test_every_parameter_the_score_reads_is_declared(fitted_detectors, name):
    detector, X = fitted_detectors[name]
    declared = set(type(detector)._scoring_parameters)
    before = detector.score_samples(X)
    undeclared = []
    for param, value in _probes(detector):
        if param in declared:
            continue
        probe = copy.deepcopy(detector).set_params(**{param: value})
        try:
            after = probe.score_samples(X)
        except (ValueError, RuntimeError, TypeError):
            continue  # a size of the fitted network: scoring fails, loudly
        if not np.allclose(after, before, rtol=1e-6, atol=1e-9):
            undeclared.append(f"{param}={value!r}")
    assert not undeclared, (
        f"{name}'s score reads {', '.join(undeclared)}: declare them in "
        "_scoring_parameters"
    )


def _declared_probes():
    cases = []
    for name in skanomaly.list_detectors():
        cls = skanomaly.get_detector(name)
        for param in cls._scoring_parameters:
            cases.append(pytest.param(name, param, id=f"{name}-{param}"))
    return cases


def _score_moving_value(detector, param, X, candidates):
    """One of ``candidates`` under which the fitted scores change, or None."""
    before = detector.score_samples(X)
    for value in candidates:
        probe = copy.deepcopy(detector).set_params(**{param: value})
        try:
            after = probe.score_samples(X)
        except (ValueError, RuntimeError, TypeError):
            return value  # a change scoring cannot follow counts as well
        if not np.allclose(after, before, rtol=1e-6, atol=1e-9):
            return value
    return None


@pytest.mark.parametrize(("name", "param"), _declared_probes())
def test_a_changed_scoring_parameter_refuses_the_threshold(
    fitted_detectors, name, param
):
    detector, X = fitted_detectors[name]
    fitted_value = detector.get_params()[param]
    constraints = type(detector)._parameter_constraints[param]
    alternatives = _alternatives(fitted_value, constraints)
    changing = [
        value
        for value in alternatives
        if copy.deepcopy(detector).set_params(**{param: value})._scoring_setting()
        != detector.scoring_params_
    ]
    if not changing:
        # every other value resolves to the fitted setting here (PatchCore's
        # n_probes without faiss, a blur of 'auto' on a table): no refusal
        changed = copy.deepcopy(detector).set_params(**{param: alternatives[0]})
        np.testing.assert_array_equal(
            changed.decision_function(X), detector.decision_function(X)
        )
        return
    assert detector.scoring_params_[param] == detector._scoring_setting()[param]
    decision = detector.decision_function(X)
    # a value that moves the scores where one does on these tiny models (the
    # refusal does not depend on it: AnoGAN's search stops early here)
    value = _score_moving_value(detector, param, X, changing)
    if value is None:
        value = changing[0]
    changed = copy.deepcopy(detector).set_params(**{param: value})
    for method in ("decision_function", "predict", "conformal_p_values"):
        with pytest.raises(ValueError, match=rf"was fitted with {param}=") as info:
            getattr(changed, method)(X)
        assert "Refit it" in str(info.value)
    # set back: the fitted threshold applies again, unchanged
    changed.set_params(**{param: fitted_value})
    np.testing.assert_array_equal(changed.decision_function(X), decision)
    # a refit under the new value records it and thresholds again
    refitted = changed.set_params(**{param: value})
    refitted.fit(_data(detector))
    assert refitted.scoring_params_[param] == refitted._scoring_setting()[param]
    assert refitted.predict(X).shape == (len(X),)


def test_setting_the_resolved_value_of_auto_changes_nothing():
    images = _images()
    vae = fast_detector(skanomaly.VAE).fit(images)
    assert vae.scoring_params_ == {
        "score_method": "reconstruction_error",
        "complexity_correction": None,
    }
    decision = vae.decision_function(images)
    vae.set_params(score_method="reconstruction_error")
    np.testing.assert_array_equal(vae.decision_function(images), decision)
    egbad = fast_detector(skanomaly.EGBAD).fit(images)
    assert egbad.scoring_params_["score_scaling"] == "standardized"
    decision = egbad.decision_function(images)
    egbad.set_params(score_scaling="standardized")
    np.testing.assert_array_equal(egbad.decision_function(images), decision)


@pytest.mark.parametrize(
    ("needs", "write"),
    [
        ("onnx", lambda det, X, path: skanomaly.export_onnx(det, path)),
        ("matplotlib", lambda det, X, path: skanomaly.report(det, X, path)),
    ],
    ids=["onnx-export", "report"],
)
def test_the_export_and_the_report_refuse_a_changed_score(tmp_path, needs, write):
    # both write the fitted threshold next to scores of the current setting
    pytest.importorskip(needs)
    images = _data(fast_detector(skanomaly.SkipGANomaly))
    detector = fast_detector(skanomaly.SkipGANomaly).fit(images)
    detector.set_params(score_lambda=0.0)
    with pytest.raises(ValueError, match="was fitted with score_lambda=0.9"):
        write(detector, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_fitted_setting_survives_save_and_pickle(tmp_path):
    import pickle

    images = _data(fast_detector(skanomaly.SkipGANomaly))
    detector = fast_detector(skanomaly.SkipGANomaly, score_lambda=0.5).fit(images)
    save(detector, tmp_path / "skip.ska")
    for copy_ in (load(tmp_path / "skip.ska"), pickle.loads(pickle.dumps(detector))):
        assert copy_.scoring_params_ == {
            "score_lambda": 0.5,
            "complexity_correction": None,
        }
        copy_.set_params(score_lambda=0.9)
        with pytest.raises(ValueError, match="was fitted with score_lambda=0.5"):
            copy_.predict(images)


def test_a_model_fitted_before_the_record_is_not_checked():
    # files and pickles written before scoring_params_ existed lack it
    images = _data(fast_detector(skanomaly.SkipGANomaly))
    detector = fast_detector(skanomaly.SkipGANomaly).fit(images)
    del detector.scoring_params_
    detector.set_params(score_lambda=0.0)
    assert detector.predict(images).shape == (len(images),)


def test_patchcore_records_its_faiss_search_and_probes():
    pytest.importorskip("faiss")
    images = _images(n_samples=24, shape=(1, 16, 16))
    detector = fast_detector(skanomaly.PatchCore, search="faiss", n_probes=1)
    detector.fit(images)
    assert detector.scoring_params_ == {
        "num_neighbors": detector.num_neighbors,
        "search": "faiss",
        "n_probes": 1,
    }
    for change in ({"n_probes": 16}, {"search": "exact"}):
        changed = copy.deepcopy(detector).set_params(**change)
        with pytest.raises(ValueError, match="was fitted with"):
            changed.predict(images)
    # the exact search reads no n_probes
    exact = fast_detector(skanomaly.PatchCore).fit(images)
    assert "n_probes" not in exact.scoring_params_
    exact.set_params(n_probes=3).predict(images)


@pytest.mark.parametrize("variant", ["categorical", "inverse_gamma"])
def test_dte_networks_keep_their_schedule_so_changing_it_is_harmless(variant):
    X = np.random.default_rng(0).normal(size=(60, 4))
    detector = fast_detector(skanomaly.DTE, variant=variant, n_steps=20).fit(X)
    assert detector.scoring_params_ == {"variant": variant}
    decision = detector.decision_function(X)
    detector.set_params(n_steps=40)
    np.testing.assert_array_equal(detector.decision_function(X), decision)
    with pytest.raises(ValueError, match=f"was fitted with variant='{variant}'"):
        detector.set_params(variant="nonparametric").predict(X)
