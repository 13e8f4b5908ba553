"""The evaluation-protocol table: the one owner of what an evaluation protocol and its
modes are (pure data, no torch).

A :class:`Protocol` names its config section, its CLI command and options, its runner
(``"module:function"``, resolved in :mod:`hpt_hpc.eval` with :func:`importlib`), the function
that turns its trials into an :class:`~hpt_hpc.eval.record.EvalRecord`, its report section
title and its modes. A :class:`Mode` of the linear protocol names its runner (given the
probe inputs, returns the trials), its help line and whether it trains a head (False: a
deterministic vote, one trial, no repeats, no probe steps). Everything else (the config's
``probe.mode`` choices, the CLI's ``--mode``, sweep axes, records, cells, reports) reads
them from here; :func:`probe_mode` is the one rule of which mode a record's cell is in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

LINEAR, FINETUNE = "linear", "finetune"
CACHED, AUGMENTED, KNN, NCM = "cached", "augmented", "knn", "ncm"


@dataclass(frozen=True)
class Option:
    """A CLI option of a protocol's command: ``flag`` sets ``key`` of the protocol's config
    section; ``kind``: ``mode`` (one of the protocol's modes), ``count`` (an int >= 1) or
    ``int``; unset, the config's value applies."""

    flag: str
    key: str
    kind: str
    help: str


@dataclass(frozen=True)
class Mode:
    """A mode of a protocol: ``runner`` (``"module:function"``) returns its trials."""

    name: str
    runner: str
    help: str
    trained: bool = True  # False: a deterministic vote (one trial, nothing trained)
    label: str = ""  # a vote's name in descriptions (``kNN (k=20)``)
    title: str = ""  # the report's protocol-check title ("": the record's evaluation)


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol (see the module docstring)."""

    name: str
    section: str  # its config section
    command: str  # its CLI command (``hpt-hpc <command>``)
    runner: str  # ``"module:function"`` -> (EvalRecord, trials)
    record: str  # ``"module:function"``: its trials -> its EvalRecord
    title: str  # its name in descriptions (``fine-tune (100 labels)``)
    heading: str = ""  # its report section's heading (after ``<dataset>: ``)
    modes: Tuple[Mode, ...] = ()
    options: Tuple[Option, ...] = ()

    @property
    def default_mode(self) -> str:
        """The first mode ("": a protocol without modes)."""
        return self.modes[0].name if self.modes else ""

    @property
    def mode_names(self) -> Tuple[str, ...]:
        return tuple(m.name for m in self.modes)

    def mode(self, name: str) -> Optional[Mode]:
        return next((m for m in self.modes if m.name == name), None)


_LINEAR_OPTIONS = (
    Option("--mode", "mode", "mode", "default: probe.mode."),
    Option("--repeats", "repeats", "count",
           "Independent probes (seeds seed..seed+N-1), reported as mean +- std "
           "(default: probe.repeats)."))
_FINETUNE_OPTIONS = (
    Option("--labels", "labels", "count",
           "Labelled training images, at least one per class (default: finetune.labels)."),
    Option("--label-seed", "label_seed", "int",
           "Seed choosing the labelled images (default: finetune.label_seed)."),
    Option("--iterations", "iterations", "count", "SGD steps (default: finetune.iterations)."))

PROTOCOLS: Dict[str, Protocol] = {p.name: p for p in (
    Protocol(LINEAR, "probe", "probe", "hpt_hpc.eval.runner:evaluate_linear",
             "hpt_hpc.eval.runner:linear_record", "linear probe", "linear probe vs target "
             "pretraining steps", (
                 Mode(CACHED, "hpt_hpc.eval.runner:cached_trials",
                      "features once, no augmentation"),
                 Mode(AUGMENTED, "hpt_hpc.eval.runner:augmented_trials",
                      "the paper's random-resized-crop + flip every step",
                      title="the paper's augmented probe"),
                 Mode(KNN, "hpt_hpc.eval.knn:knn_trials",
                      "a k-nearest-neighbour vote on the cached features (probe.knn_k, "
                      "probe.knn_temperature)", trained=False, label="kNN"),
                 Mode(NCM, "hpt_hpc.eval.ncm:ncm_trials",
                      "nearest class mean: cosine similarity to each class's mean of the "
                      "normalised cached training features (one label per image)",
                      trained=False, label="NCM"),
             ), _LINEAR_OPTIONS),
    Protocol(FINETUNE, "finetune", "finetune", "hpt_hpc.eval.runner:evaluate_finetune",
             "hpt_hpc.eval.runner:finetune_record", "fine-tune",
             "semi-supervised fine-tuning", (), _FINETUNE_OPTIONS),
)}
LINEAR_MODES = PROTOCOLS[LINEAR].mode_names  # probe.mode's values


def find_mode(protocol: str, mode: str) -> Optional[Mode]:
    """The table's mode of a record's ``mode`` text (``knn (k=20)``: knn); None for a
    protocol without modes or an unknown mode."""
    entry = PROTOCOLS.get(protocol)
    return entry.mode(mode.split(" ")[0]) if entry else None


def probe_mode(protocol: str, mode: str) -> str:
    """The mode a record, cell, sweep unit or report uses: the table's mode named by the
    record's ``mode`` text, the protocol's default mode for any other text (``cached (raw
    pixels)``: cached), "" for a protocol without modes (fine-tuning)."""
    entry = PROTOCOLS.get(protocol)
    if entry is None or not entry.modes:
        return ""
    found = find_mode(protocol, mode)
    return found.name if found else entry.default_mode
