"""Keras ``.h5`` (HDF5) weights, read only from bytes inside the file.

HDF5 can make a dataset read from elsewhere: external storage (raw bytes of another
local file), virtual datasets (slices of other files), external links (objects in
another file), and user-defined links. A weights file needs none of them, so each is
refused before any data is read, as are soft links (which would read a tensor twice or
from outside the weights group), filters that would load a plugin, non-numeric
datasets, and datasets that declare far more bytes than the file stores for them.
"""

import numpy as np

from tljax.errors import UserError

# HDF5's built-in filters and h5py's own LZF: anything else would dlopen a plugin.
_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
            6: "scaleoffset", 32000: "lzf"}
_MAX_INFLATION = 1100  # deflate cannot beat ~1032:1


def _check_dataset(ds, where: str) -> None:
    """Raises ``UserError`` unless ``ds`` is a numeric dataset stored inside its file."""
    if ds.is_virtual:
        raise UserError(f"{where} is a virtual dataset (it reads other files); refused")
    if ds.external:
        raise UserError(f"{where} has external storage in {ds.external[0][0]!r}; only data "
                        "inside the file is read")
    if ds.dtype.kind not in "biufc":
        raise UserError(f"{where} has dtype {ds.dtype}, not a numeric tensor")
    plist = ds.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [c for c in codes if c not in _FILTERS]
    if unknown:
        raise UserError(f"{where} uses HDF5 filter {unknown[0]}, which would load a plugin; "
                        f"known: {', '.join(_FILTERS.values())}")
    need, stored = ds.size * ds.dtype.itemsize, ds.id.get_storage_size()
    if stored < need if not codes else stored * _MAX_INFLATION < need:
        raise UserError(f"{where} declares {need} bytes but the file stores {stored} for it; "
                        "truncated or hostile file")


def read_h5(path: str) -> dict:
    """Returns every dataset of an HDF5 file by its path (Keras: ``layer/layer/kernel:0``),
    under ``model_weights`` when the file has that group."""
    import h5py
    from h5py import h5l

    def refuse_links(group):
        # The low-level walk gives each link's type without resolving the link.
        def visit(name, info):  # a non-None return stops the walk (raising here is unsafe)
            return None if info.type == h5l.TYPE_HARD else (name, info.type)

        found = group.id.links.visit(visit, info=True)
        if found:
            name, kind = found
            target = group.id.links.get_val(name) if kind in (h5l.TYPE_SOFT,
                                                               h5l.TYPE_EXTERNAL) else None
            if isinstance(target, tuple):  # external: (file, path)
                target = b":".join(target)
            kinds = {h5l.TYPE_SOFT: "soft link", h5l.TYPE_EXTERNAL: "external link"}
            kind = kinds.get(kind, "user-defined link")
            raise UserError(f"{path!r}: {name.decode(errors='replace')!r} is "
                            f"{'an' if kind[0] == 'e' else 'a'} {kind}"
                            + (f" to {target.decode(errors='replace')!r}" if target else "")
                            + "; only objects inside the file are read")

    out = {}
    try:
        with h5py.File(path, "r") as f:
            root = f
            if f.id.links.exists(b"model_weights"):  # the link itself, not followed
                if f.id.links.get_info(b"model_weights").type != h5l.TYPE_HARD:
                    raise UserError(f"{path!r}: 'model_weights' is a soft or external link; "
                                    "only objects inside the file are read")
                root = f["model_weights"]
            refuse_links(root)
            names = []
            root.visititems(lambda name, obj: names.append(name)
                            if isinstance(obj, h5py.Dataset) else None)
            for name in names:
                where = f"{path!r}: dataset {name!r}"
                ds = root[name]
                _check_dataset(ds, where)
                try:
                    out[name] = np.asarray(ds[()])
                except (OSError, ValueError, RuntimeError) as e:
                    raise UserError(f"{where} cannot be read (corrupt or truncated): "
                                    f"{str(e).splitlines()[0][:200] if str(e) else e!r}") from None
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"cannot read HDF5 file {path!r} (corrupt or truncated): "
                        f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    return out
