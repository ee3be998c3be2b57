from skanomaly_example_plugin import MeanDistance

from skanomaly.testing import parametrize_detector_checks


@parametrize_detector_checks([MeanDistance()])
def test_mean_distance_follows_the_contract(estimator, check):
    check(estimator)
