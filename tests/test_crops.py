# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Person crops (pure torch/numpy): ROIAlign crops, ISA boxes and partial views."""

import numpy as np
import pytest
import torch

from personsearch_kd.layers.crops import (
    PARTIAL_VIEWS,
    crop_boxes,
    expand_box,
    isa_box,
    parse_view,
    view_boxes,
)


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


@pytest.mark.parametrize(
    "view, rows",
    # A box 56 rows high (4 x 14 and 7 x 8): each view's crop is exactly these rows of the box.
    [
        ("holistic", (0, 56)),
        ("Up1", (0, 28)),
        ("Mid1", (14, 42)),
        ("Dn1", (28, 56)),
        ("Up2", (0, 24)),
        ("Mid2", (16, 40)),
        ("Dn2", (32, 56)),
        ("0.25,0.5", (14, 28)),
    ],
)
def test_each_view_crops_exactly_its_rows_of_the_box(view, rows):
    image = torch.arange(3 * 80 * 40, dtype=torch.float32).view(3, 80, 40)
    box = torch.tensor([[5.0, 10.0, 25.0, 66.0]])
    window = view_boxes(box, parse_view(view))
    top, bottom = rows
    assert window.tolist() == [[5.0, 10.0 + top, 25.0, 10.0 + bottom]]
    (crop,) = crop_boxes(image, window, (bottom - top, 20))
    assert torch.equal(crop, image[:, 10 + top : 10 + bottom, 5:25])


def test_views_of_a_box_at_the_image_border_pad_outside_with_zeros():
    # A box leaving the image at the bottom (rows 60-100 of an 80-row image): Up1 (rows 60-80) is
    # all inside; Dn1 is rows 80-100, all outside, zeros beyond the row next to the border
    # (ROIAlign repeats the edge pixel up to one pixel out).
    image = torch.ones(1, 80, 40)
    box = torch.tensor([[0.0, 60.0, 40.0, 100.0]])
    (up,) = crop_boxes(image, view_boxes(box, parse_view("Up1")), (20, 40))
    (down,) = crop_boxes(image, view_boxes(box, parse_view("Dn1")), (20, 40))
    assert torch.equal(up, torch.ones(1, 20, 40))
    assert torch.equal(down[:, 1:], torch.zeros(1, 19, 40))


@pytest.mark.parametrize("view", ["Up3", "0.5,0.25", "0.5", "-0.1,0.5", "top,bottom"])
def test_bad_views_name_the_key_and_what_was_expected(view):
    with pytest.raises(ValueError, match=r"INPUT.REID_CROP.VIEW=.*expected 'holistic', one of"):
        parse_view(view)
    assert len(PARTIAL_VIEWS) == 6
