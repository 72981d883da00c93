import numpy as np

from wtal.plots import strongest_activations


def test_probabilities_are_drawn_as_they_are():
    cas = np.array([[0.1, 0.9, 0.2], [0.3, 0.5, 0.8]])  # [T=2, C=3]
    strongest, shown, scaled = strongest_activations(cas, 2)
    assert strongest.tolist() == [1, 2] and not scaled
    np.testing.assert_array_equal(shown, cas[:, [1, 2]])


def test_logits_are_min_max_scaled_per_class_over_the_video():
    cas = np.array([[-2.0, 4.0, 0.0], [1.0, 6.0, 0.5], [0.0, 5.0, 0.25]])
    strongest, shown, scaled = strongest_activations(cas, 2)
    assert strongest.tolist() == [1, 0] and scaled
    np.testing.assert_allclose(shown, [[0.0, 0.0], [1.0, 1.0], [0.5, 2 / 3]])
    _, flat, _ = strongest_activations(np.full((3, 1), 7.0), 1)  # a constant curve stays finite
    np.testing.assert_array_equal(flat, np.zeros((3, 1)))
