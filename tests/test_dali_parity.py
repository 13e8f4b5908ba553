"""DALI vs torchvision augmentation parity, statistically, on real images (no mocks).

Each augmentation is tested alone (everything else disabled) on views from both backends;
each test states what a broken DALI pipeline would give, and several build one (a wrong
``ViewSpec``) and check that the same comparison rejects it.
``HPT_DALI_TEST_DEVICE=gpu`` runs the same checks on DALI's GPU operators.
"""
import numpy as np
import pytest
import torch

from test_dali_common import (MEAN, STD, chroma, colour_jpegs, crop_boxes,
                              data_config, luma, only, quantiles, sharpness, tagged_pngs,
                              views)

from hpt_hpc.config import DatasetConfig
from hpt_hpc.data import build_eval_loader, build_pretrain_loader, list_split

pytest.importorskip("nvidia.dali")

N = 384  # views per backend and test: a fraction p is known to +-0.025 or better
TAG_SIDE = 96


@pytest.fixture(scope="module")
def colour(fashion_tree, tmp_path_factory):
    return colour_jpegs(tmp_path_factory.mktemp("colour"), fashion_tree, 32)


@pytest.fixture(scope="module")
def tagged(fashion_tree, tmp_path_factory):
    return tagged_pngs(tmp_path_factory.mktemp("tagged"), fashion_tree, 16, TAG_SIDE)


@pytest.fixture(scope="module")
def plain(colour):
    """Un-augmented 48x48 views (resize + centre crop) of the colour images, per backend."""
    return {b: views(colour, only(), b, 48, N) for b in ("torchvision", "dali")}


def test_output_contract_matches_torchvision_exactly(mnist_tree):
    """Shape, dtype, normalisation and image order are the torchvision loader's: at the
    images' own size (28x28, no resampling) and without augmentation, DALI's batches equal
    torchvision's to float precision. A pipeline with another normalisation, channel
    layout or shard order (or a 0..1 vs 0..255 scale mix-up) fails ``allclose``."""
    records, _ = list_split(DatasetConfig(path=str(mnist_tree)), "train")
    grey = data_config("dali", 28, channels=1)
    batches = {}
    for backend in ("torchvision", "dali"):
        grey.backend, grey.workers = backend, int(backend == "dali")
        loader = build_pretrain_loader(records[:64], only(), grey, 16, seed=3)
        stream = iter(loader)
        batches[backend] = [next(stream) for _ in range(5)]  # crosses into epoch 1
        loader.close()
    for (tv1, tv2), (da1, da2) in zip(batches["torchvision"], batches["dali"]):
        assert da1.shape == tv1.shape == (16, 1, 28, 28) and da1.dtype == torch.float32
        assert torch.allclose(da1, tv1, atol=1e-5) and torch.allclose(da2, tv2, atol=1e-5)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert batches["dali"][0][0].min() >= low - 1e-5 and batches["dali"][0][0].max() <= high


def test_colour_views_shape_and_resampling_close(plain):
    """Resized colour views differ only by resampling detail (a few grey levels on
    average); swapped channels (BGR) or a skipped resize would differ by tens."""
    tv, dali = plain["torchvision"], plain["dali"]
    assert dali.shape == tv.shape == (N, 3, 48, 48)
    assert np.abs(dali - tv).mean() < 3.0
    assert np.abs(dali[:, ::-1] - tv).mean() > 10  # the same check catches BGR


def test_crop_area_and_aspect_distribution(tagged):
    """Crop area fraction within [0.2, 1] with the same distribution, log-aspect symmetric
    in [log 3/4, log 4/3]. DALI's default scale (0.08, 1) would put 10% of the crops below
    area 0.17 and fail, as shown."""
    stats = {b: crop_boxes(views(tagged, only(crop={}), b, 32, N), TAG_SIDE)
             for b in ("torchvision", "dali")}
    area, aspect, _ = stats["dali"]
    assert area.min() > 0.18 and area.max() < 1.03
    assert np.abs(np.log(aspect)).max() < np.log(4 / 3) + 0.06
    assert abs(np.median(np.log(aspect))) < 0.05
    close = lambda a, b: np.all(np.abs(quantiles(a) - quantiles(b)) < 0.06)  # noqa: E731
    assert close(area, stats["torchvision"][0])
    assert close(np.log(aspect), np.log(stats["torchvision"][1]))
    broken = views(tagged, only(crop={}), "dali", 32, N,
                   spec_changes=dict(crop=((0.08, 1.0), (3 / 4, 4 / 3))))
    assert not close(crop_boxes(broken, TAG_SIDE)[0], stats["torchvision"][0])


def test_flip_fraction_near_half(tagged):
    """About half the views are mirrored (p=0.5); ignoring ``p`` gives 0 or 1, a
    vertical flip would leave the x ramp increasing (0 here)."""
    for backend in ("torchvision", "dali"):
        flipped = crop_boxes(views(tagged, only(flip={}), backend, 32, N), TAG_SIDE)[2]
        assert abs(flipped.mean() - 0.5) < 0.09, backend
    never = crop_boxes(views(tagged, only(flip={"p": 0.0}), "dali", 32, 64), TAG_SIDE)[2]
    assert not never.any()


