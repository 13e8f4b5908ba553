"""Transforms and torch loaders on real MNIST digits (tiny images, CPU)."""
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from hpt_hpc.config import AugmentConfig, DataConfig, DatasetConfig, ProbeConfig
from hpt_hpc.config.schema import BlurConfig
from hpt_hpc.data import (DatasetError, ImageRecord, build_eval_loader, build_eval_transform,
                          build_pretrain_loader, build_pretrain_transform,
                          build_probe_train_transform, list_split, load_image)
from hpt_hpc.data.loader import ShardSampler
from hpt_hpc.data.specs import eval_spec
from hpt_hpc.data.transforms import ToNormalizedTensor, blur_kernel_size, normalisation
from hpt_hpc.errors import HptError

GREY = dict(image_size=16, channels=1, mean=[0.5], std=[0.25], workers=0)


def no_augment() -> AugmentConfig:
    aug = AugmentConfig()
    for part in (aug.crop, aug.color_jitter, aug.grayscale, aug.blur, aug.flip):
        part.enabled = False
    return aug


@pytest.fixture(scope="module")
def train_records(mnist_tree):
    return list_split(DatasetConfig(path=str(mnist_tree)), "train")[0]


def test_data_import_keeps_torch_lazy():
    code = ("import sys, hpt_hpc.data, hpt_hpc.data.prepare, hpt_hpc.data.check; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- transforms

def test_two_view_transform_shapes_and_randomness(train_records):
    img = load_image(train_records[0].path, 3)
    data = DataConfig(image_size=24, channels=3, workers=0)
    v1, v2 = build_pretrain_transform(AugmentConfig(), data)(img)
    assert v1.shape == v2.shape == (3, 24, 24) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)
    grey = build_pretrain_transform(AugmentConfig(), DataConfig(**GREY))
    g1, g2 = grey(load_image(train_records[0].path, 1))
    assert g1.shape == (1, 16, 16) and not torch.equal(g1, g2)


def test_no_augmentation_views_identical_and_normalised(train_records):
    img = load_image(train_records[5].path, 1)  # 28x28 grey digit
    data = DataConfig(image_size=28, channels=1, mean=[0.5], std=[0.25], workers=0)
    v1, v2 = build_pretrain_transform(no_augment(), data)(img)
    assert torch.equal(v1, v2)
    expected = (np.asarray(img, np.float32) / 255.0 - 0.5) / 0.25
    assert np.allclose(v1[0].numpy(), expected, atol=1e-6)
    assert v1.min() == pytest.approx(-2.0) and v1.max() > 1.5


def test_blur_kernel_and_normalisation_rules():
    assert [blur_kernel_size(BlurConfig(), s) for s in (224, 96, 32, 8)] == [23, 11, 3, 3]
    assert blur_kernel_size(BlurConfig(kernel_size=5), 224) == 5
    with pytest.raises(ValueError, match="odd"):
        blur_kernel_size(BlurConfig(kernel_size=4), 224)
    mean, std = normalisation(DataConfig(channels=1))
    assert mean == [pytest.approx((0.485 + 0.456 + 0.406) / 3)] and len(std) == 1
    assert normalisation(DataConfig(channels=3, mean=[0.5], std=[0.2]))[0] == [0.5] * 3
    with pytest.raises(ValueError, match="data.mean"):
        normalisation(DataConfig(channels=3, mean=[0.1, 0.2]))


def test_eval_and_probe_transforms():
    data = DataConfig(image_size=32, channels=3, mean=[0.0], std=[1.0])
    big = Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (50, 1)))  # 100x50 ramp
    out = build_eval_transform(data)(big.convert("RGB"))
    assert out.shape == (3, 32, 32)
    # short side 50 -> 37 (32 * 256/224), width 74; centre crop keeps the ramp's middle
    assert out[0, 0, 0] * 255 == pytest.approx((21 + 0.5) * 100 / 74 - 0.5, abs=1.5)
    small = Image.new("L", (8, 8), 200).convert("RGB")
    out = build_eval_transform(data)(small)
    assert out.shape == (3, 32, 32) and torch.allclose(out, torch.full_like(out, 200 / 255))
    a = build_probe_train_transform(data)(big.convert("RGB"))
    assert a.shape == (3, 32, 32)


