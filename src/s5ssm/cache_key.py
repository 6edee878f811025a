"""`CacheKey`: when a cache built from a module still describes it. The one invalidation
rule of the recurrent step, shared by S5SSM's step operator (ssm.py) and the compiled
whole-model step (streaming).

A key records, when the cache is filled, and `current()` compares again:

- which object every module, parameter and buffer slot of the module tree holds: assigning
  a new tensor or submodule (``model.head = ...``, ``load_state_dict(assign=True)``) changes it;
- every parameter's and buffer's storage address (``data_ptr``): ``.to()``, ``.float()``,
  ``.double()`` and ``.data = ...`` give the same Parameter object new storage;
- every module's training flag: ``train()`` / ``eval()``;
- the options the cache was built with (attributes, e.g. ``discretization``);
- with ``values=True``, every tensor's version counter, which each in-place write through
  the tensor bumps: ``optimizer.step()`` (for-loop and foreach), ``load_state_dict``,
  edits under ``torch.no_grad()``. A cache of values computed from the tensors' contents
  needs it; a cache that holds views of the tensors (the compiled step reads them live)
  sees their contents anyway and leaves it out.

Writes that bypass the version counter are not seen by ``values=True``: through ``.data``
(``p.data.copy_(...)``) and fused optimizer kernels (``AdamW(fused=True)``). Inference
tensors have no version counter at all, so a ``values=True`` key over them is never current;
nor is a deep copy of a key (``copy.deepcopy`` of a module carries its caches along).
S5SSM therefore fills its cache only in eval mode and drops it on every ``train()``/``eval()``.

Every comparison is a C-level ``map`` over lists prepared once: at the compiled step's
batch 1 the check is a few percent of a frame.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Iterable

import torch
from torch import nn

_data_ptr = torch.Tensor.data_ptr
_version = operator.attrgetter("_version")
_training = operator.attrgetter("training")


class CacheKey:
    """The state of `module` (slots, storage, training flags, `options`, and with `values`
    the version counters) when a cache was filled; `current()` says whether it still holds.

    Args:
        module: the module tree the cache was computed from.
        options: (object, attribute name) pairs whose values the cache depends on.
        values: also compare version counters (for caches of values computed from the
            tensors' contents; see the module docstring).
    """

    def __init__(self, module: nn.Module, options: Iterable[tuple[object, str]] = (), values: bool = False) -> None:
        modules = list(module.modules())
        slots = [
            (holder, name) for m in modules for holder in (m._modules, m._parameters, m._buffers) for name in holder
        ]
        # the module itself only weakly: a cache stored on it, or keyed by it in a
        # WeakKeyDictionary, must not keep it alive (submodules do not refer to their parent)
        root = weakref.proxy(module)
        self._modules = [root, *modules[1:]]
        self._holders, self._names = [h for h, _ in slots], [n for _, n in slots]
        held = list(map(dict.get, self._holders, self._names))
        self._held = held  # keeps every held object alive, so that no other object reuses its id
        self._ids = list(map(id, held))
        self._tensors = [v for v in held if isinstance(v, torch.Tensor)]
        options = list(options)
        self._option_objects = [root if o is module else o for o, _ in options]
        self._option_names = [n for _, n in options]
        self._values = values
        self._never_current = values and any(t.is_inference() for t in self._tensors)
        self._stamp = None if self._never_current else self._read()

    def _read(self) -> tuple[list, ...]:
        """Everything compared besides the slots: storage, training flags, options, versions."""
        return (
            list(map(_data_ptr, self._tensors)),
            list(map(_training, self._modules)),
            list(map(getattr, self._option_objects, self._option_names)),
            list(map(_version, self._tensors)) if self._values else [],
        )

    def current(self) -> bool:
        """True while the module is as it was when the key was made (see the module docstring)."""
        if self._never_current:
            return False
        return list(map(id, map(dict.get, self._holders, self._names))) == self._ids and self._read() == self._stamp

    def __deepcopy__(self, memo: dict) -> "CacheKey":
        """A copied module's copied cache is rebuilt on first use: the copy is never current."""
        stale = object.__new__(CacheKey)
        stale._never_current = True
        return stale
