"""The Python API for notebooks and scripts, re-exported by the package (``import
hpt_hpc``; this module, and torch with it, is imported on the first use of a name):

* :func:`load_backbone` - an export file, a toolkit checkpoint or a reference
  (``stage:<name>``, ``models:/...``, ``runs:/...``) -> :class:`Backbone`: a plain
  ``nn.Module`` in eval mode and its :class:`Preprocessing` (PIL image -> tensor);
* :func:`embed` - features of images (a folder, image files, PIL images) as a numpy array,
  through the evaluation's test view and feature extraction;
* :func:`results` - a sweep's evaluations as the results table (a pandas DataFrame, or a
  list of dicts), the table of the report's CSV;
* :func:`export` - an export file with its preprocessing and provenance (``hpt-hpc
  export``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from .config import (ExperimentConfig, InitRef, OutputLayout, StageLayout, config_from_dict,
                     load_config)
from .data import build_eval_loader, build_eval_transform
from .data.bands import read_image
from .data.images import convert_image
from .data.sources import ImageRecord, scan_folder
from .data.specs import eval_spec, preprocessing_configs
from .device import resolve_device
from .errors import HptError
from .files import output_file
from .eval.probe import extract_features
from .eval.runner import EXTRACT_BATCH, seeded_backbone
from .eval.splits import kept_paths
from .experiments.results import RESULT_COLUMNS, Planned, result_rows, rows_from_files
from .models.resolve import resolve
from .models import CHECKPOINT_FORMAT, backbone_for_features, build_encoder, load_backbone_into
from .models.export import (MODEL_KEYS, export_backbone, export_meta, export_meta_of,
                            load_export_file, read_export, read_toolkit_checkpoint,
                            save_export, wants_safetensors)
from .plan import tracking_target
from .plan.experiment import load_experiment

__all__ = ["Backbone", "Preprocessing", "embed", "export", "load_backbone", "results"]

PathLike = Union[str, os.PathLike]
DOWNLOADS = Path.home() / ".cache" / "hpt-hpc"  # registry downloads without a config
_STORED = ("model", "moco", "data", "augment", "probe")  # what a checkpoint's config gives here


class Preprocessing:
    """The evaluation's test view named by ``values`` (an export file's
    ``meta["preprocessing"]``): a PIL image, an image file or a band tensor ->
    normalised float tensor ``(channels, input_size, input_size)``."""

    def __init__(self, values: Dict[str, Any]):
        self.data, self.probe = preprocessing_configs(values)
        self.values = eval_spec(self.data, self.probe).preprocessing()
        self._transform = build_eval_transform(self.data, self.probe)

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, (str, os.PathLike)):
            image = read_image(os.fspath(image), self.data.channels, self.data.max_pixels)
        elif not isinstance(image, torch.Tensor):
            if self.data.channels not in (1, 3):
                raise HptError(f"{self.data.channels}-band images: pass the image file "
                               f"(or a band tensor), not a PIL image")
            image = convert_image(image, self.data.channels)
        return self._transform(image)

    def __repr__(self) -> str:
        return f"Preprocessing({self.values})"


class Backbone(NamedTuple):
    """A loaded backbone: ``model`` (pooled features, eval mode, on the CPU), its
    ``preprocess`` and ``meta`` (the export file's, or built from the checkpoint; empty
    for a foreign file)."""

    model: torch.nn.Module
    preprocess: Preprocessing
    meta: Dict[str, Any]


def _config(config: Union[None, PathLike, ExperimentConfig]) -> Optional[ExperimentConfig]:
    if config is None or isinstance(config, ExperimentConfig):
        return config
    return load_config(os.fspath(config))


def _stored_config(checkpoint: Dict[str, Any]) -> ExperimentConfig:
    """The model, MoCo, data, augment and probe settings a toolkit checkpoint was trained
    with (augment: its checks depend on data.channels)."""
    stored = checkpoint.get("config") or {}
    return config_from_dict({k: stored[k] for k in _STORED if k in stored})


def _resolve(source: PathLike, cfg: Optional[ExperimentConfig],
             tracking_uri: Optional[str]) -> str:
    """The local file of ``source`` (a file or an :class:`InitRef` reference)."""
    ref = InitRef.parse(os.fspath(source), "load_backbone").absolute()
    if ref.is_random:
        raise HptError("load_backbone needs a checkpoint: an export file, a checkpoint "
                       "file, stage:<name>, models:/<name>@<alias> or runs:/<id>/<path>")
    if ref.kind == "stage" and cfg is None:
        raise HptError(f"load_backbone('{ref}') needs config= (the config whose "
                       f"output_dir holds the stage)")
    layout = OutputLayout(Path(cfg.output_dir).resolve()).evaluations if cfg is not None \
        else StageLayout(DOWNLOADS, "downloads")
    if tracking_uri is None:
        target = tracking_target(cfg) if cfg is not None else None
        tracking_uri = target.uri if target else os.environ.get("MLFLOW_TRACKING_URI")
    return resolve(ref, layout, tracking_uri, who="load_backbone").path


def load_backbone(source: PathLike, *, config: Union[None, PathLike, ExperimentConfig] = None,
                  tracking_uri: Optional[str] = None) -> Backbone:
    """The backbone of ``source``: an export file (``hpt-hpc export``), a toolkit
    checkpoint, ``stage:<name>`` (in ``config``'s output_dir), ``models:/<name>@<alias>``
    or ``runs:/<id>/<path>`` (from ``tracking_uri``, else ``config``'s store, else
    ``MLFLOW_TRACKING_URI``), or public weights from the model cache (``timm:…``,
    ``torchvision:…``, ``hf-hub:…``). A foreign file (official MoCo, OpenSelfSup,
    torchvision, timm, safetensors) needs ``config`` for its architecture and
    preprocessing."""
    cfg = _config(config)
    path = _resolve(source, cfg, tracking_uri)
    loaded = load_export_file(path)
    exported = read_export(loaded)
    if exported is not None:
        state, meta = exported
        model_meta = meta["model"]
        encoder = build_encoder(**{k: model_meta.get(k) for k in MODEL_KEYS
                                   if model_meta.get(k) is not None},
                                image_size=model_meta.get("image_size")
                                or meta["preprocessing"]["input_size"])
        load_backbone_into(encoder, state, f"{path} (the model its meta names)")
        model = backbone_for_features(encoder)
        return Backbone(model.eval(), Preprocessing(meta["preprocessing"]), meta)
    toolkit = isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT
    if toolkit:
        cfg = _stored_config(loaded)
    elif cfg is None:
        raise HptError(f"{path} is neither an hpt-hpc export nor an hpt-hpc checkpoint: "
                       f"pass config= (its model and data settings) to load it")
    values = eval_spec(cfg.data, cfg.probe).preprocessing()
    model = seeded_backbone(cfg, path)
    meta = export_meta(loaded, "checkpoint", values, model) if toolkit else {}
    del loaded
    return Backbone(model.eval(), Preprocessing(values), meta)


def _records(images: Any) -> Optional[List[ImageRecord]]:
    """Records of a folder (every image below it) or of image files; ``None`` for images
    in memory."""
    if isinstance(images, (str, os.PathLike)):
        if not Path(images).is_dir():
            raise HptError(f"embed: '{os.fspath(images)}' is not a folder; pass a folder, "
                           f"a list of image files or a list of PIL images")
        return list(scan_folder(os.fspath(images)).records)
    if images and all(isinstance(i, (str, os.PathLike)) for i in images):
        return [ImageRecord(os.fspath(i), ()) for i in images]
    return None


def embed(model: Union[PathLike, Backbone, Tuple[torch.nn.Module, Preprocessing]],
          images: Any, *, config: Union[None, PathLike, ExperimentConfig] = None,
          batch_size: int = EXTRACT_BATCH, device: Optional[str] = None,
          return_paths: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, List[str]]]:
    """Features (float32, one row per image) of ``images`` - a folder (every image below
    it, in listing order), image files, or PIL images / band tensors - through the
    backbone (a :class:`Backbone`, a ``(model, preprocess)`` pair, or anything
    :func:`load_backbone` takes). Unreadable files are skipped with a warning;
    ``return_paths`` also returns the paths of the rows (files only)."""
    if not isinstance(model, tuple):
        model = load_backbone(model, config=config)
    net, preprocess = model[0], model[1]
    device = resolve_device(device or "auto")
    if not isinstance(images, (str, os.PathLike)):
        images = list(images)
    records = _records(images)
    if records is not None:
        batches = build_eval_loader(records, preprocess.data, batch_size=batch_size,
                                    probe=preprocess.probe)
    else:
        tensors = [preprocess(image) for image in images]
        if not tensors:
            raise HptError("embed: no images given")
        batches = [(torch.stack(tensors[i:i + batch_size]),
                    torch.zeros(len(tensors[i:i + batch_size]), dtype=torch.long))
                   for i in range(0, len(tensors), batch_size)]
    features = extract_features(net.to(device), batches, device).x.numpy()
    if not return_paths:
        return features
    if records is None:
        raise HptError("embed: return_paths needs image files or a folder")
    return features, kept_paths(records, batches)


def results(source: PathLike, *, as_frame: Optional[bool] = None) -> Any:
    """A sweep's finished evaluations (``source``: its experiment file, then those of the
    units it plans, as its report; or its output folder, then all) as the results table -
    the rows and columns of the report's CSV: a pandas DataFrame when pandas is installed
    (``as_frame=False``: a list of dicts)."""
    source, keep = Path(source), (lambda unit: True)
    if source.is_dir():
        output = source
    elif source.is_file():
        spec = load_experiment(str(source))
        output, keep = Path(spec.output_dir), Planned.by(spec)
    else:
        raise HptError(f"results: '{source}' is neither an experiment file nor a sweep's "
                       f"output folder")
    rows = result_rows(rows_from_files(output, keep), output)
    if as_frame is False:
        return rows
    try:
        import pandas
    except ImportError:
        if as_frame:
            raise HptError("results(as_frame=True) needs pandas (pip install pandas)") \
                from None
        return rows
    return pandas.DataFrame(rows, columns=list(RESULT_COLUMNS))


def export(checkpoint: PathLike, out: PathLike, fmt: Optional[str] = None) -> Dict[str, Any]:
    """Write the backbone of a toolkit ``checkpoint`` to ``out`` (see
    :mod:`hpt_hpc.models.export`) with its preprocessing and provenance; returns the
    file's ``meta``. ``fmt``: ``torchvision``, ``timm`` or ``moco`` (None: the model's
    library); an ``out`` ending in ``.safetensors`` is a safetensors file."""
    checkpoint, out = os.fspath(checkpoint), os.fspath(out)
    output_file(out, {"the checkpoint this command reads": checkpoint})
    state = read_toolkit_checkpoint(checkpoint)
    cfg = _stored_config(state)
    exported = export_backbone(state, fmt, eval_spec(cfg.data, cfg.probe).preprocessing(),
                               safetensors=wants_safetensors(out))
    save_export(exported, out)
    return export_meta_of(exported)