def _xy_ramp(side: int = 96) -> Image.Image:
    """RGB image whose R and G channels are x and y ramps (a view tells where it was cut)."""
    ramp = np.rint(np.linspace(0, 255, side)).astype(np.uint8)
    rgb = np.stack([np.broadcast_to(ramp[None, :], (side, side)),
                    np.broadcast_to(ramp[:, None], (side, side)),
                    np.zeros((side, side), np.uint8)], axis=-1)
    return Image.fromarray(rgb)


def test_eval_spec_follows_the_probe_config():
    """``probe.crop_scale`` / ``flip`` / ``center_crop_ratio`` drive the views; defaults
    without a probe config; invalid values are errors naming the key."""
    from test_dali_common import crop_boxes
    data = DataConfig(image_size=32, channels=3, mean=[0.0], std=[1.0])
    assert eval_spec(data) == eval_spec(data, ProbeConfig())
    spec = eval_spec(data, ProbeConfig(crop_scale=[0.3, 0.4], flip=False,
                                       center_crop_ratio=0.5))
    assert (spec.crop_scale, spec.flip, spec.resize_large) == ((0.3, 0.4), False, 64)
    img = _xy_ramp()
    torch.manual_seed(0)
    views = {}
    for flip in (False, True):
        tf = build_probe_train_transform(data, ProbeConfig(crop_scale=[0.3, 0.4], flip=flip))
        views[flip] = torch.stack([tf(img) for _ in range(200)]).numpy() * 255
    area, aspect, flipped = crop_boxes(views[False], 96)
    assert not flipped.any()  # flip off: never mirrored over 200 draws
    assert 0.27 < area.min() and area.max() < 0.43  # default scale (0.08, 1) fails
    assert np.abs(np.log(aspect)).max() < np.log(4 / 3) + 0.06
    assert 0.3 < crop_boxes(views[True], 96)[2].mean() < 0.7
    # ratio 0.5: a 100x50 ramp's short side goes to 2 * 32 = 64 (width 128) before the crop
    ramp = Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (50, 1))).convert("RGB")
    half = ProbeConfig(center_crop_ratio=0.5)
    expected = ToNormalizedTensor([0.0] * 3, [1.0] * 3)(
        T.CenterCrop(32)(T.Resize(64)(ramp)))
    for tf in (build_eval_transform(data, half),
               build_probe_train_transform(data, half, augment=False)):
        assert torch.equal(tf(ramp), expected)
    assert not torch.equal(build_eval_transform(data)(ramp), expected)
    for bad, key in ((dict(crop_scale=[0.5, 2.0]), "probe.crop_scale"),
                     (dict(crop_scale=[0.5]), "probe.crop_scale"),
                     (dict(center_crop_ratio=0.0), "probe.center_crop_ratio"),
                     (dict(center_crop_ratio=1.5), "probe.center_crop_ratio")):
        with pytest.raises(HptError, match=key):
            build_eval_transform(data, ProbeConfig(**bad))


# ---------------------------------------------------------------- sharding

def test_shards_are_disjoint_cover_the_epoch_and_reshuffle():
    shards = [ShardSampler(100, 10, seed=3, rank=r, world_size=2) for r in (0, 1)]
    a, b = (list(s) for s in shards)
    assert len(a) == len(b) == 50 and not set(a) & set(b) and set(a) | set(b) == set(range(100))
    assert shards[0].steps_per_epoch == shards[1].steps_per_epoch == 5
    shards[0].set_epoch(1)
    assert list(shards[0]) != a and sorted(list(shards[0]) + shards[1].epoch_indices(1)) == \
        list(range(100))
    assert ShardSampler(100, 10, seed=3).epoch_indices(1) == \
        ShardSampler(100, 10, seed=3).epoch_indices(1)
    assert ShardSampler(100, 10, seed=4).epoch_indices(1) != \
        ShardSampler(100, 10, seed=3).epoch_indices(1)
    odd = [ShardSampler(103, 4, seed=0, rank=r, world_size=3) for r in range(3)]
    assert {s.steps_per_epoch for s in odd} == {8} and {len(list(s)) for s in odd} == {32}


