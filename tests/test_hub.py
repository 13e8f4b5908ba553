"""Public starting points by name (``init: timm:…``, ``torchvision:…``, ``hf-hub:…``), read
offline from the libraries' own cache layouts (written here as the libraries write them),
loaded strictly with a report of what loaded."""
import os
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.models.loading import read_weights
from hpt_hpc.models.resnet import build_resnet
from hubcache import (REVISION, RESNET18_FILE, TIMM_REPO, VIT, as_bytes, hf_entry,
                      resnet_weights, result_of, stage_config, train, vit_weights,
                      weights_kept)


@pytest.mark.parametrize("kind", ["timm", "hf-hub", "torchvision"])
def test_public_inits_load_offline_from_each_library_cache(tmp_path, mnist_tree, monkeypatch,
                                                           caplog, kind):
    """Each name is found where its library caches it (set by HPT_MODEL_CACHE, HF_HOME or
    TORCH_HOME), loads exactly, and the stage reports how many tensors loaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HPT_MODEL_CACHE", "HF_HUB_CACHE", "HF_HOME", "TORCH_HOME"):
        monkeypatch.delenv(var, raising=False)
    if kind == "timm":  # a cache root: timm's name -> its hub repo, safetensors
        monkeypatch.setenv("HPT_MODEL_CACHE", str(tmp_path / "cache"))
        saved, ref, model, classifier = vit_weights(), "timm:vit_tiny_patch16_224", VIT, "head."
        hf_entry(tmp_path / "cache/huggingface/hub", TIMM_REPO,
                 {"model.safetensors": as_bytes(saved, "safetensors")})
        source = f"timm:{TIMM_REPO[5:]}"
    elif kind == "hf-hub":  # HF_HOME: a repo with pytorch_model.bin only
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        saved, ref, model, classifier = vit_weights(), "hf-hub:lab/tiny-vit", VIT, "head."
        hf_entry(tmp_path / "hf/hub", "lab/tiny-vit",
                 {"pytorch_model.bin": as_bytes(saved, "torch"),
                  "config.json": b'{"architecture": "vit_tiny_patch16_224"}'})
        source = ref
    else:  # TORCH_HOME: torch.hub's checkpoints folder, the URL's file name
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
        saved, model, classifier = resnet_weights(), None, "fc."
        ref = source = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
        (tmp_path / "th/hub/checkpoints").mkdir(parents=True)
        torch.save(saved, tmp_path / "th/hub/checkpoints" / RESNET18_FILE)
    caplog.set_level("INFO")
    done = train(stage_config(tmp_path, mnist_tree, ref, model))
    assert done.exit_code == 0, done.output
    weights_kept(tmp_path, saved, classifier)
    expected = len([k for k in saved if not k.startswith(classifier)
                    and not k.endswith("num_batches_tracked")])
    init = result_of(tmp_path)["init"]
    assert (init["loaded"], init["of"], init["source"]) == (expected, expected, source)
    # timm's classifier ("head") is dropped by the loader; a ResNet's "fc" when read
    assert init["classifier_dropped"] == (2 if classifier == "head." else 0)
    assert f"loaded {expected} of {expected} backbone tensors from {source}" in caplog.text


def test_missing_cache_entry_is_one_line_naming_the_fetch_command(tmp_path, mnist_tree,
                                                                   monkeypatch):
    monkeypatch.setenv("HPT_MODEL_CACHE", str(tmp_path / "empty"))
    done = train(stage_config(tmp_path, mnist_tree, "timm:vit_tiny_patch16_224", VIT))
    assert done.exit_code == 2
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.output
    assert (f"run `hpt-hpc models fetch timm:{TIMM_REPO[5:]} --cache "
            f"{tmp_path / 'empty'}`") in lines[0]
    assert not (tmp_path / "out/target").exists()  # refused before any work
    unknown = train(stage_config(tmp_path, mnist_tree, "timm:vit_tiny_patch16_224.nope", VIT))
    assert unknown.exit_code == 2 and "augreg_in21k_ft_in1k" in unknown.output  # its tags


def test_partial_or_mismatched_init_is_refused_unless_asked(tmp_path, mnist_tree,
                                                            monkeypatch):
    """A checkpoint with one block fewer is refused by default; ``init_partial`` loads the
    rest and reports exactly what did not load, in result.json and the run's tags."""
    monkeypatch.setenv("HPT_MODEL_CACHE", str(tmp_path / "cache"))
    hub = tmp_path / "cache/huggingface/hub"
    shallow = vit_weights(depth=1)
    hf_entry(hub, "lab/shallow", {"model.safetensors": as_bytes(shallow, "safetensors"),
                                  "config.json": b'{"architecture": "vit_tiny_patch16_224"}'})
    cfg = stage_config(tmp_path, mnist_tree, "hf-hub:lab/shallow", VIT)
    refused = train(cfg)
    assert refused.exit_code == 2, refused.output
    assert "18 of 30 tensors fit (12 missing, 0 unexpected, 0 mis-shaped); " \
           "stages.target.init_partial: true loads the tensors that fit" in refused.output
    assert not (tmp_path / "out/target/checkpoints/final.pt").exists()

    done = train(cfg, "stages.target.init_partial=true", "tracking.enabled=true")
    assert done.exit_code == 0, done.output
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=1, img_size=16,
                              patch_size=4, depth=2).state_dict()
    missing = sorted(k for k in model if k.startswith("blocks.1."))
    init = result_of(tmp_path)["init"]
    assert (init["loaded"], init["of"]) == (len(model) - len(missing), len(model))
    assert sorted(init["missing"]) == missing and not init["unexpected"]
    weights_kept(tmp_path, shallow, "head.")
    from mlflow import MlflowClient
    uri = f"sqlite:///{tmp_path / 'out/mlflow.db'}"
    client = MlflowClient(uri, uri)
    [run] = [r for r in client.search_runs([e.experiment_id for e in
                                            client.search_experiments()])
             if r.info.run_name == "target"]
    tags = run.data.tags
    assert tags["hpt.init_source"] == "hf-hub:lab/shallow"
    assert tags["hpt.init_revision"] == REVISION and tags["hpt.init_weights"] == tags[
        "hpt.init_source"]
    assert (tags["hpt.init_loaded_tensors"], tags["hpt.init_backbone_tensors"]) == (
        str(len(model) - len(missing)), str(len(model)))
    assert sorted(tags["hpt.init_not_loaded"].split("; ")) == missing


