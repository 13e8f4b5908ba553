"""``hpt-hpc models fetch|list`` for real against a local HTTP server standing in for the
Hugging Face hub (huggingface_hub's own requests, through ``HF_ENDPOINT``) and for
torchvision's download host (``--url-mirror``); then a stage trains offline from the
fetched cache."""
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hubcache import (REVISION, RESNET18_FILE, TIMM_REPO, VIT, as_bytes, resnet_weights,
                      stage_config, train, vit_weights, weights_kept)


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
