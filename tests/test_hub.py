"""Public starting points by name (``init: timm:…``, ``torchvision:…``, ``hf-hub:…``), read
offline from the libraries' own cache layouts, loaded strictly with a report of what
loaded; ``hpt-hpc models fetch`` against a local HTTP server standing in for the hub."""
import hashlib
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.models.loading import read_weights
from hpt_hpc.models.resnet import build_resnet
from tiny import write_tiny_config

VIT = {"arch": "timm:vit_tiny_patch16_224", "in_channels": 1,
       "timm_kwargs": {"patch_size": 4, "depth": 2}}
TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's default tag's repo
RESNET18_FILE = "resnet18-f37072fd.pth"  # the file name of ResNet18_Weights.IMAGENET1K_V1
REVISION = "3" * 40


def vit_weights(depth: int = 2, classes: int = 5, seed: int = 7) -> dict:
    """A tiny timm ViT as timm saves it (classifier ``head`` included)."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes,
                              in_chans=1, img_size=16, patch_size=4, depth=depth)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def resnet_weights(arch: str = "resnet18") -> dict:
    """torchvision-keyed weights of the tiny config's ResNet, with a classifier ``fc``."""
    torch.manual_seed(11)
    state = build_resnet(arch, width=0.125, small_stem=True, in_channels=1,
                         stem_stride=2).state_dict()
    width = state["layer4.1.bn2.weight" if arch == "resnet18" else "layer4.2.bn3.weight"]
    return {**state, "fc.weight": torch.randn(10, len(width)), "fc.bias": torch.randn(10)}