def test_pretrain_loader_steps_epochs_and_resume(train_records):
    data = DataConfig(**GREY)
    loaders = [build_pretrain_loader(train_records, no_augment(), data, batch_size=16,
                                     seed=7, rank=r, world_size=2) for r in (0, 1)]
    assert [l.steps_per_epoch for l in loaders] == [6, 6] and loaders[0].num_images == 200
    it = iter(loaders[0])
    batches = [next(it) for _ in range(8)]  # crosses into epoch 1
    assert all(v1.shape == (16, 1, 16, 16) and torch.equal(v1, v2) for v1, v2 in batches)
    assert loaders[0].epoch == 1 and loaders[0].step == 2
    resumed = build_pretrain_loader(train_records, no_augment(), data, batch_size=16, seed=7,
                                    rank=0, world_size=2, start_epoch=1, start_step=1)
    assert torch.equal(next(iter(resumed))[0], batches[7][0])
    resumed.set_epoch(0)
    assert torch.equal(next(iter(resumed))[0], batches[0][0])
    other_rank = next(iter(loaders[1]))[0]
    assert not torch.equal(other_rank, batches[0][0])
    with pytest.raises(DatasetError, match="too few"):
        build_pretrain_loader(train_records[:10], no_augment(), data, batch_size=8, seed=0,
                              world_size=2)


# ---------------------------------------------------------------- unreadable images

@pytest.fixture
def records_with_bad_files(mnist_tree, train_records, tmp_path):
    from test_data import make_bad_files
    good = [r for r in train_records if r.labels == (3,)][:12]
    bad = make_bad_files(tmp_path / "bad", Path(good[0].path))
    return good + [ImageRecord(p, (3,)) for p in bad], bad


@pytest.mark.parametrize("workers", [0, 2])
def test_pretrain_loader_skips_unreadable_images(records_with_bad_files, caplog, workers):
    records, bad = records_with_bad_files
    loader = build_pretrain_loader(records, AugmentConfig(), DataConfig(**GREY), batch_size=4,
                                   seed=0, workers=workers)
    with caplog.at_level(logging.WARNING, logger="hpt_hpc.data.dataset"), loader:
        it = iter(loader)
        shapes = [next(it)[0].shape[0] for _ in range(loader.steps_per_epoch)]
    assert shapes == [4] * 4  # batches topped up to full size
    assert loader.skipped.count == 4 and sorted(loader.skipped.paths) == sorted(bad)
    for path in bad:
        assert sum(path in rec.getMessage() for rec in caplog.records) == 1


def test_pretrain_loader_without_fill_gives_smaller_batches(records_with_bad_files):
    records, bad = records_with_bad_files
    loader = build_pretrain_loader(records, AugmentConfig(), DataConfig(**GREY), batch_size=4,
                                   seed=0, fill_skipped=False)
    it = iter(loader)
    sizes = [next(it)[0].shape[0] for _ in range(loader.steps_per_epoch)]
    assert sum(sizes) == 12 and min(sizes) < 4 and loader.skipped.count == 4


def test_eval_loader_labels_and_skips(records_with_bad_files, mnist_tree):
    records, bad = records_with_bad_files
    loader = build_eval_loader(records, DataConfig(**GREY), batch_size=5)
    batches = list(loader)
    assert sum(x.shape[0] for x, _ in batches) == 12 and loader.skipped.count == 4
    assert all(y.dtype == torch.int64 and (y == 3).all() for _, y in batches)
    val = list_split(DatasetConfig(path=str(mnist_tree)), "val")[0][:6]
    multi = [ImageRecord(r.path, (1, 4)) for r in val[:3]] + val[3:]
    images, labels = next(iter(build_eval_loader(multi, DataConfig(**GREY), 6,
                                                 num_classes=10)))
    assert images.shape == (6, 1, 16, 16) and labels.shape == (6, 10)
    assert labels.dtype == torch.float32 and labels[0].nonzero().flatten().tolist() == [1, 4]
    assert labels[5].sum() == 1 and labels[5, val[5].labels[0]] == 1
    first = torch.cat([x for x, _ in build_eval_loader(val, DataConfig(**GREY), 4)])
    again = torch.cat([x for x, _ in build_eval_loader(val, DataConfig(**GREY), 4)])
    assert torch.equal(first, again)
    probe = build_eval_loader(val, DataConfig(**GREY), 4, train=True)
    assert len(probe) == 2 and sum(x.shape[0] for x, _ in probe) == 6
