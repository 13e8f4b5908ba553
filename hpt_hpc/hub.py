"""Public pretrained weights by name: ``timm:<model>[.<tag>]``, ``torchvision:<Enum>.<NAME>``
and ``hf-hub:<org>/<name>`` (the reference forms :class:`~hpt_hpc.config.InitRef` parses).

Weights live in the libraries' own caches: Hugging Face's hub cache
(``models--<org>--<name>/snapshots/<revision>/<file>``, ``refs/main``) for timm names and
``hf-hub:`` repos, torch.hub's ``checkpoints/<file name of the URL>`` for torchvision
weights (and the few timm weights that have no hub repo). Which caches: under the cache
root ``$HPT_MODEL_CACHE`` when set (``<root>/huggingface/hub`` and
``<root>/torch/hub/checkpoints``; a profile's ``model_cache`` and ``--cache`` set it),
else where the libraries put them (``HF_HUB_CACHE``/``HF_HOME``, ``TORCH_HOME``).

:func:`locate` never touches the network (jobs run offline); :func:`fetch` downloads
through huggingface_hub and torch.hub (a login node) and reports the stated licence.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlparse

from .errors import ConfigError

CACHE_ENV = "HPT_MODEL_CACHE"  # a cache root (jobs of a profile with model_cache get it)
KINDS = ("timm", "torchvision", "hf-hub")
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order: safetensors first
TORCHVISION_TERMS = ("torchvision's README: pre-trained models 'may have their own licenses or "
                     "terms and conditions derived from the dataset used for training'")


class HubError(ConfigError):
    """A public name that is unknown, not in the cache, or cannot be fetched."""


@dataclass(frozen=True)
class Source:
    """Where the weights of a public name come from: a Hugging Face repo (``repo``, its
    candidate ``files``, preferred first) or a URL; ``arch`` is the model they are for
    (timm's or torchvision's name; empty when only the repo's config says)."""

    ref: str
    arch: str = ""
    repo: str = ""
    revision: Optional[str] = None
    files: Tuple[str, ...] = HF_FILES
    url: str = ""
    licence: str = ""
    notes: str = ""


@dataclass(frozen=True)
class Located:
    """A cached weights file of a :class:`Source` (``revision``: the hub commit)."""

    source: Source
    path: Path
    revision: str = ""
    arch: str = ""


# ---------------------------------------------------------------- caches


def cache_root() -> Optional[Path]:
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser().resolve() if root else None


@contextmanager
def using_cache(root: Optional[str]) -> Iterator[None]:
    """Within: this process and the jobs it starts use the cache root ``root`` (None:
    unchanged)."""
    if not root:
        yield
        return
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(Path(root).expanduser().resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before


def hf_cache() -> Path:
    """Hugging Face's hub cache folder (read from the environment now, as huggingface_hub
    does at import: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``)."""
    root = cache_root()
    if root is not None:
        return root / "huggingface" / "hub"
    hub = os.environ.get("HF_HUB_CACHE")
    if not hub:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        hub = os.path.join(home, "hub")
    return Path(hub).expanduser()


def torch_checkpoints() -> Path:
    """torch.hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``)."""
    root = cache_root()
    if root is not None:
        return root / "torch" / "hub" / "checkpoints"
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_folders(kind: str, name: str) -> List[Path]:
    """The cache folder a container must see to read this name's weights."""
    return [hf_cache() if source(kind, name).repo else torch_checkpoints()]


def _fetch_hint(ref: str) -> str:
    root = cache_root()
    return f"hpt-hpc models fetch {ref}" + (f" --cache {root}" if root else "")


# ---------------------------------------------------------------- names


def source(kind: str, name: str) -> Source:
    """The :class:`Source` of a public name (no network; timm and torchvision say where
    their weights are)."""
    if kind == "hf-hub":
        repo, _, revision = name.partition("@")
        return Source(f"hf-hub:{name}", repo=repo, revision=revision or None)
    if kind == "timm":
        return _timm_source(name)
    if kind == "torchvision":
        return _torchvision_source(name)
    raise HubError(f"'{kind}' is not a public model kind ({', '.join(KINDS)})")


def _timm_source(name: str) -> Source:
    import timm
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # a known model, an unknown tag
        cfg = None
    if cfg is None:
        model = name.split(".", 1)[0]
        tags = timm.list_pretrained(f"{model}.*")[:8]
        hint = f" (its weights: {', '.join(tags)})" if tags else (
            "" if timm.is_model(model) else f" (timm has no model '{model}')")
        raise HubError(f"timm:{name}: timm has no pretrained weights of that name{hint}")
    ref = f"timm:{cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm:{cfg.architecture}"
    repo, _, revision = (cfg.hf_hub_id or "").partition("@")
    files = HF_FILES
    if cfg.hf_hub_filename:
        stem = cfg.hf_hub_filename.rsplit(".", 1)[0].replace("pytorch_model", "model")
        files = (f"{stem}.safetensors", cfg.hf_hub_filename)
    url = "" if repo else (cfg.url or "")
    if not repo and (not url or cfg.custom_load or not url.endswith((".pth", ".pt", ".bin"))):
        raise HubError(f"{ref}: timm loads these weights with its own converter "
                       f"({url or 'no file'}); they cannot be an init")
    return Source(ref, cfg.architecture, repo, revision or None, files, url,
                  cfg.license or "", cfg.origin_url or "")


def _torchvision_source(name: str) -> Source:
    from torchvision.models import get_model_weights, get_weight, list_models
    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise HubError(f"torchvision:{name}: torchvision has no weights of that name (use "
                       f"<Enum>.<NAME>, e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2)") \
            from None
    arch = next((m for m in list_models() if get_model_weights(m) is type(weights)), "")
    return Source(f"torchvision:{weights}", arch, url=weights.url, licence="",
                  notes=str(weights.meta.get("recipe", "")))


def hf_architecture(config_file: Optional[str]) -> str:
    """The timm architecture a hub repo's ``config.json`` names ('' when none)."""
    try:
        data = json.loads(Path(config_file).read_text()) if config_file else {}
    except (OSError, ValueError):
        return ""
    return str(data.get("architecture") or "") if isinstance(data, dict) else ""


# ---------------------------------------------------------------- the cache, offline


def locate(kind: str, name: str) -> Located:
    """The cached weights file of a public name, never downloading; a missing entry is
    one line naming the fetch command."""
    src = source(kind, name)
    if src.repo:
        from huggingface_hub import try_to_load_from_cache
        cache = hf_cache()
        for file in src.files:
            found = try_to_load_from_cache(src.repo, file, cache_dir=str(cache),
                                           revision=src.revision)
            if isinstance(found, str):
                config = try_to_load_from_cache(src.repo, "config.json", cache_dir=str(cache),
                                                revision=src.revision)
                arch = src.arch or hf_architecture(config if isinstance(config, str) else None)
                return Located(src, Path(found), Path(found).parent.name, arch)
        where = cache / f"models--{src.repo.replace('/', '--')}"
    else:
        where = torch_checkpoints() / Path(urlparse(src.url).path).name
        if where.is_file():
            return Located(src, where, "", src.arch)
    raise HubError(f"{src.ref} is not in the model cache ({where} missing); jobs never "
                   f"download: on a machine with internet (a login node) run "
                   f"`{_fetch_hint(src.ref)}`")


# ---------------------------------------------------------------- fetching (needs internet)


@dataclass(frozen=True)
class Fetched:
    """A fetched (or already cached) weights file, its size in bytes and the licence the
    hub states for it (``licence_from``: who states it, or what is known)."""

    located: Located
    size: int
    licence: str
    licence_from: str


def fetch(kind: str, name: str, mirror: Optional[str] = None) -> Fetched:
    """Download a public name's weights into the cache (a no-op for what is there):
    hub repos through huggingface_hub (``HF_ENDPOINT`` honoured), URLs through torch.hub
    (``mirror``: a base URL replacing the URL's scheme and host)."""
    src = source(kind, name)
    if src.repo:
        path, licence, stated_by = _fetch_hf(src)
    else:
        path = _fetch_url(src, mirror)
        licence, stated_by = ((src.licence, "stated by timm's pretrained config")
                              if src.licence else ("none stated for these weights",
                                                   TORCHVISION_TERMS))
    located = locate(kind, name)
    if located.path.resolve() != Path(path).resolve():  # the cache must answer for it
        raise HubError(f"{src.ref}: fetched {path}, but the cache answers {located.path}")
    return Fetched(located, located.path.stat().st_size, licence, stated_by)


def _reason(exc: BaseException) -> str:
    """One line on why a hub request failed."""
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    if isinstance(exc, GatedRepoError):
        return "the repo is gated: accept its terms on the hub and log in (hf auth login)"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repo (or it is private: log in with hf auth login)"
    if isinstance(exc, RevisionNotFoundError):
        return "no such revision"
    if isinstance(exc, LocalEntryNotFoundError):
        exc = exc.__cause__ or exc
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _fetch_hf(src: Source) -> Tuple[str, str, str]:
    """Ask the hub about the repo first (one request: a missing repo or no connection
    fails at once, before huggingface_hub's download retries), then download."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    cache = str(hf_cache())
    try:
        info = HfApi(endpoint=endpoint).model_info(src.repo, revision=src.revision)
    except RepositoryNotFoundError as exc:
        raise _unreachable(src, endpoint, exc) from None
    except HfHubHTTPError:  # a mirror without the API: download all the same
        info = None
    except Exception as exc:  # noqa: BLE001 - no connection, timeout, offline mode
        raise _unreachable(src, endpoint, exc) from None

    def download(file: str) -> Optional[str]:
        try:
            return hf_hub_download(src.repo, file, revision=src.revision, cache_dir=cache,
                                   endpoint=endpoint)
        except EntryNotFoundError as exc:
            if isinstance(exc, LocalEntryNotFoundError):  # no connection
                raise _unreachable(src, endpoint, exc) from None
            return None  # not in the repo
        except Exception as exc:  # noqa: BLE001 - gated, offline, HTTP
            raise _unreachable(src, endpoint, exc) from None

    path = next((p for p in map(download, src.files) if p), None)
    if path is None:
        raise HubError(f"{src.ref}: the hub repo {src.repo} has none of {', '.join(src.files)}")
    download("config.json")  # timm's model config (its architecture), where the repo has one
    card = getattr(info, "card_data", None)
    licence = (getattr(card, "license", None) if card is not None else None) or next(
        (t.split(":", 1)[1] for t in (getattr(info, "tags", None) or [])
         if t.startswith("license:")), None)
    if licence:
        return path, str(licence), f"stated by the hub's model card of {src.repo}"
    if src.licence:
        return path, src.licence, "stated by timm's pretrained config"
    return path, "none stated", f"read the model card of {src.repo} before use"


def _unreachable(src: Source, endpoint: Optional[str], exc: BaseException) -> HubError:
    return HubError(f"cannot fetch {src.ref} from {endpoint or 'https://huggingface.co'}: "
                    f"{_reason(exc)} (fetch on a machine with internet, e.g. a login node; "
                    f"HF_ENDPOINT selects a mirror)")


def _fetch_url(src: Source, mirror: Optional[str]) -> str:
    import torch.hub
    target = torch_checkpoints() / Path(urlparse(src.url).path).name
    if target.is_file():
        return str(target)
    url = src.url
    if mirror:
        url = mirror.rstrip("/") + urlparse(src.url).path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # torch.hub writes a temporary file and moves it into place
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError
        raise HubError(f"cannot fetch {src.ref} from {url}: {_reason(exc)} (fetch on a "
                       f"machine with internet, e.g. a login node; --url-mirror selects a "
                       f"mirror)") from None
    return str(target)


# ---------------------------------------------------------------- what is cached


def cached() -> List[Tuple[str, Path, int]]:
    """``(reference, file, bytes)`` of every weights file in the caches: hub repos (timm
    repos by their ``timm:`` name) and torch.hub checkpoints (by torchvision's name where
    one matches the file)."""
    rows: List[Tuple[str, Path, int]] = []
    hub = hf_cache()
    if hub.is_dir():
        from huggingface_hub import scan_cache_dir
        for repo in scan_cache_dir(hub).repos:
            if repo.repo_type != "model":
                continue
            name = (f"timm:{repo.repo_id[5:]}" if repo.repo_id.startswith("timm/")
                    else f"hf-hub:{repo.repo_id}")
            for revision in repo.revisions:
                rows += [(name, f.file_path, f.size_on_disk) for f in revision.files
                         if f.file_name in HF_FILES]
    folder = torch_checkpoints()
    if folder.is_dir():
        names = _torchvision_files()
        rows += [(names.get(p.name, p.name), p, p.stat().st_size)
                 for p in sorted(folder.iterdir()) if p.is_file()]
    return rows


def _torchvision_files() -> Dict[str, str]:
    """torchvision's weights by the file name of their URL."""
    from torchvision.models import get_model_weights, list_models
    out: Dict[str, str] = {}
    for model in list_models():
        for weights in get_model_weights(model):
            out.setdefault(Path(urlparse(weights.url).path).name, f"torchvision:{weights}")
    return out
