"""Multi-crop (#25): ``augment.local_crops`` in the config, the transform spec, both data
backends and the engine. Views come as 2 global views (``data.image_size``, augment.crop)
then ``number`` local views (``local_crops.size``, ``local_crops.scale``)."""
from __future__ import annotations

import pytest
import torch
import yaml

from test_dali_common import DEVICE, MEAN, STD
from tiny import write_tiny_config
from usererror import assert_user_error, clear_tracking_env, run

STAGES = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 4}}


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    clear_tracking_env(monkeypatch)


@pytest.mark.parametrize("setting, text", [
    ("augment.local_crops.size=17", "augment.local_crops.size: 17 is larger than "
                                    "data.image_size 16"),
    ("augment.local_crops.scale=[0.5,0.1]", "augment.local_crops.scale: [0.5, 0.1] must be"),
    ("augment.local_crops.scale=[0,0.4]", "0 < low <= high <= 1"),
    ("augment.local_crops.scale=[0.1,1.5]", "0 < low <= high <= 1"),
    ("augment.local_crops.scale=[0.1]", "must be [low, high]"),
    ("augment.local_crops.number=-1", "augment.local_crops.number: -1 is outside its range"),
    ("augment.local_crops.size=0", "augment.local_crops.size: 0 is outside its range"),
])
def test_bad_local_crops_are_refused_in_one_line(tmp_path, mnist_tree, setting, text):
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree}, STAGES)
    assert_user_error(run("config", "show", "--config", cfg, "--set", setting), text)
    assert not (tmp_path / "out").exists()


def test_local_crops_defaults_and_limits_are_accepted(tmp_path, mnist_tree):
    """The defaults (no local views) and the edge values (size = image_size, a one-point
    area range, scale high 1) are valid and shown as set."""
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree}, STAGES)
    shown = run("config", "show", "--config", cfg)
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output)["augment"]["local_crops"] == \
        {"number": 0, "size": None, "scale": [0.05, 0.4]}
    edge = run("config", "show", "--config", cfg, "--set", "augment.local_crops.number=3",
               "--set", "augment.local_crops.size=16", "--set",
               "augment.local_crops.scale=[1,1]")
    assert edge.exit_code == 0, edge.output
    assert yaml.safe_load(edge.output)["augment"]["local_crops"] == \
        {"number": 3, "size": 16, "scale": [1, 1]}


# ------------------------------------------------------------------ data: both backends

BACKENDS = ("torchvision", "dali")


def _records(tree, split="train"):
    from hpt_hpc.config import DatasetConfig
    from hpt_hpc.data import list_split
    return list_split(DatasetConfig(path=str(tree)), split)[0]


def _data(backend, size, channels=3):
    from hpt_hpc.config import DataConfig
    return DataConfig(backend=backend, device=DEVICE, image_size=size, channels=channels,
                      mean=[MEAN] * channels, std=[STD] * channels,
                      workers=1 if backend == "dali" else 0)


def _local(aug, number, size=None, scale=(0.05, 0.4)):
    aug.local_crops.number, aug.local_crops.size = number, size
    aug.local_crops.scale = list(scale)
    return aug


def _stream(records, aug, data, batch, seed, steps):
    import torch
    from hpt_hpc.data import build_pretrain_loader
    torch.manual_seed(seed)  # torchvision's augmentations draw from torch's global RNG
    loader = build_pretrain_loader(records, aug, data, batch, seed=seed)
    stream = iter(loader)
    out = [next(stream) for _ in range(steps)]
    loader.close()
    return out