def test_grayscale_fraction_and_luma(colour, plain):
    """About 20% of the views have equal channels, equal to the image's ITU-R 601 luma.
    Swapped probability (0.8), a channel mean instead of luma, or no conversion fail."""
    fractions = {}
    for backend in ("torchvision", "dali"):
        v = views(colour, only(grayscale={}), backend, 48, N)
        spread = np.abs(v[:, 0] - v[:, 1]).max((1, 2)) + np.abs(v[:, 1] - v[:, 2]).max((1, 2))
        grey = spread <= 3
        fractions[backend] = grey.mean()
        assert abs(grey.mean() - 0.2) < 0.07, backend
        assert np.abs(luma(v[grey]) - luma(plain[backend][grey])).max() < 1.0
        mean_grey = plain[backend][grey].mean(axis=1)
        assert np.abs(v[grey][:, 0] - mean_grey).max() > 5  # a channel mean is not luma
        assert spread[~grey].min() > 50  # the others keep their colour
    assert abs(fractions["dali"] - fractions["torchvision"]) < 0.09


def test_blur_fraction_and_strength(colour, plain):
    """Blurred views (sharpness ratio to the unblurred view < 0.9) are about as frequent and
    as strong in both backends (sigma U(0.1, 2), p=0.5; tiny sigmas change nothing). A
    3-pixel window caps the blur: its strongest 10% keep over half the sharpness (fails)."""
    kernel = {"kernel_size": 13}
    ratio = {b: sharpness(views(colour, only(blur=kernel), b, 48, N)) / sharpness(plain[b])
             for b in ("torchvision", "dali")}
    tv, dali = ratio["torchvision"], ratio["dali"]
    assert 0.3 < (dali < 0.9).mean() < 0.55 and 0.3 < (tv < 0.9).mean() < 0.55
    assert abs((dali < 0.9).mean() - (tv < 0.9).mean()) < 0.1
    assert (dali > 1.01).sum() == 0  # blur never sharpens
    strong = lambda r: quantiles(r[r < 0.97], (0.1, 0.5))  # noqa: E731
    assert np.all(np.abs(strong(dali) - strong(tv)) < 0.1)
    capped = views(colour, only(blur={"kernel_size": 3}), "dali", 48, N)
    capped = sharpness(capped) / sharpness(plain["dali"])
    assert strong(capped)[0] > strong(tv)[0] + 0.15


def _colour_stats(v, ref):
    """Per view: brightness (mean-luma ratio), contrast (luma-std ratio), saturation
    (chroma ratio) and hue shift (degrees) against the un-jittered view."""
    i1, q1 = chroma(v)
    i0, q0 = chroma(ref)
    return {"brightness": luma(v).mean((1, 2)) / luma(ref).mean((1, 2)),
            "contrast": luma(v).std((1, 2)) / luma(ref).std((1, 2)),
            "saturation": np.hypot(i1, q1).mean((1, 2)) / np.hypot(i0, q0).mean((1, 2)),
            "hue": np.angle(((i1 + 1j * q1) * np.conj(i0 + 1j * q0)).sum((1, 2)), deg=True)}


def test_colour_jitter_statistics(colour, plain):
    """Brightness, contrast, saturation (0.4 each) and hue (0.1 turn = +-36 degrees) with
    p=0.8 spread the per-view statistics alike in both backends (5/25/75/95% quantiles).
    Hue passed to DALI unconverted (0.1 degree) leaves hues unchanged and fails, as shown;
    DALI's default contrast pivot (fixed grey) shifts the brightness quantiles of these
    dark images."""
    qs = (0.05, 0.25, 0.75, 0.95)
    tolerance = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.12, "hue": 7.0}
    stats = {b: _colour_stats(views(colour, only(color_jitter={}), b, 48, N), plain[b])
             for b in ("torchvision", "dali")}
    for name, tol in tolerance.items():
        dali, tv = stats["dali"][name], stats["torchvision"][name]
        diff = np.abs(quantiles(dali, qs) - quantiles(tv, qs))
        assert np.all(diff < tol), (name, diff)
    unchanged = np.mean(np.abs(stats["dali"]["brightness"] - 1) < 0.005)
    assert 0.1 < unchanged < 0.35  # ~20% of the views are not jittered
    broken = views(colour, only(color_jitter={}), "dali", 48, N,
                   spec_changes=dict(hue_degrees=0.1))
    hue = _colour_stats(broken, plain["dali"])["hue"]
    assert quantiles(hue, (0.95,))[0] < quantiles(stats["torchvision"]["hue"], (0.95,))[0] - 10


