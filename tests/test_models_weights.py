"""Initial-weight loading from foreign checkpoint layouts and atomic checkpoint I/O."""
import os
import random

import numpy as np
import pytest
import torch
import torchvision

from hpt_hpc.models import (CHECKPOINT_FORMAT, CheckpointReadError, IncompatibleCheckpointError,
                            build_resnet, load_checkpoint, save_checkpoint_atomic)
from hpt_hpc.ssl import MoCo, load_initial_weights


def full_moco(**kw):
    """Width-1 ResNet-18 MoCo: the layout of torchvision and the published checkpoints."""
    args = dict(arch="resnet18", width=1.0, small_stem=False, dim=128, queue_size=16)
    args.update(kw)
    return MoCo(**args)


def tv_source(seed=3):
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    with torch.no_grad():  # make BN buffers distinctive too
        for name, buf in net.named_buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    return net.state_dict()


def assert_backbone_equals(model, source):
    own = model.encoder_q.state_dict()
    for key, value in source.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(own[key], value), key
    for key, value in model.encoder_k.state_dict().items():  # encoder_k: a copy of encoder_q
        assert torch.equal(value, own[key]), key


def test_official_moco_layout(tmp_path):
    src_model = full_moco()
    src = {f"module.{k}": v for k, v in src_model.state_dict().items()}
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": src, "optimizer": {}}, tmp_path / "m.pth")
    model = full_moco()
    report = load_initial_weights(model, str(tmp_path / "m.pth"))
    assert report["layout"] == "moco" and report["head_loaded"]
    assert report["encoder_k"] == "copied from encoder_q" and not report["queue_loaded"]
    assert_backbone_equals(model, src_model.encoder_q.state_dict())
    assert torch.equal(model.encoder_q.fc[2].weight, src_model.encoder_q.fc[2].weight)
    # tensors, not BatchNorm's step counters (checkpoints may lack them)
    assert report["loaded_keys"] == len([k for k in model.encoder_q.state_dict()
                                         if not k.endswith("num_batches_tracked")])
    assert not torch.equal(model.queue, src_model.queue)


def test_official_moco_with_other_head_dim_loads_backbone_only(tmp_path):
    src = {f"module.{k}": v for k, v in full_moco(dim=64).state_dict().items()}
    torch.save({"state_dict": src}, tmp_path / "m.pth")
    model = full_moco()
    head_before = model.encoder_q.fc[2].weight.clone()
    report = load_initial_weights(model, str(tmp_path / "m.pth"))
    assert not report["head_loaded"] and torch.equal(model.encoder_q.fc[2].weight, head_before)
    assert_backbone_equals(model, {k[len("module.encoder_q."):]: v for k, v in src.items()
                                   if k.startswith("module.encoder_q.")})


@pytest.mark.parametrize("prefix", ["backbone.", ""])
def test_openselfsup_hpt_layout(tmp_path, prefix):
    source = tv_source()
    state = {prefix + k: v for k, v in source.items() if not k.startswith("fc.")}
    if prefix:
        state["neck.mlp.0.weight"] = torch.zeros(3, 3)  # other OpenSelfSup entries are ignored
    torch.save({"meta": {"epoch": 5}, "state_dict": state}, tmp_path / "hpt.pth")
    model = full_moco()
    report = load_initial_weights(model, str(tmp_path / "hpt.pth"))
    assert report["layout"] == "openselfsup" and not report["head_loaded"]
    assert report["ignored_keys"] == (1 if prefix else 0)
    assert_backbone_equals(model, source)


def test_torchvision_state_dict_drops_classifier(tmp_path):
    source = tv_source()
    torch.save(source, tmp_path / "tv.pth")
    model = full_moco()
    report = load_initial_weights(model, str(tmp_path / "tv.pth"))
    assert report["layout"] == "torchvision" and not report["head_loaded"]
    assert report["ignored_keys"] == 2  # fc.weight, fc.bias
    assert_backbone_equals(model, source)


def test_toolkit_checkpoint_loads_both_encoders_but_not_the_queue(tmp_path):
    torch.manual_seed(1)
    src = MoCo("resnet18", 0.25, True, dim=16, queue_size=32)
    with torch.no_grad():
        for p in src.encoder_k.parameters():
            p.add_(1.0)  # encoder_k differs from encoder_q in the file
    save_checkpoint_atomic({"format": CHECKPOINT_FORMAT, "model": src.state_dict(), "step": 3},
                           str(tmp_path / "ck.pt"))
    torch.manual_seed(2)
    model = MoCo("resnet18", 0.25, True, dim=16, queue_size=32)
    queue_before = model.queue.clone()
    report = load_initial_weights(model, str(tmp_path / "ck.pt"))
    assert report["layout"] == "hpt-hpc" and report["head_loaded"] and report["encoder_k"] == "checkpoint"
    assert "queue" in report["note"]
    for key, value in src.state_dict().items():
        if key.startswith("encoder_"):
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.queue, queue_before)


