"""Linear-probe protocols on real MNIST: cached vs augmented mode, repeats, multi-label
file lists scored by AUROC (checked against scikit-learn)."""
import dataclasses
import statistics

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hpt_hpc.config import DatasetConfig, config_from_dict
from hpt_hpc.data import list_split
from hpt_hpc.errors import HptError
from hpt_hpc.eval.metrics import binary_auroc, mean_auroc, score
from hpt_hpc.eval.runner import evaluate_linear, evaluate_pixels
from hpt_hpc.data.transforms import build_eval_transform, build_probe_train_transform
from hpt_hpc.eval.splits import label_space

from tiny import tiny_config, tiny_config_data, write_tiny_config

PROBE = {"lr": 0.1, "iterations": 20, "milestones": [15], "batch_size": 64,
         "eval_every": 10}


def _cfg(tmp_path, datasets, **probe):
    return tiny_config(tmp_path, datasets, {}, probe={**PROBE, **probe})


def test_auroc_equals_scikit_learn_with_ties_and_skipped_class():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, size=(40, 4))
    targets[:, 2] = 1  # one label value only: skipped
    scores = np.round(rng.normal(size=(40, 4)), 1)  # coarse rounding -> many ties
    scores[:10, 0] = 0.5  # a large tie block mixing both labels
    valid = [0, 1, 3]
    expected = roc_auc_score(targets[:, valid], scores[:, valid], average="macro")
    assert mean_auroc(torch.tensor(scores), torch.tensor(targets)) == pytest.approx(expected)
    for c in valid:
        assert binary_auroc(scores[:, c], targets[:, c]) == \
            pytest.approx(roc_auc_score(targets[:, c], scores[:, c]))
    # every pair tied counts 1/2; a perfect ranking is 1
    assert binary_auroc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert binary_auroc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert np.isnan(binary_auroc([0.1, 0.2], [1, 1]))
    with pytest.raises(HptError, match="AUROC is undefined"):
        mean_auroc(torch.zeros(3, 2), torch.ones(3, 2))


def test_score_is_top1_for_integer_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert score(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.75)


def _multilabel_lists(mnist_tree, folder):
    """File lists over real MNIST images: label = digit, plus 10 when the digit is even."""
    folder.mkdir()
    for split in ("train", "val", "test"):
        records, _ = list_split(DatasetConfig(path=str(mnist_tree)), split)
        lines = ["path,label,label"]
        for r in records:
            digit = r.labels[0]
            lines.append(f"{r.path},{digit}" + (",10" if digit % 2 == 0 else ""))
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_multilabel_filelist_is_probed_with_auroc(tmp_path, mnist_tree):
    lists = _multilabel_lists(mnist_tree, tmp_path / "lists")
    data = tiny_config_data(tmp_path / "out", {}, {}, probe=PROBE)
    data["datasets"]["digits"] = {"path": str(lists), "format": "filelist"}
    cfg = config_from_dict(data)
    train, _ = list_split(cfg.datasets["digits"], "train")
    assert label_space(train) == (11, True)  # odd digits carry one label, even digits two

    pixels, _ = evaluate_pixels(cfg, "digits")
    assert pixels.metric == "auroc" and pixels.mode == "cached (raw pixels)"
    assert 0.75 < pixels.score <= 1.0, "raw MNIST pixels separate digits/parity well"
    learned, trials = evaluate_linear(cfg, "digits", None, "cpu")
    assert learned.metric == "auroc" and learned.mode == "cached"
    assert all(0.0 <= val <= 1.0 and 0.0 <= test <= 1.0
               for r in trials for _, val, test in r.curve)


