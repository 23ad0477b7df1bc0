"""The tensor-resident loader and its on-device augmentation."""
import math

from dataclasses import replace

import pytest
import torch

from mnist_arch.data import MEAN, STD, Augment, DeviceLoader
from mnist_arch.data.device_loader import affine_warp, random_erase

N = 103  # not a multiple of the batch size, so the last partial batch shows


def _data(n=N):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    images[:, 0, 0] = torch.arange(n, dtype=torch.uint8)  # pixel (0, 0) names the image
    return images, torch.arange(n) % 10


def _ids(x):
    """Recover each image's index from its normalised corner pixel."""
    return (x[:, 0, 0, 0] * STD + MEAN).mul(255).round().long()


@pytest.mark.parametrize("drop_last, batches, seen", [(False, 11, N), (True, 10, 100)])
def test_every_index_once_per_epoch(drop_last, batches, seen):
    loader = DeviceLoader(*_data(), batch_size=10, shuffle=True, drop_last=drop_last, seed=1)
    assert len(loader) == batches
    ids = torch.cat([_ids(x) for x, _ in loader])
    assert len(ids) == seen and len(set(ids.tolist())) == seen
    if not drop_last:
        assert sorted(ids.tolist()) == list(range(N))


def test_labels_travel_with_their_images():
    images, labels = _data()
    for x, y in DeviceLoader(images, labels, batch_size=16, shuffle=True, seed=2):
        assert torch.equal(y, labels[_ids(x)])


def test_order_is_reproducible_per_seed_and_epoch():
    def order(seed, epoch):
        loader = DeviceLoader(*_data(), batch_size=10, shuffle=True, seed=seed)
        loader.sampler.set_epoch(epoch)  # what Lightning calls at every epoch start
        return torch.cat([_ids(x) for x, _ in loader])

    assert torch.equal(order(1, 0), order(1, 0))
    assert not torch.equal(order(1, 0), order(2, 0))
    assert not torch.equal(order(1, 0), order(1, 1))


def test_without_shuffle_the_order_is_the_file_order():
    ids = torch.cat([_ids(x) for x, _ in DeviceLoader(*_data(), batch_size=10)])
    assert ids.tolist() == list(range(N))


def test_shapes_dtype_and_normalisation():
    images, labels = _data()
    x, y = next(iter(DeviceLoader(images, labels, batch_size=16)))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], images[:16].float().div(255).sub(MEAN).div(STD))


