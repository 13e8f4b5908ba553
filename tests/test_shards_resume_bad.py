"""Resuming on shards with bad samples (#28): a corrupt image, a sample without its
label and a truncated tar before the resume point leave the resumed stream, its
augmentations and the skipped count those of an uninterrupted run."""
import io
import json
import shutil
import tarfile

import pytest
import torch
import yaml
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import config_from_dict
from hpt_hpc.models import load_checkpoint
from tiny import run_stage_of, tiny_config_data

DATA = {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.5], "workers": 0,
        "shuffle_buffer": 16}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, mnist_tree):
    """48 real digits in ~7-image shards; in every shard one sample loses its label and
    one image is cut short; the last shard is truncated half way."""
    root = tmp_path_factory.mktemp("resume-bad")
    for path in sorted((mnist_tree / "val").glob("*/*.png"))[::4][:48]:
        target = root / "src" / "train" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    out = CliRunner().invoke(cli, ["data", "shard", str(root / "src"), str(root / "shards"),
                                   "--split", "train", "--shard-size", "20k"])
    assert out.exit_code == 0, out.output
    tars = sorted((root / "shards" / "train").glob("*.tar"))
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        keys = sorted({m.name.split(".")[0] for m, _ in members})
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                if member.name == f"{keys[0]}.cls":
                    continue  # a sample without its label
                if member.name == f"{keys[1]}.png":
                    data = data[:120]  # a PNG cut short
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        tar_path.write_bytes(buffer.getvalue())
    tars[-1].write_bytes(tars[-1].read_bytes()[:len(tars[-1].read_bytes()) // 2])
    return root / "shards"


def _loader(damaged, tmp_path, workers, epoch=0, step=0):
    from hpt_hpc.data import build_pretrain_loader, list_split
    cfg = config_from_dict(tiny_config_data(tmp_path, {"d": damaged},
                                            {"target": {"dataset": "d"}}, data=DATA))
    cfg.datasets["d"].format = "shards"
    table, _ = list_split(cfg.datasets["d"], "train")
    return build_pretrain_loader(table, cfg.augment, cfg.data, 4, seed=5, workers=workers,
                                 start_epoch=epoch, start_step=step)


def _take(loader, count, rng_before=None):
    """``count`` batches: (rows, views, RNG state before it, skipped so far) each."""
    from hpt_hpc.train.state import capture_rng_state
    stream, out = iter(loader), []
    for _ in range(count):
        state = capture_rng_state()
        views = next(stream)
        out.append((list(loader.rows), [v.clone() for v in views], state,
                    loader.skipped.count))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_resumed_after_bad_samples_continues_the_unbroken_stream(
        tmp_path, damaged, workers):
    """Resumed mid-epoch 0, in its top-up batches and mid-epoch 1 (the main process's
    generator restored as a checkpoint does), the loader gives the unbroken run's rows and views and, by the end
    of the epoch, has named the same unreadable images."""
    from hpt_hpc.train.state import restore_rng_state
    torch.manual_seed(0)
    unbroken = _loader(damaged, tmp_path, workers)
    per_epoch = unbroken.steps_per_epoch
    whole = _take(unbroken, 2 * per_epoch)
    assert per_epoch == 48 // 4  # the manifest's counts, whatever is unreadable
    bad = set(unbroken.skipped.paths)
    reasons = " ".join(unbroken.skipped.reasons.values())
    for reason in ("lacks its label", "truncated", "its shard is damaged"):
        assert reason in reasons, reasons
    for epoch, step in ((0, 5), (0, 10), (1, 3)):
        at = epoch * per_epoch + step
        assert whole[at - 1][3] > 0  # unreadable samples lie before the resume point
        restore_rng_state(whole[at][2])
        resumed = _loader(damaged, tmp_path, workers, epoch, step)
        rest = _take(resumed, 2 * per_epoch - at)
        for (rows, views, _, _), (want_rows, want_views, _, _) in zip(rest, whole[at:]):
            assert rows == want_rows
            assert all(torch.equal(a, b) for a, b in zip(views, want_views))
        assert set(resumed.skipped.paths) == bad


def _config(folder, shards, workers):
    folder.mkdir(parents=True, exist_ok=True)
    data = tiny_config_data(folder / "out", {"d": shards}, {"target": {"dataset": "d"}},
                            data={**DATA, "workers": workers})
    data["datasets"]["d"]["format"] = "shards"
    data["optim"].update(batch_size=4, iterations=24)
    (folder / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "config.yaml", data


@pytest.mark.parametrize("workers,cut", [(0, 5), (2, 14)])
def test_a_stage_preempted_after_bad_samples_resumes_bit_identically(
        tmp_path, damaged, workers, cut):
    """`hpt-hpc train` uninterrupted vs. stopped after ``cut`` of 24 steps (2 epochs of
    12) and resumed by `hpt-hpc train`: the same weights, the same skipped_images."""
    full_config, _ = _config(tmp_path / "full", damaged, workers)
    out = CliRunner().invoke(cli, ["train", "--config", str(full_config)])
    assert out.exit_code == 0, out.output
    cut_config, data = _config(tmp_path / "cut", damaged, workers)
    part = run_stage_of(config_from_dict(data), "target", stop_after=cut)
    assert not part.completed and part.steps == cut and part.skipped_images > 0
    out = CliRunner().invoke(cli, ["train", "--config", str(cut_config)])
    assert out.exit_code == 0, out.output
    full, rest = (json.loads((tmp_path / name / "out" / "target" / "result.json")
                             .read_text()) for name in ("full", "cut"))
    assert rest["resumed_from"] == cut and rest["steps"] == full["steps"] == 24
    assert rest["skipped_images"] == full["skipped_images"]
    a, b = (load_checkpoint(r["checkpoint"])["model"] for r in (full, rest))
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_without_a_readable_image_are_one_line(tmp_path, mnist_tree, workers):
    """Every image cut short: the top-ups find nothing either, and the stage ends with
    one line instead of reading forever."""
    for path in sorted((mnist_tree / "val").glob("*/*.png"))[:16]:
        target = tmp_path / "src" / "train" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes()[:120])
    out = CliRunner().invoke(cli, ["data", "shard", str(tmp_path / "src"),
                                   str(tmp_path / "shards"), "--shard-size", "4k"])
    assert out.exit_code == 0, out.output
    config, _ = _config(tmp_path / "run", tmp_path / "shards", workers)
    out = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert "found no readable image in its shards" in out.output
