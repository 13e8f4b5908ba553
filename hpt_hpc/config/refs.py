"""``InitRef``: the one parser of a checkpoint reference — where a stage starts from
(``stages.<name>.init``) or which checkpoint an evaluation reads (``--checkpoint``).

Forms: ``null`` (random), ``stage:<name>`` (that stage's final checkpoint in the same
output_dir), a checkpoint file, ``models:/<name>@<alias>`` / ``models:/<name>/<version>``
(the MLflow registry), ``runs:/<run_id>/<path>`` (a run's artifact) and public weights by
name: ``timm:<model>[.<tag>]``, ``torchvision:<Enum>.<NAME>``, ``hf-hub:<org>/<name>``
(read from the libraries' caches, never downloaded at run time: :mod:`hpt_hpc.hub`).
``StageConfig.init`` is an ``InitRef`` from config load on; its string form
(:attr:`InitRef.text`) is what configs, checkpoints and tags hold. The only builder of
``stage:``/``models:/``/``runs:/`` references (:meth:`InitRef.stage_of`,
:meth:`InitRef.registered`, :meth:`InitRef.run_artifact`) and the only reader of their
parts (:attr:`InitRef.model_parts`, :attr:`InitRef.run_parts`); it lists the host paths a
container must bind (:meth:`InitRef.host_paths`), checks a reference before work
(:meth:`InitRef.check`) and names it in tags (:data:`INIT_TAG`). Resolving one to a local
file (downloads) is :func:`hpt_hpc.models.resolve.resolve`'s.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import hub
from ..errors import ConfigError
from .layout import STAGE_NAMES, StageLayout

KINDS = ("random", "stage", "file", "model", "run", *hub.KINDS)
FORMS = ("null (random), stage:<name>, a checkpoint file, models:/<name>@<alias>, "
         "models:/<name>/<version>, runs:/<run_id>/<path>, timm:<model>.<tag>, "
         "torchvision:<Enum>.<NAME> or hf-hub:<org>/<name>")
_MODEL = re.compile(r"models:/[^@/]+(@[\w\-]+|/\d+)")
_RUN = re.compile(r"runs:/[0-9a-f]+/.+")
_PUBLIC = {"timm": (re.compile(r"[a-z0-9_]+(\.[\w\-]+)?"), "timm:<model>[.<tag>]"),
           "torchvision": (re.compile(r"\w+_Weights\.\w+"), "torchvision:<Enum>.<NAME>"),
           "hf-hub": (re.compile(r"[\w.\-]+/[\w.\-]+(@[\w.\-]+)?"), "hf-hub:<org>/<name>")}


INIT_TAG = "hpt.init_source"  # a stage run's tag: where it started (the reference)
OLD_INIT_TAG = "hpt.init"  # the same fact, as runs before #27 also tagged it (read only)


class InitRefError(ConfigError):
    """A reference that cannot be parsed or resolved."""


def run_artifact_path(text: str) -> str:
    """The artifact path of ``runs:/<run_id>/<path>``, refused unless it is relative and
    stays inside the run's artifacts (no ``..``, absolute or empty parts)."""
    rel = text[len("runs:/"):].partition("/")[2]
    if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise InitRefError(f"'{text}': the artifact path '{rel}' must stay inside the run's "
                           f"artifacts (a relative path without '..', '.' or empty parts)")
    return rel