def test_resnet50_into_resnet18_raises_with_details(tmp_path):
    torch.save(build_resnet("resnet50", width=0.25).state_dict(), tmp_path / "r50.pth")
    model = MoCo("resnet18", 0.25, True, dim=16, queue_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IncompatibleCheckpointError) as err:
        load_initial_weights(model, str(tmp_path / "r50.pth"))
    msg = str(err.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "shape mismatches" in msg
    assert "layer1.0.conv3.weight" in msg  # a Bottleneck-only key
    assert "resnet18" in msg and "r50.pth" in msg and "more)" in msg  # truncated listing
    assert isinstance(err.value, ValueError)
    for k, v in model.state_dict().items():  # nothing was modified
        assert torch.equal(v, before[k]), k


def test_non_strict_backbone_loads_the_fitting_part(tmp_path):
    source = build_resnet("resnet18", width=0.25, small_stem=True).state_dict()
    del source["layer4.1.conv2.weight"]
    torch.save(source, tmp_path / "partial.pth")
    model = MoCo("resnet18", 0.25, True, dim=16, queue_size=8)
    with pytest.raises(IncompatibleCheckpointError, match="layer4.1.conv2.weight"):
        load_initial_weights(model, str(tmp_path / "partial.pth"))
    report = load_initial_weights(model, str(tmp_path / "partial.pth"), strict_backbone=False)
    assert report["missing_keys"] == ["layer4.1.conv2.weight"]
    assert torch.equal(model.encoder_q.conv1.weight, source["conv1.weight"])


def test_missing_corrupt_and_unsafe_files_name_the_path(tmp_path):
    model = MoCo("resnet18", 0.25, True, dim=16, queue_size=8)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_initial_weights(model, str(tmp_path / "nope.pth"))
    (tmp_path / "text.pth").write_text("this is not a checkpoint")
    with pytest.raises(CheckpointReadError, match="text.pth"):
        load_checkpoint(str(tmp_path / "text.pth"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "cut.pth")
    data = (tmp_path / "cut.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="cut.pth"):
        load_checkpoint(str(tmp_path / "cut.pth"))
    torch.save({"obj": np.arange(3)}, tmp_path / "numpy.pth")  # refused by weights_only
    with pytest.raises(CheckpointReadError, match="weights_only"):
        load_checkpoint(str(tmp_path / "numpy.pth"))
    torch.save({"something": "else"}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointReadError, match="unrecognised checkpoint layout"):
        load_initial_weights(model, str(tmp_path / "odd.pth"))


def test_atomic_save_round_trip_with_rng_states_under_weights_only(tmp_path):
    np_state = np.random.get_state()
    py_state = random.getstate()
    obj = {
        "format": CHECKPOINT_FORMAT, "step": 7, "lr": 0.03, "stage": "target", "done": False,
        "history": [1.5, 1.25], "nested": {"a": [1, 2]}, "none": None,
        "rng": {"torch": torch.get_rng_state(),
                "numpy": [np_state[0], np_state[1].tolist(), *map(int, np_state[2:4]), float(np_state[4])],
                "python": [py_state[0], list(py_state[1]), py_state[2]]},
    }
    path = tmp_path / "sub" / "ck.pt"
    save_checkpoint_atomic(obj, str(path))
    assert os.listdir(path.parent) == ["ck.pt"]
    back = load_checkpoint(str(path))
    assert back["step"] == 7 and back["history"] == [1.5, 1.25] and back["nested"] == {"a": [1, 2]}
    assert torch.equal(back["rng"]["torch"], obj["rng"]["torch"])
    random.setstate((back["rng"]["python"][0], tuple(back["rng"]["python"][1]), back["rng"]["python"][2]))
    assert random.random() == (random.setstate(py_state), random.random())[1]
    ns = back["rng"]["numpy"]
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), ns[2], ns[3], ns[4]))
    first = np.random.rand()
    np.random.set_state(np_state)
    assert first == np.random.rand()


def test_failed_atomic_save_keeps_previous_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint_atomic({"step": 1}, str(path))
    with pytest.raises(Exception):
        save_checkpoint_atomic({"step": 2, "bad": lambda: None}, str(path))
    assert os.listdir(tmp_path) == ["ck.pt"]
    assert load_checkpoint(str(path)) == {"step": 1}