def as_bytes(tensors: dict, fmt: str) -> bytes:
    if fmt == "safetensors":
        return safetensors.torch.save(tensors)
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def hf_entry(hub: Path, repo: str, files: dict) -> None:
    """A Hugging Face cache entry: blobs by content hash, a snapshot of symlinks, refs/main."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / REVISION
    for sub in ("blobs", "refs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def stage_config(tmp_path, mnist_tree, init, model=None, **stage) -> Path:
    sections = {"model": model} if model else {}
    return write_tiny_config(tmp_path, {"m": mnist_tree},
                             {"target": {"dataset": "m", "variant": "bn-stats", "init": init,
                                         **stage}},
                             optim={"lr": 0.05, "batch_size": 8, "iterations": 2}, **sections)


def train(cfg: Path, *overrides):
    args = ["train", "--config", str(cfg)] + [a for o in overrides for a in ("--set", o)]
    return CliRunner().invoke(cli, args)


def result_of(tmp_path) -> dict:
    return json.loads((tmp_path / "out/target/result.json").read_text())


def weights_kept(tmp_path, saved: dict, classifier: str) -> None:
    """Every saved backbone weight is in the finished stage exactly (bn-stats trains
    nothing; only BatchNorm statistics are re-estimated)."""
    backbone = read_weights(str(tmp_path / "out/target/checkpoints/final.pt")).backbone
    compared = [k for k in saved if not k.startswith(classifier)
                and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert compared and all(torch.equal(backbone[k], saved[k]) for k in compared)


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
    assert tags["hpt.init_revision"] == REVISION
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
    done = train(cfg)  # resumes from last.pt: nothing is loaded again
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


# ---------------------------------------------------------------- models fetch


class Hub(BaseHTTPRequestHandler):
    """The Hugging Face endpoints huggingface_hub uses to download a file and describe a
    repo, and a plain file server for URL-hosted weights."""

    repos: dict = {}
    files: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, code, body=b"", headers=(), with_body=True):
        self.send_response(code)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _answer(self, with_body):
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "api" and parts[1] == "models":
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._send(404, headers=[("X-Error-Code", "RepoNotFound")])
            body = json.dumps({"id": repo, "sha": REVISION,
                               "cardData": {"license": self.repos[repo]["licence"]}}).encode()
            return self._send(200, body, [("Content-Type", "application/json")], with_body)
        if "/".join(parts) in self.files:
            return self._send(200, self.files["/".join(parts)], with_body=with_body)
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        if repo not in self.repos:
            return self._send(404, headers=[("X-Error-Code", "RepoNotFound")])
        if name not in self.repos[repo]["files"]:
            return self._send(404, headers=[("X-Error-Code", "EntryNotFound")])
        body = self.repos[repo]["files"][name]
        return self._send(200, body, [("X-Repo-Commit", REVISION),
                                      ("ETag", f'"{hashlib.sha256(body).hexdigest()}"')],
                          with_body)

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


@pytest.fixture
def local_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def fetch(*args):
    return CliRunner().invoke(cli, ["models", "fetch", *args])


def test_models_fetch_through_a_local_hub_then_train_offline(tmp_path, mnist_tree,
                                                              monkeypatch, local_hub):
    port, cache = local_hub.server_port, tmp_path / "cache"
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HPT_MODEL_CACHE", raising=False)
    timm_bytes = as_bytes(vit_weights(seed=3), "safetensors")
    bin_bytes = as_bytes(vit_weights(seed=4), "torch")
    tv_bytes = as_bytes(resnet_weights(), "torch")
    Hub.repos = {TIMM_REPO: {"licence": "apache-2.0", "files": {
                     "model.safetensors": timm_bytes,
                     "config.json": b'{"architecture": "vit_tiny_patch16_224"}'}},
                 "lab/tiny": {"licence": "cc-by-nc-4.0",
                              "files": {"pytorch_model.bin": bin_bytes}}}
    Hub.files = {f"models/{RESNET18_FILE}": tv_bytes}

    got = fetch("timm:vit_tiny_patch16_224", "--cache", str(cache))
    assert got.exit_code == 0, got.output
    path = cache / f"huggingface/hub/models--timm--{TIMM_REPO[5:]}/snapshots/{REVISION}" \
                   f"/model.safetensors"
    assert path.read_bytes() == timm_bytes
    assert f"timm:{TIMM_REPO[5:]} -> {path}" in got.output
    assert f"size: {len(timm_bytes):,} bytes" in got.output
    assert f"licence: apache-2.0 (stated by the hub's model card of {TIMM_REPO})" in got.output
    assert "model.arch: timm:vit_tiny_patch16_224" in got.output

    got = fetch("hf-hub:lab/tiny", "--cache", str(cache))
    assert got.exit_code == 0, got.output
    assert "licence: cc-by-nc-4.0" in got.output and "pytorch_model.bin" in got.output
    assert f"size: {len(bin_bytes):,} bytes" in got.output

    got = fetch("torchvision:ResNet18_Weights.IMAGENET1K_V1", "--cache", str(cache),
                "--url-mirror", f"http://127.0.0.1:{port}")
    assert got.exit_code == 0, got.output
    assert (cache / "torch/hub/checkpoints" / RESNET18_FILE).read_bytes() == tv_bytes
    assert "licence: none stated for these weights (torchvision's README: " in got.output

    listed = CliRunner().invoke(cli, ["models", "list", "--cache", str(cache)])
    assert listed.exit_code == 0, listed.output
    for name in (f"timm:{TIMM_REPO[5:]}", "hf-hub:lab/tiny",
                 "torchvision:ResNet18_Weights.IMAGENET1K_V1"):
        assert name in listed.output

    # the hub goes away: fetching fails in one line, training reads the cache offline
    local_hub.shutdown()
    local_hub.server_close()
    failed = fetch("hf-hub:lab/other", "--cache", str(cache))
    assert failed.exit_code == 2
    lines = failed.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot fetch hf-hub:lab/other from http://127.0.0.1:{port}: "), failed.output
    monkeypatch.setenv("HPT_MODEL_CACHE", str(cache))
    cfg = stage_config(tmp_path, mnist_tree, "timm:vit_tiny_patch16_224", VIT)
    done = train(cfg)
    assert done.exit_code == 0, done.output
    fetched = safetensors.torch.load(timm_bytes)
    weights_kept(tmp_path, fetched, "head.")
    import hpt_hpc  # the Python API reads public names from the cache too
    model = hpt_hpc.load_backbone("timm:vit_tiny_patch16_224", config=str(cfg)).model
    assert all(torch.equal(model.state_dict()[f"backbone.{k}"], v)
               for k, v in fetched.items() if not k.startswith("head."))


def test_models_fetch_refuses_names_it_cannot_fetch(tmp_path, monkeypatch, local_hub):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{local_hub.server_port}")
    Hub.repos, Hub.files = {}, {}
    for name, wanted in [("hf-hub:lab/none", "no such repo"),
                         ("stage:base", "not a public model name"),
                         ("timm:resnet50.nope", "resnet50.a1_in1k"),
                         ("torchvision:Nope_Weights.X", "torchvision has no weights")]:
        got = fetch(name, "--cache", str(tmp_path))
        lines = got.output.strip().splitlines()
        assert got.exit_code == 2 and len(lines) == 1 and wanted in lines[0], got.output
