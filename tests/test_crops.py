# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Person crops (pure torch/numpy): ROIAlign crops and ISA boxes."""

import numpy as np
import torch

from personsearch_kd.layers.crops import crop_boxes, expand_box, isa_box


def test_crop_of_a_box_the_crop_size_is_the_pixels_themselves():
    image = torch.arange(3 * 20 * 30, dtype=torch.float32).view(3, 20, 30)
    (crop,) = crop_boxes(image, torch.tensor([[4.0, 6.0, 12.0, 18.0]]), (12, 8))
    assert torch.allclose(crop, image[:, 6:18, 4:12])
    assert crop_boxes(image, torch.zeros((0, 4)), (12, 8)).shape == (0, 3, 12, 8)


def test_a_large_box_shrinks_by_averaging():
    image = torch.zeros(1, 8, 8)
    image[:, ::2] = 1.0  # stripes one pixel high: a point sample would alias
    (crop,) = crop_boxes(image, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (2, 2))
    assert torch.allclose(crop, torch.full((1, 2, 2), 0.5))


def test_isa_boxes_stay_inside_the_expanded_box_and_the_image():
    rng = np.random.RandomState(0)
    box, alpha = [50.0, 40.0, 80.0, 120.0], 10.0
    bound = expand_box(box, alpha, width=85, height=200)
    assert bound.tolist() == [40.0, 30.0, 85.0, 130.0]
    for _ in range(200):
        jittered, relative = isa_box(
            box, alpha, shift=8.0, crop_size=(128, 64), image_size=(200, 85), rng=rng
        )
        assert (jittered[:2] >= bound[:2] - 1e-9).all() and (jittered[2:] <= bound[2:] + 1e-9).all()
        # The relative offsets give the box back from the original: the same jitter can be
        # applied to the same person elsewhere (FSA).
        size = np.array([30.0, 80.0, 30.0, 80.0])
        assert np.allclose(np.array(box) + relative * size, jittered)
        # Range: min(2 w shift / W, alpha) = min(2 * 30 * 8 / 64, 10) = 7.5 px horizontally,
        # min(2 * 80 * 8 / 128, 10) = 10 px vertically.
        assert (np.abs(relative * size) <= np.array([7.5, 10.0, 7.5, 10.0]) + 1e-9).all()
    unchanged, offsets = isa_box(box, alpha, 0.0, (128, 64), (200, 85), rng)
    assert unchanged.tolist() == box and not offsets.any()
