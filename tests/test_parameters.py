"""Parameter sets that other code reads by name agree with the constructors.

Bases and wrappers read parameters by name (a GAN base the optimizer
settings of its subclasses, PaDiM and PatchCore the feature stage's, which
they pass on); a parameter renamed on one side must fail here, not in a
user's fit.
"""

import pytest

import skanomaly
from skanomaly import PatchFeatures, TimmFeatures
from skanomaly._compat import param_names
from skanomaly.detectors.base import BaseDetector
from skanomaly.detectors.gan_base import BaseGANDetector
from skanomaly.detectors.patch_base import BasePatchDetector
from skanomaly.registry import builtin_detector_classes

DETECTORS = [
    skanomaly.get_detector(path) for path in builtin_detector_classes().values()
]


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda cls: cls.__name__)
def test_every_constraint_names_a_parameter_and_every_parameter_has_one(cls):
    params = set(param_names(cls))
    constraints = set(cls._parameter_constraints)
    assert constraints <= params, (
        f"constraints without a parameter: {constraints - params}"
    )
    assert params <= constraints, (
        f"parameters without a constraint: {params - constraints}"
    )
    assert {"contamination", "calibration", "calibration_size"} <= params
    assert set(BaseDetector._parameter_constraints) <= params


@pytest.mark.parametrize(
    "cls",
    [cls for cls in DETECTORS if issubclass(cls, BaseGANDetector)],
    ids=lambda cls: cls.__name__,
)
def test_gan_detectors_have_what_the_gan_base_reads(cls):
    # BaseGANDetector._adversarial_net reads these from the subclass
    assert set(BaseGANDetector._parameter_constraints) <= set(param_names(cls))


@pytest.mark.parametrize(
    "cls, stage",
    [
        *[
            (cls, PatchFeatures)
            for cls in DETECTORS
            if issubclass(cls, BasePatchDetector)
        ],
        (skanomaly.DeepMahalanobis, TimmFeatures),
    ],
    ids=lambda value: value.__name__,
)
def test_wrappers_take_every_parameter_of_their_feature_stage(cls, stage):
    # passed on by name to the stage they fit
    missing = set(param_names(stage)) - set(param_names(cls))
    assert not missing, f"{cls.__name__} lacks {stage.__name__}'s {missing}"
