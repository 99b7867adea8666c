"""Unpickling checkpoint files without letting them run code.

A pickle names the globals it needs and may *call* any of them while loading, which is how a
poisoned checkpoint runs ``os.system``. :class:`RestrictedUnpickler` resolves every global itself:

* tensors, storages, dtypes, plain containers (the globals ``torch.load(weights_only=True)``
  allows, plus any the user registered with ``torch.serialization.add_safe_globals``) and NumPy
  arrays, dtypes and scalars (Detectron2/Caffe2 ``.pkl`` files hold NumPy weights) are rebuilt;
* any other class that the pickle only *instantiates* as data (``NEWOBJ`` and ``BUILD``, e.g. an
  mmcv ``ConfigDict`` in a released file's ``meta``) becomes an :class:`InertObject` that records
  its items and state; its module is never imported;
* any other global that the pickle would *call* (``REDUCE``: ``os.system``, ``builtins.eval``,
  ``subprocess.Popen``, an unknown class's constructor) raises :class:`RefusedGlobalError`, before
  the call.

Released MMCls/MMDet/MMSeg files therefore load without the OpenMMLab packages installed, and a
payload fails the load with an error that names the global.
"""

from __future__ import annotations

import _compat_pickle
import datetime
import pickle
import types
from typing import Any, BinaryIO, Dict, Tuple

import torch

__all__ = [
    "InertObject",
    "RefusedGlobalError",
    "RestrictedUnpickler",
    "restricted_pickle_load",
    "restricted_torch_load",
]


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle asked to call a global that could run code; nothing was called."""

    def __init__(self, module: str, name: str):
        super().__init__(f"refused global {module}.{name}")
        self.module = module
        self.name = name

    def __reduce__(self) -> Tuple[Any, ...]:
        # DataLoader workers and multiprocessing re-raise errors by pickling them.
        return (type(self), (self.module, self.name))


class _InertMeta(type):
    """Metaclass of the stand-ins: calling one (pickle's REDUCE) is refused."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RefusedGlobalError(cls._pickled_module, cls._pickled_name)


class InertObject(dict, metaclass=_InertMeta):
    """Data of a class this loader does not rebuild: its dict items, list items and state.

    ``type(obj).__qualname__`` is the original ``module.name``; ``obj.items_list`` holds what the
    pickle appended and ``obj.state`` what it would have passed to ``__setstate__``.
    """

    _pickled_module = ""
    _pickled_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":
        obj = dict.__new__(cls)
        obj.new_args = args
        obj.items_list = []
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # never called by the unpickler
        pass

    def append(self, item: Any) -> None:
        self.items_list.append(item)

    def extend(self, items: Any) -> None:
        self.items_list.extend(items)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __reduce__(self) -> Tuple[Any, ...]:
        # Re-saving a loaded dict keeps the data, as a plain dict, not the unknown class.
        return (dict, (dict(self),))

    def __repr__(self) -> str:
        return f"<inert {self._pickled_module}.{self._pickled_name} {dict.__repr__(self)}>"


_INERT_CLASSES: Dict[Tuple[str, str], type] = {}


def _inert_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _INERT_CLASSES:
        _INERT_CLASSES[key] = _InertMeta(
            name,
            (InertObject,),
            {"_pickled_module": module, "_pickled_name": name, "__qualname__": f"{module}.{name}"},
        )
    return _INERT_CLASSES[key]


def _numpy_globals() -> Dict[str, Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch's dependencies here
        return {}
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    found: Dict[str, Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[f"{module}._reconstruct"] = multiarray._reconstruct
        found[f"{module}.scalar"] = multiarray.scalar
    found["numpy.ndarray"] = np.ndarray
    found["numpy.dtype"] = np.dtype
    for name in dir(getattr(np, "dtypes", types.SimpleNamespace())):
        if name.endswith("DType"):
            found[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return found


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocols 0 and 1) limited to stand-ins and plain bases."""
    if isinstance(cls, _InertMeta):
        return cls.__new__(cls)
    if base is object or base is dict or base is list:
        if cls in (dict, list, set, object):
            return cls()
    name = getattr(cls, "__qualname__", repr(cls))
    raise RefusedGlobalError("copyreg._reconstructor", name)


def _allowed_globals() -> Dict[str, Any]:
    allowed: Dict[str, Any] = {}
    try:  # the list torch's weights_only loader uses (tensors, storages, dtypes, containers)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed.update(_get_allowed_globals())
    except ImportError:  # pragma: no cover - a torch that moved its private helper
        from torch._utils import _rebuild_parameter, _rebuild_tensor_v2

        allowed.update(
            {
                "collections.OrderedDict": __import__("collections").OrderedDict,
                "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
                "torch._utils._rebuild_parameter": _rebuild_parameter,
                "torch.Size": torch.Size,
                "torch.device": torch.device,
                "_codecs.encode": __import__("_codecs").encode,
            }
        )
    for obj in torch.serialization.get_safe_globals():
        if isinstance(obj, tuple):  # (object, "module.name")
            allowed[obj[1]] = obj[0]
        else:
            allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    allowed.update(_numpy_globals())
    for cls in (set, frozenset, bytearray, bytes, complex, slice, range, list, dict, tuple):
        allowed[f"builtins.{cls.__name__}"] = cls
    for cls in (datetime.datetime, datetime.date, datetime.time, datetime.timedelta):
        allowed[f"datetime.{cls.__name__}"] = cls
    allowed["datetime.timezone"] = datetime.timezone
    allowed["copyreg._reconstructor"] = _reconstructor
    return allowed


_ALLOWED: Dict[str, Any] = {}


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that never imports or calls a global outside the allow-list."""

    def find_class(self, module: str, name: str) -> Any:
        if not _ALLOWED:
            _ALLOWED.update(_allowed_globals())
        # Python 2 pickles (Caffe2/Detectron1 .pkl) use the old names; none is a Python 3 name.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = _ALLOWED.get(f"{module}.{name}")
        if found is not None:
            return found
        return _inert_class(module, name)


# What torch.load expects of ``pickle_module``: an ``Unpickler`` class and ``load`` (the legacy
# format reads its header with it).
_pickle_module = types.ModuleType("plainmamba_restricted_pickle")
_pickle_module.Unpickler = RestrictedUnpickler
_pickle_module.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()
_pickle_module.UnpicklingError = pickle.UnpicklingError
_pickle_module.__name__ = "plainmamba_restricted_pickle"


def restricted_pickle_load(f: BinaryIO, encoding: str = "latin1") -> Any:
    """Load a plain pickle (e.g. a Detectron2 ``.pkl`` checkpoint) with the restricted loader."""
    return RestrictedUnpickler(f, encoding=encoding).load()


def restricted_torch_load(f: str | BinaryIO, map_location: Any = "cpu") -> Any:
    """``torch.load`` whose pickle goes through :class:`RestrictedUnpickler`.

    Tensors and storages load as usual; the file's code paths are limited to the allow-list.
    """
    return torch.load(
        f, map_location=map_location, weights_only=False, pickle_module=_pickle_module
    )
