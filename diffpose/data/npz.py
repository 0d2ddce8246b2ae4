"""npz archives read without running code from them.

VideoPose3D's and DiffPose's files keep dicts in pickled 0-d object arrays, so ``np.load(allow_pickle=True)``
is how their own code reads them, and a crafted file then runs whatever it likes. Here a file must be a real
zip archive (it starts with a zip entry, so a pickle with a zip appended is refused), each member a ``.npy``
entry, and an object array is unpickled by :class:`PlainUnpickler`, which builds numpy arrays, dicts, lists,
strings and numbers and refuses every other global. Nothing else in the package unpickles a user's file.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from diffpose.data.source import DataError

ZIP_MAGIC = b"PK\x03\x04"

# The globals a pickled numpy array of plain data needs, under numpy 1's and numpy 2's module names: the
# functions numpy's own arrays and scalars reduce to.
_NUMPY_GLOBALS = {"_reconstruct": np.zeros(0).__reduce__()[0], "scalar": np.float64(0).__reduce__()[0]}
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(module, name): obj for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, obj in _NUMPY_GLOBALS.items()},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
}


class PlainUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, tuples, strings, bytes and numbers; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only plain data is read)") from None


def _open(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head != ZIP_MAGIC:
            raise DataError(path, "not an npz archive (not a zip file)")
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(path, f"not an npz archive ({e})") from e


def members(path: str | Path) -> list[str]:
    """The array names an npz archive holds."""
    path = Path(path)
    with _open(path) as z:
        return sorted(n.removesuffix(".npy") for n in z.namelist() if n.endswith(".npy"))


def _read_npy(path: Path, key: str, raw: bytes) -> Any:
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if not dtype.hasobject:
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        value = PlainUnpickler(f).load()
    except (ValueError, EOFError, pickle.UnpicklingError, TypeError, AttributeError, IndexError) as e:
        raise DataError(path, f"cannot read member {key!r}: {e}") from e
    if not isinstance(value, np.ndarray) or value.shape != shape:
        raise DataError(path, f"member {key!r}: the pickled data is not the {shape} array its header names")
    return value


def read(path: str | Path, key: str) -> Any:
    """Member ``key`` of an npz archive; a 0-d object array (a pickled dict) is unwrapped to its object.
    Anything unreadable or not plain data raises :class:`DataError` naming the file."""
    path = Path(path)
    with _open(path) as z:
        name = f"{key}.npy"
        if name not in z.namelist():
            found = sorted(n.removesuffix(".npy") for n in z.namelist())
            raise DataError(path, f"no member {key!r} (members: {found})")
        try:
            raw = z.read(name)
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, zlib.error) as e:
            raise DataError(path, f"cannot read member {key!r}: {e}") from e
    value = _read_npy(path, key, raw)
    if value.dtype == object and value.shape == ():
        return value.item()
    return value