def test_eval_and_probe_transforms(colour, tagged, mnist_tree):
    """Test transform (resize 256/224 + centre crop) close to torchvision's, labels equal;
    probe-training views crop (scale 0.08..1) and flip half the time."""
    for records, channels in ((colour[:20], 3),
                              (list_split(DatasetConfig(path=str(mnist_tree)), "val")[0][:20],
                               1)):
        out = {}
        for backend in ("torchvision", "dali"):
            loader = build_eval_loader(records, data_config(backend, 24, channels), 8)
            out[backend] = [(x.cpu(), y) for x, y in loader]
        assert [x.shape for x, _ in out["dali"]] == [x.shape for x, _ in out["torchvision"]]
        for (xd, yd), (xt, yt) in zip(out["dali"], out["torchvision"]):
            assert torch.equal(yd, yt) and (xd - xt).abs().mean() * STD * 255 < 3.0
    probe = build_eval_loader(tagged * 4, data_config("dali", 32), 16, train=True, seed=1)
    images = torch.cat([x.cpu() for x, _ in probe]).numpy() * (STD * 255) + MEAN * 255
    area, _, flipped = crop_boxes(images, TAG_SIDE)
    assert images.shape == (64, 3, 32, 32) and 0.3 < flipped.mean() < 0.7
    assert area.min() < 0.25 and 0.4 < area.mean() < 0.7  # torchvision mean ~0.54


def test_eval_views_follow_the_probe_config(tagged, mnist_tree, tmp_path):
    """DALI's eval loader takes the views of ``eval_spec(data, probe)``: 28x28 digits at
    ``image_size`` 28 and 32 (no larger than it) give the augmented probe's / fine-tuning's
    test tensors (``build_eval_transform(cfg.data, cfg.probe)``); a ``center_crop_ratio``
    of 0.5 resizes a 100x50 image to 64 before the 32 crop; ``probe.flip: false`` never
    mirrors and ``probe.crop_scale`` bounds the crop areas."""
    from PIL import Image

    from hpt_hpc.config import ProbeConfig
    from hpt_hpc.data import ImageRecord, load_image
    from hpt_hpc.data.transforms import build_eval_transform
    digits = list_split(DatasetConfig(path=str(mnist_tree)), "val")[0][:16]
    ramp = tmp_path / "ramp.png"
    Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (50, 1))).convert("RGB").save(ramp)
    cases = [(digits, 28, 1, ProbeConfig()), (digits, 32, 1, ProbeConfig()),
             ([ImageRecord(str(ramp), (0,))], 32, 3, ProbeConfig(center_crop_ratio=0.5))]
    for records, size, channels, probe in cases:
        tv = build_eval_transform(data_config("torchvision", size, channels), probe)
        expected = torch.stack([tv(load_image(r.path, channels)) for r in records])
        dali = torch.cat([x.cpu() for x, _ in build_eval_loader(
            records, data_config("dali", size, channels), 8, probe=probe)])
        assert dali.shape == expected.shape == (len(records), channels, size, size)
        assert (dali - expected).abs().mean() * STD * 255 < 3.0, (size, probe)
        if size == 28:  # no resampling at all: equal to float precision
            assert torch.allclose(dali, expected, atol=1e-5)
    centre = dali[0, 0].numpy() * (STD * 255) + MEAN * 255  # the ratio-0.5 ramp view
    assert centre[:, 0].mean() == pytest.approx(48.5 * 100 / 128 - 0.5, abs=1.5)
    probe = ProbeConfig(crop_scale=[0.3, 0.4], flip=False)
    loader = build_eval_loader(tagged * 4, data_config("dali", 32), 16, train=True, seed=1,
                               probe=probe)
    images = np.concatenate([torch.cat([x.cpu() for x, _ in loader]).numpy()
                             for _ in range(3)]) * (STD * 255) + MEAN * 255
    area, _, flipped = crop_boxes(images, TAG_SIDE)
    assert images.shape == (192, 3, 32, 32) and not flipped.any()
    assert 0.27 < area.min() and area.max() < 0.43  # the default (0.08, 1) fails


def test_grey_images_jitter_brightness_and_contrast_only(mnist_tree):
    """With ``channels: 1`` only brightness and contrast apply (as in torchvision): the
    per-view mean and spread ratios agree. A contrast pivot at mid-grey (DALI's default)
    instead of the view's mean would double the mean of a digit of mean grey 33 at contrast
    0.6 (0.6 * 33 + 0.4 * 128) and fail."""
    records, _ = list_split(DatasetConfig(path=str(mnist_tree)), "train")
    stats = {}
    for backend in ("torchvision", "dali"):
        def grey_views(aug):
            import test_dali_common as common
            loader = build_pretrain_loader(records, aug, data_config(backend, 16, 1), 16,
                                           seed=common.SEED)
            torch.manual_seed(common.SEED)
            stream = iter(loader)
            out = np.concatenate([next(stream)[0].numpy() for _ in range(2 * N // 16)])
            return out[:, 0] * (STD * 255) + MEAN * 255
        jittered, ref = grey_views(only(color_jitter={})), grey_views(only())
        stats[backend] = (jittered.mean((1, 2)) / ref.mean((1, 2)),
                          jittered.std((1, 2)) / ref.std((1, 2)))
    for dali, tv in zip(stats["dali"], stats["torchvision"]):
        assert np.all(np.abs(quantiles(dali, (0.05, 0.25, 0.75, 0.95)) -
                             quantiles(tv, (0.05, 0.25, 0.75, 0.95))) < 0.1)