def test_ranks_get_disjoint_shards_that_cover_the_epoch():
    shards = [torch.cat([_ids(x) for x, _ in DeviceLoader(*_data(), batch_size=8, shuffle=True, seed=4,
                                                           rank=r, world_size=3)]) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # equal length on every rank (padded like DistributedSampler)
    together = torch.cat(shards).tolist()
    assert set(together) == set(range(N)) and len(together) == 3 * math.ceil(N / 3)


def test_augmented_batches_are_reproducible_and_keep_labels():
    aug = replace(Augment.off(), rotation=15, translate=0.1, scale=0.1, erasing=0.5)

    def first(seed):
        return next(iter(DeviceLoader(*_data(), batch_size=32, shuffle=True, seed=seed, augment=aug)))

    (x1, y1), (x2, y2), (x3, _) = first(5), first(5), first(6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    plain_x, plain_y = next(iter(DeviceLoader(*_data(), batch_size=32, shuffle=True, seed=5)))
    assert torch.equal(y1, plain_y) and not torch.allclose(x1, plain_x)


def test_zero_strengths_are_the_identity():
    x = torch.rand(8, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    # the identity grid resamples pixel centres exactly, up to float rounding of the grid (1/255 = 4e-3)
    assert torch.allclose(affine_warp(x, Augment.off(), g), x, atol=1e-5)
    assert torch.equal(random_erase(x, 0.0, g), x)


def _blob_batch(n, row, col):
    """n copies of a 2x2 bright square whose centre sits at (row + 0.5, col + 0.5)."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, 0, row:row + 2, col:col + 2] = 1
    return x


def _centroids(x):
    mass = x[:, 0].sum((1, 2))
    grid = torch.arange(28.0) + 0.5
    rows = (x[:, 0].sum(2) * grid).sum(1) / mass
    cols = (x[:, 0].sum(1) * grid).sum(1) / mass
    return rows - 14, cols - 14  # relative to the image centre


def test_rotation_stays_within_its_bound():
    g = torch.Generator().manual_seed(1)
    out = affine_warp(_blob_batch(512, 13, 21), replace(Augment.off(), rotation=20), g)  # blob 8 px right of centre
    r, c = _centroids(out)
    angles = torch.rad2deg(torch.atan2(r, c))
    assert angles.abs().max() <= 20 + 1.0 and angles.abs().max() > 15  # fills the range, never beyond
    assert torch.allclose(torch.hypot(r, c), torch.full((512,), 8.0), atol=0.3)  # rotation keeps the radius


def test_translation_stays_within_its_bound():
    g = torch.Generator().manual_seed(2)
    out = affine_warp(_blob_batch(512, 13, 13), replace(Augment.off(), translate=0.1), g)  # centred blob
    r, c = _centroids(out)
    assert max(r.abs().max(), c.abs().max()) <= 2.8 + 0.1 and r.abs().max() > 2.0  # 10% of 28 px


def test_scale_stays_within_its_bound():
    g = torch.Generator().manual_seed(3)
    out = affine_warp(_blob_batch(512, 13, 21), replace(Augment.off(), scale=0.2), g)
    r, c = _centroids(out)
    ratio = torch.hypot(r, c) / 8.0
    assert ratio.min() >= 0.8 - 0.03 and ratio.max() <= 1.2 + 0.03 and ratio.max() > 1.12


def test_erasing_blanks_one_rectangle_within_torchvisions_area_range():
    g = torch.Generator().manual_seed(4)
    x = torch.ones(256, 1, 28, 28)
    out = random_erase(x, 1.0, g)
    area = (out == 0).sum((1, 2, 3)).float() / (28 * 28)
    assert area.min() >= 0.015 and area.max() <= 0.36
    half = random_erase(x, 0.5, torch.Generator().manual_seed(4))
    erased = ((half == 0).flatten(1).any(1)).float().mean()
    assert 0.35 < erased < 0.65


def test_brightness_and_contrast_jitter_stay_within_their_bounds_with_their_probability():
    """ColorJitter's semantics: brightness scales the pixels by a factor in [1 - b, 1 + b]; contrast moves each
    pixel from the image's mean by a factor in [1 - c, 1 + c]; an image is jittered with probability jitter_p."""
    from mnist_arch.data.device_loader import color_jitter

    g = torch.Generator().manual_seed(0)
    x = torch.full((4000, 1, 4, 4), 0.5)
    x[:, :, :2] = 0.25  # two levels: mean 0.375, so contrast has something to stretch
    factor = color_jitter(x, replace(Augment.off(), brightness=0.4), g)[:, 0, 0, 0] / 0.25
    assert 0.6 - 1e-6 <= factor.min() < 0.65 and 1.35 < factor.max() <= 1.4 + 1e-6  # uniform over [0.6, 1.4]
    out = color_jitter(x, replace(Augment.off(), contrast=0.5), g)
    spread = (out[:, 0, 3, 0] - out[:, 0, 0, 0]) / 0.25  # the gap between the two levels, scaled by the factor
    assert 0.5 - 1e-6 <= spread.min() < 0.55 and 1.45 < spread.max() <= 1.5 + 1e-6
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)  # around each image's mean
    half = color_jitter(x, replace(Augment.off(), brightness=0.4, jitter_p=0.5), g)
    untouched = (half == x).flatten(1).all(dim=1).float().mean()
    assert 0.45 < untouched < 0.55  # jitter_p of the images jittered, the rest left as they are