def test_weights_of_another_architecture_name_it_in_the_error(tmp_path, mnist_tree,
                                                              monkeypatch):
    monkeypatch.setenv("HPT_MODEL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache/torch/hub/checkpoints"
    folder.mkdir(parents=True)
    torch.save(resnet_weights("resnet50"), folder / "resnet50-11ad3fa6.pth")
    done = train(stage_config(tmp_path, mnist_tree,
                              "torchvision:ResNet50_Weights.IMAGENET1K_V2"))
    assert done.exit_code == 2
    assert "hint: these weights are for the model 'resnet50' but model.arch is 'resnet18'; " \
           "set model.arch: resnet50" in done.output.splitlines()[0]


def test_a_profiles_model_cache_reaches_the_preflight_and_local_jobs(tmp_path, mnist_tree,
                                                                     monkeypatch):
    """``model_cache`` in a profile: the launch checks that cache, its local job (another
    process) loads from it, SLURM jobs export it, and this process is left as it was."""
    from hpt_hpc.launch.options import build_options, executor_parameters
    from hpt_hpc.launch.record import LaunchRecord
    for var in ("HPT_MODEL_CACHE", "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shared, saved = tmp_path / "shared", vit_weights()
    hf_entry(shared / "huggingface/hub", TIMM_REPO,
             {"model.safetensors": as_bytes(saved, "safetensors")})
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles/site.yaml").write_text(f"executor: local\nmodel_cache: {shared}\n")
    monkeypatch.setenv("HPT_SLURM_PROFILES", str(tmp_path / "profiles"))
    cfg = stage_config(tmp_path, mnist_tree, "timm:vit_tiny_patch16_224", VIT)
    done = CliRunner().invoke(cli, ["launch", "--config", str(cfg), "--stage", "target",
                                    "--profile", "site"])
    assert done.exit_code == 0, done.output
    record = LaunchRecord.load(tmp_path / "out")
    assert record.job(record.jobs[0]).result()["steps"] == 2
    weights_kept(tmp_path, saved, "head.")
    assert "HPT_MODEL_CACHE" not in os.environ
    slurm = executor_parameters(build_options("site", executor="slurm"), "x")
    assert slurm["slurm_setup"] == [f"export HPT_MODEL_CACHE={shared}"]
    from hpt_hpc.config import InitRef
    from hpt_hpc.hub import using_cache
    with using_cache(str(shared)):  # what a container binds to read them
        assert InitRef.parse("timm:vit_tiny_patch16_224").host_paths() == [
            shared / "huggingface/hub"]
        assert InitRef.parse("torchvision:ResNet18_Weights.DEFAULT").host_paths() == [
            shared / "torch/hub/checkpoints"]
    (tmp_path / "profiles/site.yaml").write_text(f"executor: local\nmodel_cache: "
                                                 f"{tmp_path / 'elsewhere'}\n")
    refused = CliRunner().invoke(cli, ["launch", "--config", str(cfg), "--stage", "target",
                                       "--set", "seed=1", "--profile", "site"])
    assert refused.exit_code == 2 and f"--cache {tmp_path / 'elsewhere'}`" in refused.output


def test_a_resumed_stage_reports_the_init_its_first_run_loaded(tmp_path, mnist_tree,
                                                                monkeypatch):
    from hpt_hpc.config import load_config
    from tiny import run_stage_of
    monkeypatch.setenv("HPT_MODEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache/torch/hub/checkpoints").mkdir(parents=True)
    saved = resnet_weights()
    torch.save(saved, tmp_path / "cache/torch/hub/checkpoints" / RESNET18_FILE)
    cfg = stage_config(tmp_path, mnist_tree, "torchvision:ResNet18_Weights.IMAGENET1K_V1",
                       variant="full")
    first = run_stage_of(load_config(cfg), "target", stop_after=1)
    assert not first.completed and first.init["loaded"] == first.init["of"] > 0
    done = train(cfg, "stages.target.init_partial=true")  # resumes: nothing loads again
    assert done.exit_code == 0, done.output
    assert result_of(tmp_path)["resumed_from"] == 1
    assert result_of(tmp_path)["init"] == first.init


def test_a_safetensors_file_is_an_init_and_a_truncated_one_is_refused(tmp_path, mnist_tree):
    saved = resnet_weights()
    good, cut = tmp_path / "w.safetensors", tmp_path / "cut.safetensors"
    good.write_bytes(as_bytes(saved, "safetensors"))
    cut.write_bytes(good.read_bytes()[:-100])
    done = train(stage_config(tmp_path, mnist_tree, str(good)))
    assert done.exit_code == 0, done.output
    weights_kept(tmp_path, saved, "fc.")
    init = result_of(tmp_path)["init"]
    assert init["loaded"] == init["of"] == len([k for k in saved if not k.startswith("fc.")
                                                and not k.endswith("num_batches_tracked")])
    (tmp_path / "again").mkdir()
    refused = train(stage_config(tmp_path / "again", mnist_tree, str(cut)))
    assert refused.exit_code == 2
    assert f"cannot read safetensors file {cut} (corrupt or truncated)" in refused.output


def test_the_readmes_tensor_count_of_resnet50():
    """The README's example line: timm's ResNet-50 backbone holds as many tensors as
    torchvision's ResNet-50 without its classifier (BatchNorm counters not counted)."""
    import torchvision
    from hpt_hpc.models import build_encoder, load_backbone_into
    from hpt_hpc.models.backbones import backbone_state_dict
    encoder = build_encoder("timm:resnet50", image_size=32)
    report = load_backbone_into(encoder, backbone_state_dict(encoder), "itself")
    count = len([k for k in torchvision.models.resnet50().state_dict()
                 if not k.startswith("fc.") and not k.endswith("num_batches_tracked")])
    assert report["loaded_keys"] == report["expected_keys"] == count
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"`loaded {count} of {count} backbone tensors from\ntimm:resnet50.a1_in1k`" \
        in readme


def test_weights_of_another_input_size_and_channels_are_adapted_as_timm_does(
        tmp_path, mnist_tree, monkeypatch):
    """Public weights made for 3-channel 64x64 inputs with 8x8 patches (8x8 positions), on 1-channel 16x16
    images with 4x4 patches (4x4 positions): the stage's backbone equals what timm's own pretrained loader
    makes of the same file (its checkpoint filter resamples the position and patch
    embeddings; adapt_input_conv sums the colour channels), and the report lists each
    adapted tensor. The built-in ResNet's first conv is adapted the same way."""
    monkeypatch.setenv("HPT_MODEL_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(5)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                               in_chans=3, img_size=64, patch_size=8, depth=2)
    saved = {k: v.contiguous() for k, v in source.state_dict().items()}
    hf_entry(tmp_path / "cache/huggingface/hub", TIMM_REPO,
             {"model.safetensors": as_bytes(saved, "safetensors")})
    done = train(stage_config(tmp_path, mnist_tree, "timm:vit_tiny_patch16_224", VIT))
    assert done.exit_code == 0, done.output
    init = result_of(tmp_path)["init"]
    assert init["loaded"] == init["of"] and not init["shape_mismatches"]
    assert sorted(note.split(":")[0] for note in init["adapted"]) == \
        ["patch_embed.proj.weight", "pos_embed"]
    file = tmp_path / "weights.safetensors"
    file.write_bytes(as_bytes(saved, "safetensors"))
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(file)}, in_chans=1,
                                  img_size=16, patch_size=4, depth=2)
    backbone = read_weights(str(tmp_path / "out/target/checkpoints/final.pt")).backbone
    for key, value in reference.state_dict().items():
        assert torch.allclose(backbone[key], value, atol=1e-6), key
    # a 3-channel torchvision-keyed ResNet on grey images: conv1 summed over colours
    rgb = {k: v for k, v in build_resnet("resnet18", 0.125, True, 3, stem_stride=2)
           .state_dict().items()}
    torch.save(rgb, tmp_path / "rgb.pt")
    grey = tmp_path / "grey"
    grey.mkdir()
    done = train(stage_config(grey, mnist_tree, str(tmp_path / "rgb.pt")))
    assert done.exit_code == 0, done.output
    kept = read_weights(str(grey / "out/target/checkpoints/final.pt")).backbone
    assert torch.allclose(kept["conv1.weight"], rgb["conv1.weight"].sum(dim=1, keepdim=True))
    assert result_of(grey)["init"]["adapted"] == [
        f"conv1.weight: {tuple(rgb['conv1.weight'].shape)} -> "
        f"{tuple(kept['conv1.weight'].shape)}"]
