"""vision: labels agree with an independent pixel-level reading of every image."""
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import mutual_info_score

from modprobe import tasks


@pytest.fixture(scope="module")
def task():
    return tasks.load("vision", seed=0, n_train=1200, n_test=300)


def _read(images):
    """(inside, contact, outline pixels, fill ratios) from pixels alone: flood fill and dilation."""
    inside, contact, size, outer_ratio, inner_ratio = [], [], [], [], []
    for img in images.numpy()[:, 0]:
        outline, shape = img > 0.75, (img > 0.25) & (img < 0.75)
        regions, _ = ndimage.label(~outline)  # 4-connected background regions
        border = np.unique(np.r_[regions[0], regions[-1], regions[:, 0], regions[:, -1]])
        inside.append(not np.isin(regions[shape], border).any())
        contact.append((ndimage.binary_dilation(outline, np.ones((3, 3))) & shape).any())
        size.append(outline.sum())
        outer_ratio.append(_fill_ratio(ndimage.binary_fill_holes(outline)))
        inner_ratio.append(_fill_ratio(shape))
    return (np.array(inside, int), np.array(contact, int), np.array(size),
            np.array(outer_ratio), np.array(inner_ratio))


def _fill_ratio(mask):
    rows, cols = np.nonzero(mask)
    return mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))


def _shape_from_ratio(ratio):
    """Area over bounding box: square ~1, circle ~pi/4, diamond ~1/2."""
    return np.where(ratio > 0.95, 1, np.where(ratio > 0.645, 0, 2))


def test_composite_label_is_which_of_inside_and_contact_hold_read_from_pixels(task):
    for data in (task.composite.train, task.composite.test, task.heldout):
        inside, contact, *_ = _read(data.data[0])
        assert np.array_equal(data.data[1].numpy(), 2 * inside + contact)


def test_subroutine_labels_are_their_relation_read_from_pixels(task):
    for name, index in (("inside", 0), ("contact", 1)):
        split = task.subroutines[name].test
        assert np.array_equal(split.data[1].numpy(), _read(split.data[0])[index])


def test_subroutine_label_carries_no_information_about_the_other_relation(task):
    for name, other in (("inside", 1), ("contact", 0)):
        split = task.subroutines[name].train
        relations = _read(split.data[0])
        label = split.data[1].numpy()
        assert mutual_info_score(label, relations[other]) < 1e-3
        assert mutual_info_score(label, relations[1 - other]) == pytest.approx(np.log(2))


def test_classes_are_balanced(task):
    counts = task.composite.train.data[1].bincount(minlength=4)
    assert counts.max() - counts.min() <= 1
    for split in task.subroutines.values():
        assert split.train.data[1].float().mean() == 0.5


def test_outline_size_does_not_give_the_relations_away(task):
    inside, contact, size, *_ = _read(task.constituents.inputs)
    for bit in (inside, contact):
        gap = abs(size[bit == 1].mean() - size[bit == 0].mean())
        assert gap < 0.25 * size.std()


def test_constituent_labels_match_the_pixels(task):
    c = task.constituents
    inside, contact, _, outer_ratio, inner_ratio = _read(c.inputs)
    assert np.array_equal(c.labels["inside"].numpy(), inside)
    assert np.array_equal(c.labels["contact"].numpy(), contact)
    assert np.array_equal(c.labels["outer_shape"].numpy(), _shape_from_ratio(outer_ratio))
    assert (c.labels["inner_shape"].numpy() == _shape_from_ratio(inner_ratio)).mean() > 0.98
    pairs = c.labels["outer_shape"] * 3 + c.labels["inner_shape"]
    assert np.array_equal(pairs.numpy(), c.groups.numpy())


def test_heldout_shape_pairs_are_the_listed_ones_and_leave_every_shape_in_training(task):
    held = {tuple(p) for p in task.info["heldout_combinations"]}
    shapes = task.info["shapes"]
    seen = {(shapes[g // 3], shapes[g % 3]) for g in task.heldout_constituents.groups.tolist()}
    assert seen == held and len(held) == 2
    trained = [tuple(p) for p in task.info["train_combinations"]]
    assert {o for o, _ in trained} == {i for _, i in trained} == set(shapes)