@dataclass(frozen=True)
class InitRef:
    """A parsed reference; ``value`` is the stage name, the file path or the URI."""

    kind: str = "random"
    value: str = ""

    @classmethod
    def parse(cls, text: Optional[str], where: str = "init") -> "InitRef":
        """Parse one of the forms in the module docstring; anything else is an error."""
        if text is None or not str(text).strip():
            return cls()
        text = str(text).strip()
        if text.startswith("stage:"):
            name = text.split(":", 1)[1]
            if name not in STAGE_NAMES:
                raise InitRefError(f"{where}: '{text}' names no stage (stages: "
                                   f"{', '.join(STAGE_NAMES)})")
            return cls("stage", name)
        if text.startswith("models:/"):
            if not _MODEL.fullmatch(text):
                raise InitRefError(f"{where}: '{text}' is not models:/<name>@<alias> or "
                                   f"models:/<name>/<version>")
            return cls("model", text)
        if text.startswith("runs:/"):
            if not _RUN.fullmatch(text):
                raise InitRefError(f"{where}: '{text}' is not runs:/<run_id>/<path>")
            try:
                run_artifact_path(text)
            except InitRefError as exc:
                raise InitRefError(f"{where}: {exc}") from None
            return cls("run", text)
        kind, _, name = text.partition(":")
        if kind in _PUBLIC:
            pattern, form = _PUBLIC[kind]
            if not pattern.fullmatch(name):
                raise InitRefError(f"{where}: '{text}' is not {form}")
            return cls(kind, name)
        if "://" in text:
            raise InitRefError(f"{where}: '{text}' is not a supported reference; use {FORMS}"
                               f" (nothing is downloaded at run time)")
        return cls("file", text)

    @classmethod
    def file(cls, path: object) -> "InitRef":
        return cls("file", str(path))

    @classmethod
    def stage_of(cls, name: str) -> "InitRef":
        """``stage:<name>``: that stage's final checkpoint in the same output_dir."""
        return cls.parse(f"stage:{name}")

    @classmethod
    def registered(cls, name: str, alias: str) -> "InitRef":
        """``models:/<name>@<alias>``: the registry version an alias points to."""
        return cls("model", f"models:/{name}@{alias}")

    @classmethod
    def run_artifact(cls, run_id: str, path: str) -> "InitRef":
        """``runs:/<run_id>/<path>``: one artifact of a run."""
        return cls.parse(f"runs:/{run_id}/{path}")

    @staticmethod
    def run_parts_of(uri: str) -> Optional[Tuple[str, str]]:
        """``(run_id, artifact path)`` when ``uri`` is a ``runs:/`` URI (a registered
        version's source), else ``None``; a path leaving the run's artifacts is refused."""
        if not uri.startswith("runs:/"):
            return None
        return uri[len("runs:/"):].split("/", 1)[0], run_artifact_path(uri)

    @property
    def model_parts(self) -> Tuple[str, Optional[str], Optional[str]]:
        """``(name, alias, version)`` of a registry reference (one of the last two set)."""
        ref = self.value[len("models:/"):]
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return name, alias, None
        name, version = ref.rsplit("/", 1)
        return name, None, version

    @property
    def run_parts(self) -> Tuple[str, str]:
        """``(run_id, artifact path)`` of a run reference."""
        return self.run_parts_of(self.value)

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    @property
    def is_public(self) -> bool:
        """Public weights by name, read from the model cache (:mod:`hpt_hpc.hub`)."""
        return self.kind in hub.KINDS

    @property
    def in_registry(self) -> bool:
        """Resolved through the tracking store (``models:/``, ``runs:/``)."""
        return self.kind in ("model", "run")

    @property
    def text(self) -> Optional[str]:
        """The reference as written in a config (``None`` for random)."""
        if self.kind == "random":
            return None
        if self.kind == "stage" or self.is_public:
            return f"{self.kind}:{self.value}"
        return self.value

    def __str__(self) -> str:
        return self.text or "random"

    def absolute(self) -> "InitRef":
        """File references as absolute paths (jobs may run in another directory)."""
        if self.kind != "file":
            return self
        return InitRef("file", str(Path(self.value).expanduser().resolve()))

    def local_path(self, layout: Optional[StageLayout]) -> Optional[Path]:
        """The file a file or stage reference reads (``None`` for the others)."""
        if self.kind == "file":
            return Path(self.value)
        if self.kind == "stage":
            if layout is None:
                raise InitRefError(f"'{self}' needs an output_dir to be resolved in")
            return layout.sibling(self.value).final
        return None

    def host_paths(self) -> List[Path]:
        """Host paths a container must bind to read this reference (stage and registry
        references live in the output folder or the tracking store, bound anyway; public
        weights in the model cache)."""
        if self.is_public:
            return hub.cache_folders(self.kind, self.value)
        return [Path(self.value).resolve()] if self.kind == "file" else []

    def tags(self) -> Dict[str, str]:
        """How the run records where it started (before resolution)."""
        return {} if self.is_random else {INIT_TAG: str(self)}

    def check(self, layout: Optional[StageLayout], pending: tuple = (),
              who: str = "stage") -> None:
        """Fail before any work when a file is missing or a stage reference names a stage
        that is neither finished nor in ``pending`` (stages that will run first), or
        public weights are not in the model cache. Registry references are checked when
        they resolve."""
        if self.is_public:
            self.public(who)
        if self.kind == "file" and not Path(self.value).is_file():
            raise InitRefError(f"{who}: init checkpoint '{self.value}' does not exist; copy "
                               f"the file here first (nothing is downloaded at run time)")
        if self.kind == "stage" and self.value not in pending:
            final = self.local_path(layout)
            if not final.is_file():
                raise InitRefError(f"{who} starts from stage '{self.value}', which is neither "
                                   f"in this --chain nor finished ({final} missing)")

    def public(self, who: str) -> "hub.Located":
        """The cached file of public weights (one line naming the fetch command if not)."""
        try:
            return hub.locate(self.kind, self.value)
        except hub.HubError as exc:
            raise InitRefError(f"{who}: {exc}") from None
