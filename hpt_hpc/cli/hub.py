"""``hpt-hpc models fetch|list``: public pretrained weights in the model cache. Compute
nodes usually have no internet: fetch on a login node into a shared cache, and jobs read
it offline (``init: timm:<model>.<tag>``, ``torchvision:<Enum>.<NAME>``,
``hf-hub:<org>/<name>``)."""
from __future__ import annotations

from typing import Optional

import click

_cache = [
    click.option("--cache", "cache", metavar="DIR", type=click.Path(file_okay=False),
                 help="Cache root (DIR/huggingface/hub, DIR/torch/hub/checkpoints); jobs "
                      "read it with model_cache: DIR in their profile. Default: the "
                      "profile's, else $HPT_MODEL_CACHE, else the libraries' caches "
                      "(HF_HUB_CACHE/HF_HOME, TORCH_HOME)."),
    click.option("--profile", help="Use this cluster profile's model_cache "
                                   "(slurm/profiles/<name>.yaml)."),
]


def _with_cache(func):
    for option in reversed(_cache):
        func = option(func)
    return func


def _root(cache: Optional[str], profile: Optional[str]) -> Optional[str]:
    if cache or not profile:
        return cache
    from ..launch.options import load_profile
    return load_profile(profile).get("model_cache")


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 1e6:.1f} MB)"


@click.group("models")
def models_group() -> None:
    """Public pretrained weights (timm, torchvision, Hugging Face hub) in the model cache."""


@models_group.command("fetch")
@click.argument("name")
@_with_cache
@click.option("--url-mirror", metavar="URL",
              help="Fetch URL-hosted weights (torchvision's) from this mirror: the URL's "
                   "path under URL. Hub repos follow HF_ENDPOINT.")
def fetch(name: str, cache: Optional[str], profile: Optional[str],
          url_mirror: Optional[str]) -> None:
    """Download NAME's weights into the model cache (needs internet: run it on a login
    node), and print where they went, their size and the licence stated for them. NAME:
    timm:<model>[.<tag>], torchvision:<Enum>.<NAME> or hf-hub:<org>/<name>."""
    import logging
    from ..config import InitRef
    from ..errors import ConfigError
    from ..hub import cache_root, fetch as fetch_weights, using_cache
    for name_ in ("httpx", "httpx2", "httpcore"):  # one line per request otherwise
        logging.getLogger(name_).setLevel(logging.WARNING)
    ref = InitRef.parse(name, "models fetch")
    if not ref.is_public:
        raise ConfigError(f"models fetch: '{name}' is not a public model name; use "
                          f"timm:<model>.<tag>, torchvision:<Enum>.<NAME> or "
                          f"hf-hub:<org>/<name>")
    with using_cache(_root(cache, profile)):
        got = fetch_weights(ref.kind, ref.value, mirror=url_mirror)
        root = cache_root()
    src, arch = got.located.source, got.located.arch
    click.echo(f"{src.ref} -> {got.located.path}")
    click.echo(f"  size: {_size(got.size)}")
    click.echo(f"  licence: {got.licence} ({got.licence_from})")
    if src.notes:
        click.echo(f"  about: {src.notes}")
    if arch:
        click.echo(f"  use: init: {src.ref} with model.arch: "
                   f"{arch if ref.kind == 'torchvision' else 'timm:' + arch}")
    else:
        click.echo("  note: the repo names no timm architecture (no config.json with "
                   "'architecture'); its tensors must match model.arch's keys")
    where = f"model_cache: {root} in the profile" if root else "the same HF_HUB_CACHE/TORCH_HOME"
    click.echo(f"  jobs read it offline with {where}")


@models_group.command("list")
@_with_cache
def list_cached(cache: Optional[str], profile: Optional[str]) -> None:
    """The public weights in the model cache, by the name an init uses."""
    from ..experiments.tables import text_table
    from ..hub import cached, hf_cache, torch_checkpoints, using_cache
    with using_cache(_root(cache, profile)):
        rows = cached()
        folders = f"{hf_cache()}, {torch_checkpoints()}"
    if not rows:
        click.echo(f"no weights cached in {folders}")
        return
    for line in text_table(["name", "size (MB)", "file"],
                           [(n, f"{b / 1e6:.1f}", str(p)) for n, p, b in rows]):
        click.echo(line)
