"""``skipped_images`` is the stage's truth (#28): a stage resumed in a later epoch that
ends mid-epoch counts what the unbroken run counts (shards and folders), and with two
ranks the count covers both ranks' parts of the data (the unreadable images that exist,
counted independently with tarfile)."""
import gc
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import config_from_dict
from hpt_hpc.models import load_checkpoint
from tiny import run_stage_of, tiny_config_data
from test_shards_resume_bad import DATA, damaged  # noqa: F401 - the fixture

WORLD = 2


def _copy_digits(mnist_tree, dest, count):
    for path in sorted((mnist_tree / "val").glob("*/*.png"))[::4][:count]:
        target = dest / "train" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return dest


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, mnist_tree):
    """48 real digits, 6 of them cut short (a corrupt file each)."""
    root = _copy_digits(mnist_tree, tmp_path_factory.mktemp("bad-folder"), 48)
    for path in sorted(root.glob("train/*/*.png"))[::8]:
        path.write_bytes(path.read_bytes()[:120])
    return root


def _config(folder, dataset, fmt, iterations, **data):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config_data(folder / "out", {"d": dataset}, {"target": {"dataset": "d"}},
                           data={**DATA, **data})
    if fmt:
        cfg["datasets"]["d"]["format"] = fmt
    cfg["optim"].update(batch_size=4, iterations=iterations)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder / "config.yaml", cfg


def _result(folder):
    return json.loads((folder / "out" / "target" / "result.json").read_text())


@pytest.mark.parametrize("source", ["shards", "folder"])
def test_a_stage_resumed_in_a_later_epoch_counts_what_the_unbroken_run_counts(
        tmp_path, damaged, bad_folder, source):  # noqa: F811
    """18 steps of 12 per epoch, stopped at step 14 (epoch 2) and resumed by `hpt-hpc
    train`: the resumed process reads only epoch 2's steps 14-18, yet its skipped_images
    (result.json, the CLI line) and the paths behind it are the unbroken run's."""
    dataset, fmt = (damaged, "shards") if source == "shards" else (bad_folder, None)
    full_config, _ = _config(tmp_path / "full", dataset, fmt, 18)
    out = CliRunner().invoke(cli, ["train", "--config", str(full_config)])
    assert out.exit_code == 0, out.output
    full = _result(tmp_path / "full")
    assert full["skipped_images"] > 0 and f"skipped images {full['skipped_images']}," \
        in out.output
    cut_config, data = _config(tmp_path / "cut", dataset, fmt, 18)
    part = run_stage_of(config_from_dict(data), "target", stop_after=14)
    assert part.steps == 14 and not part.completed
    out = CliRunner().invoke(cli, ["train", "--config", str(cut_config)])
    assert out.exit_code == 0, out.output
    rest = _result(tmp_path / "cut")
    assert rest["resumed_from"] == 14 and rest["steps"] == 18
    assert rest["skipped_images"] == full["skipped_images"], (rest, full)
    assert f"skipped images {full['skipped_images']}," in out.output
    from hpt_hpc.models.weights import SKIPPED_KEY
    a, b = (load_checkpoint(r["checkpoint"])[SKIPPED_KEY] for r in (full, rest))
    assert a == b and len(a) == full["skipped_images"]


@pytest.fixture(scope="module")
def rank1_bad(tmp_path_factory, mnist_tree):
    """32 digits in shards; one PNG cut short in each shard rank 1 reads (shards 1, 3,
    ...), none in rank 0's; returns (shards, names of the cut images per tarfile)."""
    root = tmp_path_factory.mktemp("rank1-bad")
    _copy_digits(mnist_tree, root / "src", 32)
    out = CliRunner().invoke(cli, ["data", "shard", str(root / "src"), str(root / "shards"),
                                   "--split", "train", "--shard-size", "20k"])
    assert out.exit_code == 0, out.output
    tars = sorted((root / "shards" / "train").glob("*.tar"))
    assert len(tars) >= 4, tars
    for tar_path in tars[1::2]:
        with tarfile.open(tar_path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        pngs = sorted(m.name for m, _ in members if m.name.endswith(".png"))
        cut = pngs[len(pngs) // 2]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                if member.name == cut:
                    data = data[:120]
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        tar_path.write_bytes(buffer.getvalue())
    cut = []
    for tar_path in tars:  # independently: every PNG member PIL cannot decode
        from PIL import Image
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png"):
                    try:
                        Image.open(io.BytesIO(tar.extractfile(member).read())).load()
                    except OSError:
                        cut.append((tar_path.name, member.name))
    assert cut and all(tars.index(tars[0].parent / t) % 2 == 1 for t, _ in cut)
    return root / "shards", cut


def _two_ranks(rank, folder, shards):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    import faulthandler
    faulthandler.dump_traceback_later(240, exit=True)  # no hang
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank,
                            world_size=WORLD)
    from hpt_hpc.plan import stage_plan
    from hpt_hpc.train import run_plan
    from hpt_hpc.train.distributed import DistInfo
    try:
        _, data = _config(Path(folder) / "run", shards, "shards", 6)
        data["optim"]["batch_size"] = 4 * WORLD
        plan = stage_plan(config_from_dict(data), "target", world_size=WORLD, tracking=None)
        records = [run_plan(plan, dist=DistInfo(rank, WORLD), stop_after=5)]
        dist.barrier()  # rank 0 has saved last.pt: the requeued job starts after
        records.append(run_plan(plan, dist=DistInfo(rank, WORLD)))  # resumed at step 5
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
    if rank == 0:
        (Path(folder) / "records.json").write_text(json.dumps(
            [r.to_json() for r in records]))


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs gloo")
def test_two_ranks_count_the_unreadable_images_of_both_parts(tmp_path, rank1_bad):
    """All unreadable images lie in rank 1's shards: the stage's count (rank 0 writes
    result.json) is still every one of them, after the first epoch and after a resume
    whose process reads one step of the second epoch."""
    shards, cut = rank1_bad
    mp.spawn(_two_ranks, args=(str(tmp_path), shards), nprocs=WORLD, join=True)
    part, rest = json.loads((tmp_path / "records.json").read_text())
    assert part["steps"] == 5 and rest["resumed_from"] == 5 and rest["steps"] == 6
    assert part["skipped_images"] == rest["skipped_images"] == len(cut), (part, rest, cut)
    result = _result(tmp_path / "run")
    assert result["skipped_images"] == len(cut)