def test_no_local_crops_torchvision_views_are_moco_v2_views_drawn_twice(mnist_tree):
    """With no local crops each image's views are MoCo-v2's view transform (written out
    here, as it was before multi-crop) applied twice, in sampler order."""
    import torch
    from torchvision import transforms as T
    from hpt_hpc.config import AugmentConfig
    from hpt_hpc.data.bands import read_image
    from hpt_hpc.data.dataset import ShardSampler
    from hpt_hpc.data.transforms import RandomGaussianBlur, ToNormalizedTensor
    records, aug, data = _records(mnist_tree)[:24], AugmentConfig(), _data("torchvision", 20)
    cj = aug.color_jitter
    view = T.Compose([
        T.RandomResizedCrop(20, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)),
        T.RandomApply([T.ColorJitter(cj.brightness, cj.contrast, cj.saturation, cj.hue)],
                      p=0.8),
        T.RandomGrayscale(p=0.2), T.RandomHorizontalFlip(p=0.5),
        RandomGaussianBlur((0.1, 2.0), 0.5), ToNormalizedTensor([MEAN] * 3, [STD] * 3)])
    batches = _stream(records, aug, data, 8, 9, 3)
    torch.manual_seed(9)
    order = ShardSampler(len(records), 8, 9).epoch_indices(0)
    for step, (got1, got2) in enumerate(batches):
        pairs = []
        for index in order[step * 8:(step + 1) * 8]:
            img = read_image(records[index].path, 3)
            pairs.append((view(img), view(img)))
        assert torch.equal(got1, torch.stack([a for a, _ in pairs]))
        assert torch.equal(got2, torch.stack([b for _, b in pairs]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_local_crops_shapes_and_order(mnist_tree, backend):
    """number=2: 4 views per batch, the 2 global ones at image_size first, then 2 local ones
    at round(3/7 image_size) (10 at 24) or at the configured size, normalised alike; the
    local views are other crops of the same images (not copies of the global views)."""
    import torch
    from hpt_hpc.config import AugmentConfig
    records = _records(mnist_tree)[:40]
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    for size, expected in ((None, 10), (14, 14)):
        for views in _stream(records, _local(AugmentConfig(), 2, size), _data(backend, 24),
                             8, 3, 6):
            assert [tuple(v.shape) for v in views] == \
                [(8, 3, 24, 24)] * 2 + [(8, 3, expected, expected)] * 2
            assert all(v.dtype == torch.float32 for v in views)
            assert all(v.min() >= low - 1e-4 and v.max() <= high + 1e-4 for v in views)
            assert not torch.equal(views[2], views[3])
    grey = _stream(records, _local(AugmentConfig(), 3, 8), _data(backend, 16, 1), 8, 3, 1)[0]
    assert [tuple(v.shape) for v in grey] == [(8, 1, 16, 16)] * 2 + [(8, 1, 8, 8)] * 3


def _grey_levels(records, aug, backend, size, count, seed=0):
    """Views per position (0..255) from ``count // 16`` batches of 16."""
    import numpy as np
    batches = _stream(records, aug, _data(backend, size), 16, seed, -(-count // 16))
    return [np.concatenate([b[i].cpu().numpy() for b in batches]) * (STD * 255) + MEAN * 255
            for i in range(len(batches[0]))]


def test_local_crops_area_and_flip_parity(fashion_tree, tmp_path):
    """Local views are random crops of area local_crops.scale (0.05..0.4 of the image) with
    the per-view flip, the same distribution in both backends; the global views keep
    augment.crop's area (0.2..1). Local views cropped at the global scale (a spec that
    ignored local_crops.scale) would have a median area near 0.6 and fail."""
    import numpy as np
    from test_dali_common import crop_boxes, only, quantiles, tagged_pngs
    tagged = tagged_pngs(tmp_path / "tagged", fashion_tree, 16, 96)
    aug = _local(only(crop={}, flip={}), 2, 16)
    stats = {}
    for backend in BACKENDS:
        views = _grey_levels(tagged, aug, backend, 32, 192)
        glob = crop_boxes(np.concatenate(views[:2]), 96)
        local = crop_boxes(np.concatenate(views[2:]), 96)
        assert glob[0].min() > 0.18 and glob[0].max() < 1.03, backend
        assert local[0].min() > 0.04 and local[0].max() < 0.43, backend
        assert abs(np.median(local[0]) - 0.2) < 0.06, backend  # U-ish on [0.05, 0.4]
        assert abs(local[2].mean() - 0.5) < 0.09, backend  # local views flip too
        stats[backend] = local
    assert np.all(np.abs(quantiles(stats["dali"][0]) - quantiles(stats["torchvision"][0]))
                  < 0.05)
    log_aspect = {b: np.log(stats[b][1]) for b in BACKENDS}
    assert np.abs(log_aspect["dali"]).max() < np.log(4 / 3) + 0.08
    assert np.all(np.abs(quantiles(log_aspect["dali"]) - quantiles(log_aspect["torchvision"]))
                  < 0.08)


def test_dali_local_views_take_their_own_crop_and_blur_window():
    """The DALI spec of a local view: its size and area, the global views' aspect and other
    augmentations, and a blur window sized for its side (~10%: 11 at 96, 23 at 224)."""
    import dataclasses
    from hpt_hpc.config import AugmentConfig, DataConfig
    from hpt_hpc.data.dali_pipelines import view_specs
    specs = view_specs(_local(AugmentConfig(), 3), DataConfig())
    assert len(specs) == 5 and specs[0] == specs[1] and specs[2] == specs[3] == specs[4]
    assert specs[0].size == 224 and specs[0].crop == ((0.2, 1.0), (3 / 4, 4 / 3))
    assert specs[0].blur_max_window == 23 and specs[2].blur_max_window == 11
    assert specs[2].size == 96 and specs[2].crop == ((0.05, 0.4), (3 / 4, 4 / 3))
    same = {f.name for f in dataclasses.fields(specs[0])} - {"size", "crop", "blur_max_window"}
    assert all(getattr(specs[0], k) == getattr(specs[2], k) for k in same)
    no_blur = _local(AugmentConfig(), 1)
    no_blur.blur.enabled = False
    assert view_specs(no_blur, DataConfig())[2].blur_max_window == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreadable_image_is_topped_up_in_every_view(mnist_tree, tmp_path, backend):
    """A broken file in a batch: the batch is filled from the shard in all 4 views alike
    (torchvision tops up; DALI decodes the others), never a short or mismatched view."""
    from hpt_hpc.config import AugmentConfig
    from hpt_hpc.data import ImageRecord
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    records = [ImageRecord(str(broken), (0,))] + list(_records(mnist_tree)[:31])
    for views in _stream(records, _local(AugmentConfig(), 2), _data(backend, 16, 1), 8, 1, 4):
        assert [tuple(v.shape) for v in views] == [(8, 1, 16, 16)] * 2 + [(8, 1, 7, 7)] * 2


# ------------------------------------------------------------------ engine

def test_bn_stats_reestimates_on_the_global_views(mnist_tree):
    """Variant bn-stats with local crops (views of two sizes, which one batch cannot hold):
    BatchNorm statistics come from the 2 global views of each batch, as with no local
    crops. Checked against the running mean/var computed by hand from the same stream."""
    import torch
    from hpt_hpc.config import AugmentConfig
    from hpt_hpc.data import build_pretrain_loader
    from hpt_hpc.models import reestimate_bn_stats
    from hpt_hpc.train.engine import bn_stats_batches
    records, data = _records(mnist_tree)[:40], _data("torchvision", 16, 1)
    aug = _local(AugmentConfig(), 2)
    expected = _stream(records, aug, data, 8, 2, 6)  # 6 steps from step 0
    torch.manual_seed(2)
    loader = build_pretrain_loader(records, aug, data, 8, seed=2)
    bn = torch.nn.BatchNorm2d(1)
    used = reestimate_bn_stats(bn, bn_stats_batches(loader, 0, torch.device("cpu")), 6)
    loader.close()
    inputs = [torch.cat(views[:2]) for views in expected]
    assert used == 6 and all(x.shape == (16, 1, 16, 16) for x in inputs)
    mean = torch.stack([x.mean() for x in inputs]).mean()
    var = torch.stack([x.var() for x in inputs]).mean()  # unbiased per batch, averaged
    assert torch.allclose(bn.running_mean, mean.reshape(1), atol=1e-6)
    assert torch.allclose(bn.running_var, var.reshape(1), atol=1e-6)
    everything = torch.stack([torch.cat([v.flatten() for v in views]).mean()
                              for views in expected]).mean()
    assert abs(float(everything - mean)) > 1e-3  # the local views would have changed it


class _PairedViews(torch.nn.Module):
    """A minimal method for the step: its loss couples image i's global view 1 with image
    i's every other view, so a micro-batch that paired other images changes the gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, *views):
        feats = [self.conv(v).mean((2, 3)) for v in views]
        return sum((feats[0] * f).sum(1).mean() for f in feats[1:])

    def micro_batch(self, first, last):
        return {}

    def loss_of(self, out):
        return out


def test_micro_batches_split_every_view_alike(mnist_tree):
    """compute.accumulate 2 with channels_last on 2 global + 2 local views of a real batch:
    the accumulated gradient equals the one-batch gradient (each micro-batch holds the
    same images in every view). Micro-batches that split the local views otherwise (other
    images paired, as shown by reversing them) give another gradient."""
    from hpt_hpc.config import AugmentConfig
    from hpt_hpc.train.speed import StepSpeed, prepare_model, to_device, train_step
    views = _stream(_records(mnist_tree)[:16], _local(AugmentConfig(), 2),
                    _data("torchvision", 16, 1), 8, 4, 1)[0]
    assert [v.shape[-1] for v in views] == [16, 16, 7, 7]

    def grad(speed, batch):
        method = prepare_model(_PairedViews(), speed)
        batch = [to_device(v, torch.device("cpu"), speed) for v in batch]
        loss, _ = train_step(method, method, batch, speed)
        return loss, method.conv.weight.grad.clone()

    loss1, whole = grad(StepSpeed(), views)
    loss2, split = grad(StepSpeed(accumulate=2, channels_last=True), views)
    assert torch.allclose(loss1, loss2, atol=1e-6) and torch.allclose(whole, split, atol=1e-6)
    mispaired = list(views[:2]) + [v.flip(0) for v in views[2:]]
    assert not torch.allclose(grad(StepSpeed(), mispaired)[1], whole, atol=1e-4)
