"""Taking a trained backbone out: this toolkit's checkpoint -> the state dict other code
loads (``hpt-hpc export``).

* ``torchvision``: the query encoder's backbone (no projection head) with torchvision
  ResNet keys: ``model = torchvision.models.resnet50(); model.fc = torch.nn.Identity();
  model.load_state_dict(state, strict=True)`` (a stage trained with ``model.width: 1``,
  no small stem and 3 channels is exactly torchvision's architecture; other settings load
  into :func:`hpt_hpc.models.build_resnet` with the same keys);
* ``moco``: the official MoCo layout, ``{"state_dict": {"module.encoder_q.<key>": ...},
  "arch": ...}``, projection head included (what MoCo's and HPT's linear-evaluation code
  read).
"""
from __future__ import annotations

from typing import Any, Dict

from ..errors import HptError
from .weights import CHECKPOINT_FORMAT, load_checkpoint

FORMATS = ("torchvision", "moco")


def torchvision_compatible(config: Dict[str, Any]) -> bool:
    """True when a stage's model config is a plain torchvision ResNet."""
    model = config.get("model", {})
    return (model.get("width") == 1.0 and not model.get("small_stem")
            and model.get("in_channels") == 3)


def export_backbone(path: str, fmt: str) -> Dict[str, Any]:
    """The backbone of a toolkit checkpoint in ``fmt`` (see the module docstring)."""
    if fmt not in FORMATS:
        raise HptError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise HptError(f"{path} is not an hpt-hpc checkpoint (format {CHECKPOINT_FORMAT}); "
                       f"export reads this toolkit's final.pt/last.pt files")
    encoder = {k[len("encoder_q."):]: v for k, v in state["model"].items()
               if k.startswith("encoder_q.")}
    if fmt == "moco":
        return {"state_dict": {f"module.encoder_q.{k}": v for k, v in encoder.items()},
                "arch": state["config"]["model"]["arch"]}
    return {k: v for k, v in encoder.items() if not k.startswith("fc.")}
