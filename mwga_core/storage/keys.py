"""The one key recipe of every store mwga keeps on disk (stage cache, features, model store, index).

A key is a short hex hash of a JSON payload (:func:`entry_key`)::

    key = hash(kind, format version, mwga version, config, input keys, code hash, seed, extra)

* ``kind``: what is stored (a stage name such as ``"flows"`` or ``"features"``, ``"model"``, ``"index"``).
* ``config``: the producing component's config, as plain JSON (:func:`plain`).
* ``inputs``: the keys of what it was computed from (other entries' keys, or :func:`clips_fingerprint`),
  so keys form a chain and a change anywhere upstream changes every key downstream.
* ``code``: :func:`code_version` of the producing components, a hash of the source file of every module
  that defines one of their classes or base classes, and of every project module those import
  (:mod:`mwga_core.storage.imported_modules`): editing a component's module, or a helper it calls,
  changes its keys.
* ``seed``: the run seed (anything may draw random numbers from it).
* ``format_version``: the store's own layout version; bump it when what it writes changes meaning.

Every helper here is pure: the same inputs give the same key in every process and on every machine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from mwga_core import __version__
from mwga_core.api.clips import ClipSet
from mwga_core.storage.imported_modules import imported_project_modules, module_file

#: hex digits = 2 * bytes; 12 bytes (24 hex digits) make a collision practically impossible
KEY_BYTES = 12


def plain(value: Any) -> Any:
    """A config (dataclass, DictConfig, mapping, ...) as JSON-able plain data."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def digest(data: Any, size: int = KEY_BYTES) -> str:
    """A hex hash (``size`` bytes) of JSON-able ``data``; dict order does not matter."""
    text = json.dumps(plain(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


@functools.cache
def module_source_hash(module_name: str) -> str:
    """A short hash of a module's source file; "" when it has none (built-in, compiled).

    The file is found without importing the module (:func:`~mwga_core.storage.imported_modules.module_file`).
    Cached per process: a module edited while a process runs is hashed as it was first read.
    """
    try:
        path = module_file(module_name)
        return hashlib.blake2b(path.read_bytes(), digest_size=6).hexdigest() if path else ""
    except OSError:
        return ""


def code_version(*components: object) -> dict[str, str]:
    """``module -> source hash`` of the modules defining the components' classes and base classes, and of
    every project module they import, directly or through others.

    None entries are skipped, so ``code_version(gradient, model)`` works for sources without a model.
    """
    class_modules = {
        cls.__module__
        for component in components
        if component is not None
        for cls in type(component).__mro__
        if cls.__module__ not in ("builtins", "abc", "typing")
    }
    return modules_version(*class_modules)


def modules_version(*module_names: str) -> dict[str, str]:
    """``module -> source hash`` of the named modules and every project module they import."""
    modules = set().union(*(imported_project_modules(name) for name in module_names))
    return {name: module_source_hash(name) for name in sorted(modules)}


def array_digest(*arrays: np.ndarray | None, extra: Any = None) -> str:
    """A content hash of arrays (bytes, shape, dtype; None counts as a value) and JSON-able ``extra``."""
    hasher = hashlib.blake2b(digest_size=KEY_BYTES)
    for array in arrays:
        if array is None:
            hasher.update(b"none")
            continue
        array = np.ascontiguousarray(array)
        hasher.update(repr((array.shape, str(array.dtype))).encode())
        hasher.update(memoryview(array).cast("B"))
    hasher.update(json.dumps(plain(extra), sort_keys=True, default=str).encode())
    return hasher.hexdigest()


def clips_fingerprint(clips: ClipSet) -> str:
    """The content key of clips: frames, labels and ground-truth flow (bytes, shape, dtype) and ids.

    The one clip fingerprint of mwga: used for clips no cached stage produced (generated queries, a
    dataset without ``cache_fingerprint``) and for what a model was trained on.
    """
    labels = np.asarray(clips.labels, dtype=np.int64)
    return "content-" + array_digest(clips.frames, labels, clips.gt_flow, extra=list(clips.ids))


def entry_key(
    kind: str,
    *,
    config: Any = None,
    inputs: Sequence[str] = (),
    components: Sequence[object] = (),
    seed: int | None = None,
    format_version: int = 1,
    extra: Any = None,
) -> str:
    """The key of one stored entry (see the module docstring for the recipe).

    Args:
        kind: what is stored, e.g. a stage name (``"features"``), ``"model"`` or ``"index"``.
        config: the producing component's config (dataclass, DictConfig or plain data).
        inputs: keys of the entries (or clip fingerprints) it was computed from, in a fixed order.
        components: the objects whose classes' source code determines the result (their modules'
            hashes go in, :func:`code_version`); None entries are skipped.
        seed: the run seed, when the result may depend on it.
        format_version: the store's layout version.
        extra: anything else that changes the result (device, checkpoint id, ...), JSON-able.

    Returns:
        24 hex digits.
    """
    payload = {
        "kind": kind,
        "format": int(format_version),
        "mwga_version": __version__,
        "config": plain(config),
        "inputs": list(inputs),
        "code": code_version(*components),
        "seed": None if seed is None else int(seed),
        "extra": plain(extra),
    }
    return digest(payload)