def test_cached_repeats_give_mean_and_std(tmp_path, mnist_tree):
    cfg = _cfg(tmp_path, {"mnist": mnist_tree}, repeats=3)
    record, trials = evaluate_linear(cfg, "mnist", None, "cpu")
    scores = [r.score for r in trials]
    assert record.mode == "cached" and record.metric == "top1"
    assert [r.seed for r in trials] == [0, 1, 2] and record.per_repeat == scores
    assert record.score == pytest.approx(statistics.fmean(scores))
    assert record.score_std == pytest.approx(statistics.stdev(scores))
    assert record.val_score == pytest.approx(statistics.fmean(r.val_score for r in trials))
    assert record.predictions.predictions.shape[0] == record.repeats == 3
    assert len({tuple(r.curve) for r in trials}) > 1, "seeds must differ"
    assert record.describe() == (
        f"top1 {100 * record.score:.2f} +- {100 * record.score_std:.2f} % over 3 probes "
        f"(mode: cached)")
    # the same seed reproduces its probe exactly; the random init is drawn from cfg.seed
    again, again_trials = evaluate_linear(dataclasses.replace(
        cfg, probe=dataclasses.replace(cfg.probe, repeats=1)), "mnist", None, "cpu")
    assert again_trials[0].curve == trials[0].curve and again.score_std == 0.0


def test_augmented_mode_runs_and_says_so(tmp_path, mnist_tree):
    cfg = _cfg(tmp_path, {"mnist": mnist_tree}, mode="augmented", repeats=2, batch_size=32)
    record, trials = evaluate_linear(cfg, "mnist", None, "cpu")
    assert record.mode == "augmented" and len(trials) == record.repeats == 2
    assert all(r.mode == "augmented" and r.metric == "top1" for r in trials)
    assert trials[0].curve != trials[1].curve
    assert [step for step, _, _ in trials[0].curve] == [10, 20]
    assert evaluate_pixels(cfg, "mnist")[0].mode == "cached (raw pixels)"


def test_augmented_transforms_crop_randomly_and_evaluate_deterministically(tmp_path,
                                                                            mnist_tree):
    from hpt_hpc.data import load_image
    cfg = _cfg(tmp_path, {"mnist": mnist_tree}, crop_scale=[0.08, 0.3])
    records, _ = list_split(cfg.datasets["mnist"], "test")
    img = load_image(records[0].path, 1)
    train_tf = build_probe_train_transform(cfg.data, cfg.probe)
    test_tf = build_eval_transform(cfg.data, cfg.probe)
    torch.manual_seed(0)
    crops = [train_tf(img) for _ in range(4)]
    assert crops[0].shape == (1, 16, 16)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    assert torch.equal(test_tf(img), test_tf(img)) and test_tf(img).shape == (1, 16, 16)
    bad = _cfg(tmp_path, {"mnist": mnist_tree}, crop_scale=[0.5, 2.0])
    with pytest.raises(HptError, match="crop_scale"):
        build_probe_train_transform(bad.data, bad.probe)
    with pytest.raises(HptError, match="center_crop_ratio"):  # refused at load already
        _cfg(tmp_path, {"mnist": mnist_tree}, center_crop_ratio=1.5)


def test_every_protocol_gives_held_out_images_one_test_view(tmp_path, mnist_tree):
    """Val/test tensors, built as ``eval.runner`` builds them: the cached mode's loader
    equals the augmented probe's and fine-tuning's (augment on or off) transform, also for
    28x28 digits no larger than ``image_size`` (28, 32: resized to the size, not to
    ``size / center_crop_ratio`` and cropped), and a ``center_crop_ratio`` of 0.5 reaches
    the cached mode too."""
    from hpt_hpc.eval.runner import EXTRACT_BATCH, _split_batches
    from hpt_hpc.eval.splits import image_batches, load_splits
    for size, ratio in ((28, 0.875), (32, 0.875), (16, 0.5)):
        cfg = _cfg(tmp_path, {"mnist": mnist_tree}, center_crop_ratio=ratio)
        cfg.data.image_size = size
        space = load_splits(cfg, "mnist")
        space.records["test"] = space.records["test"][:12]
        cached = torch.cat([x for x, _ in _split_batches(cfg, space, "test")])
        assert cached.shape == (12, 1, size, size)
        if size == 28:  # short side already at the size: the image itself, normalised
            from hpt_hpc.data import load_image
            pixels = torch.stack([torch.from_numpy(np.asarray(load_image(r.path, 1),
                                                              np.float32)) for r in
                                  space.records["test"]])[:, None] / 255
            assert torch.allclose(cached, (pixels - 0.5) / 0.5, atol=1e-6)
        for transform in (build_eval_transform(cfg.data, cfg.probe),
                          build_probe_train_transform(cfg.data, cfg.probe, augment=False)):
            batches = image_batches(cfg, space.records["test"], space, transform,
                                    EXTRACT_BATCH)
            assert torch.equal(torch.cat([x for x, _ in batches]), cached), (size, ratio)
        default = torch.cat([x for x, _ in image_batches(
            cfg, space.records["test"], space, build_eval_transform(cfg.data), EXTRACT_BATCH)])
        assert torch.equal(default, cached) == (ratio == 0.875)


def test_cli_probe_and_finetune_report_mode_and_spread(tmp_path, mnist_tree):
    from click.testing import CliRunner

    from hpt_hpc.cli.main import cli
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {}, probe=PROBE,
                               finetune={"batch_size": 10, "eval_every": 2})
    runner = CliRunner()
    probed = runner.invoke(cli, ["probe", "--config", str(config), "--dataset", "mnist",
                                 "--mode", "cached", "--repeats", "2"])
    assert probed.exit_code == 0, probed.output
    assert "seed 0:" in probed.output and "seed 1:" in probed.output
    assert "over 2 probes (mode: cached)" in probed.output
    tuned = runner.invoke(cli, ["finetune", "--config", str(config), "--dataset", "mnist",
                                "--labels", "10", "--iterations", "2"])
    assert tuned.exit_code == 0, tuned.output
    assert "10 labels; mode: finetune" in tuned.output
    short = runner.invoke(cli, ["finetune", "--config", str(config), "--dataset", "mnist",
                                "--labels", "4", "--iterations", "2"])
    assert short.exit_code != 0 and "at least one image per class" in short.output


def test_split_images_are_decoded_once_per_process(tmp_path, mnist_tree, monkeypatch):
    """Evaluations in one process reuse a split's decoded test view: the same features
    as decoding it again, and no loader is built for a split seen before."""
    from hpt_hpc.eval import decoded, runner
    built = []
    real = runner.build_eval_loader
    monkeypatch.setattr(runner, "build_eval_loader",
                        lambda *a, **k: built.append(1) or real(*a, **k))
    monkeypatch.setattr(decoded, "_CACHE", type(decoded._CACHE)())
    cfg = _cfg(tmp_path, {"mnist": mnist_tree})
    backbones = [runner.seeded_backbone(dataclasses.replace(cfg, seed=s), None)
                 for s in (0, 1)]
    first = runner.split_features(cfg, "mnist", backbones[0], torch.device("cpu"))
    assert len(built) == 3
    second = runner.split_features(cfg, "mnist", backbones[1], torch.device("cpu"))
    assert len(built) == 3  # decoded once
    monkeypatch.setattr(decoded, "CACHE_BYTES", 0)  # nothing kept: decoded every time
    monkeypatch.setattr(decoded, "_CACHE", type(decoded._CACHE)())
    for backbone, cached in zip(backbones, (first, second)):
        fresh = runner.split_features(cfg, "mnist", backbone, torch.device("cpu"))
        for split in ("train", "val", "test"):
            assert torch.equal(fresh[split].x, cached[split].x)
            assert fresh[split].paths == cached[split].paths
    assert len(built) == 9 and not decoded._CACHE
    assert not torch.equal(first["test"].x, second["test"].x)


def test_every_function_the_protocol_table_names_exists():
    """The table's runners and record builders (``"module:function"`` strings, so the
    config layer needs no torch) name functions of the eval package."""
    from hpt_hpc.config.protocols import PROTOCOLS
    from hpt_hpc.eval.runner import table_function
    names = [n for p in PROTOCOLS.values() for n in [p.runner, p.record]
             + [m.runner for m in p.modes]]
    assert len(names) >= 7 and all(callable(table_function(n)) for n in names)
