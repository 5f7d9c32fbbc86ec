"""Where the gallery may read: the deployment's ``[vibedream] gallery_roots``, never a record.

A record names a URI; the gallery looks it up among the configured roots and reads it, with the
root's own connection, only when it lies under one. Everything else is refused: another scheme, a
case variant of one (``FILE://``, ``S3://``), ``local://`` and friends, a ``..``, ``.`` or empty
segment, a backslash or a control character, a query or fragment. The check is on the text alone
(no I/O); local files are then opened race-free beneath the root (see :mod:`.sources`).

``gallery_roots`` is a JSON object: each key a root, each value the connection id the api-server
reads that root with (``null`` for local directories)::

    {"/data/upscaled": null, "s3://my-bucket/upscaled/": "aws_default"}

A root is **per DAG** by default: a record of DAG ``d`` is served only what lies under
``<root>/<folder of d>/`` (the operators store there: ``<output_path>/<dag folder>/<run folder>/...``,
each folder named by :func:`~airflow_vibedream.files.storage.safe_segment`), so a record written in one
DAG cannot show another DAG's images to its readers. Every two DAG ids have different folders
(``reports`` and ``reports_`` do not share ``reports/``) and none begins with ``_``, so no DAG's
folder is the ledger's (``_vibedream_ledger``). A root whose files every reader may see (a bucket
of inputs) says so: ``{"s3://inputs/photos/": {"conn_id": "aws_default", "shared": true}}``.

When a record's image is not served, :meth:`GalleryRoots.refusal` says which rule kept it out, in
words for the gallery's readers: a root is named by its ``name`` (``{"conn_id": null, "name":
"outputs"}``), else an object-store root by its URI and a local one by its place in the setting
(``gallery root #1``), never by its path on the api-server.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

#: What may appear in a URI the gallery reads: no control character, no backslash.
_CLEAN = re.compile(r"^[^\x00-\x1f\x7f\\]+$")
#: An object store URI as written by the operators: lower-case scheme, bucket, key.
_STORE_URI = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<bucket>[^/?#]+)/(?P<key>[^?#]*)$")
#: Schemes that name the api-server's own file system: only ever through a local root.
_LOCAL_SCHEMES = frozenset({"file", "local"})


class RootsConfigError(ValueError):
    """``[vibedream] gallery_roots`` is not a JSON object of roots to connection ids."""


def _segments_ok(parts: list[str]) -> bool:
    """Every segment is a real name: not empty, not ``.`` or ``..``."""
    return all(part not in ("", ".", "..") for part in parts)


@dataclass(frozen=True)
class LocalRoot:
    """A directory of the api-server whose files the gallery may serve.

    :param directory: the directory, resolved once when the configuration is read.
    :param shared: every DAG's records may be served its files (else only under ``<dag_id>/``).
    :param label: how answers name it (its ``name``, or its place in the setting): never its path.
    """

    directory: Path
    shared: bool = False
    label: str = "a gallery root"

    def __str__(self) -> str:
        return str(self.directory)


@dataclass(frozen=True)
class StoreRoot:
    """An object-store prefix the gallery may read with the root's connection.

    :param scheme: ``s3`` (read through the amazon provider's S3Hook), or another fsspec scheme.
    :param bucket: the bucket.
    :param prefix: the key prefix, empty or ending in ``/``.
    :param conn_id: the connection the api-server reads it with (None: the store's default).
    :param shared: every DAG's records may be served its objects (else only under ``<dag_id>/``).
    :param label: how answers name it: its ``name``, else its URI (no path of the api-server).
    """

    scheme: str
    bucket: str
    prefix: str
    conn_id: str | None
    shared: bool = False
    label: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class LocalLocation:
    """A file beneath a local root.

    :param root: the root.
    :param parts: the path's segments below the root (each a plain name).
    """

    root: LocalRoot
    parts: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.parts[-1]


@dataclass(frozen=True)
class StoreLocation:
    """An object beneath an object-store root.

    :param root: the root (its connection is the one used).
    :param key: the object's key.
    """

    root: StoreRoot
    key: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def uri(self) -> str:
        return f"{self.root.scheme}://{self.root.bucket}/{self.key}"


Location = LocalLocation | StoreLocation


def _store_root(root: str, conn_id: str | None, shared: bool, name: str | None) -> StoreRoot:
    match = _STORE_URI.match(root if root.count("/") > 2 else root + "/")
    if match is None or match["scheme"] in _LOCAL_SCHEMES or not _CLEAN.match(root):
        raise RootsConfigError(f"gallery root {root!r} is not scheme://bucket/prefix/")
    prefix = match["key"]
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if prefix and not _segments_ok(prefix[:-1].split("/")):
        raise RootsConfigError(f"gallery root {root!r} has an empty, '.' or '..' segment")
    label = name or f"{match['scheme']}://{match['bucket']}/{prefix}"
    return StoreRoot(match["scheme"], match["bucket"], prefix, conn_id, shared, label)


#: The keys of a root's setting in its object form.
_ROOT_KEYS = frozenset({"conn_id", "shared", "name"})


def _root_setting(root: object, setting: object) -> tuple[str | None, bool, str | None]:
    """(connection id, shared, name) of one root: a connection id or null, or
    ``{"conn_id", "shared", "name"}`` (each optional)."""
    if setting is None or isinstance(setting, str):
        return setting, False, None
    if (
        isinstance(setting, dict)
        and set(setting) <= _ROOT_KEYS
        and (setting.get("conn_id") is None or isinstance(setting.get("conn_id"), str))
        and isinstance(setting.get("shared", False), bool)
        and (setting.get("name") is None or _is_label(setting.get("name")))
    ):
        return setting.get("conn_id"), bool(setting.get("shared", False)), setting.get("name")
    raise RootsConfigError(
        f"gallery root {root!r}: the value must be a connection id, null, "
        "or {'conn_id': ..., 'shared': true, 'name': '...'}"
    )


def _is_label(name: object) -> bool:
    """A root's ``name``: short printable text (it is shown to the gallery's readers)."""
    return isinstance(name, str) and 0 < len(name) <= 100 and bool(_CLEAN.match(name))


@dataclass(frozen=True)
class GalleryRoots:
    """The roots of one deployment.

    :param local: local directories.
    :param stores: object-store prefixes with their connections.
    """

    local: tuple[LocalRoot, ...] = ()
    stores: tuple[StoreRoot, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> GalleryRoots:
        """From the setting's JSON text (empty: no roots, the gallery shows no bytes)."""
        if not text or not text.strip():
            return cls()
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise RootsConfigError(f"[vibedream] gallery_roots is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise RootsConfigError("[vibedream] gallery_roots must be a JSON object {root: conn_id}")
        local: list[LocalRoot] = []
        stores: list[StoreRoot] = []
        for number, (root, setting) in enumerate(value.items(), start=1):
            conn_id, shared, name = _root_setting(root, setting)
            if not isinstance(root, str):
                raise RootsConfigError(f"gallery root {root!r} must be a text")
            if root.startswith("/"):
                # Named by its place in the setting: its path is the api-server's business.
                local.append(LocalRoot(Path(root).resolve(), shared, name or f"gallery root #{number}"))
            else:
                stores.append(_store_root(root, conn_id or None, shared, name))
        return cls(tuple(local), tuple(stores))

    @classmethod
    def from_config(cls) -> GalleryRoots:
        """From ``[vibedream] gallery_roots``; a broken setting is logged and means no roots."""
        from airflow.providers.common.compat.sdk import conf

        try:
            return cls.parse(conf.get("vibedream", "gallery_roots", fallback="") or "")
        except RootsConfigError as exc:
            log.error("VibeDream gallery: %s; the gallery serves no images until it is fixed", exc)
            return cls()

    def locate(self, uri: object, dag_id: str) -> Location | None:
        """Where ``uri`` lies among the roots, for a record of ``dag_id``, or None when the gallery
        must not read it."""
        for root, inside, key in self._beneath(uri) or []:
            if root.shared or _in_dag_folder(inside, dag_id):
                if isinstance(root, LocalRoot):
                    return LocalLocation(root, tuple(inside))
                return StoreLocation(root, key)
        return None

    def refusal(self, uri: object, dag_id: str) -> str:
        """Why :meth:`locate` gives None for ``uri`` in a record of ``dag_id``: the rule that kept it
        out, for the gallery's readers. A root is named by its label, never by a server path."""
        beneath = self._beneath(uri)
        if not beneath:  # another scheme, a bad segment, or simply outside every root
            return "not under a gallery root"
        # The innermost root the image lies under: the one its owner most likely meant.
        root, _, _ = min(beneath, key=lambda found: len(found[1]))
        folder = f"{root.label.rstrip('/')}/{_dag_folder(dag_id)}/"
        return (
            f"not under {folder} (a gallery root shows each DAG only its own folder): "
            f'use the root itself as output_path, or mark the root "shared"'
        )

    def _beneath(self, uri: object) -> list[tuple[LocalRoot | StoreRoot, list[str], str]] | None:
        """Every root ``uri`` lies beneath, with the path's segments below it and the full key (for
        an object store); None when the text itself is refused (another scheme, a bad segment)."""
        if not isinstance(uri, str) or not _CLEAN.match(uri):
            return None
        if uri.startswith("file://"):
            return self._local(uri[len("file://") :])
        if uri.startswith("/"):
            return self._local(uri)
        match = _STORE_URI.match(uri)
        if match is None:
            return None
        key = match["key"]
        if not key or not _segments_ok(key.split("/")):
            return None
        where = (match["scheme"], match["bucket"])
        return [
            (root, key[len(root.prefix) :].split("/"), key)
            for root in self.stores
            if where == (root.scheme, root.bucket) and key.startswith(root.prefix)
        ]

    def _local(self, path: str) -> list[tuple[LocalRoot | StoreRoot, list[str], str]] | None:
        # ``file://host/...`` names another machine: refused like anything else not a plain path.
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        if not _segments_ok(parts):
            return None
        found: list[tuple[LocalRoot | StoreRoot, list[str], str]] = []
        for root in self.local:
            below = root.directory.parts[1:]
            if tuple(parts[: len(below)]) == below and len(parts) > len(below):
                found.append((root, parts[len(below) :], ""))
        return found


def _dag_folder(dag_id: str) -> str:
    from airflow_vibedream.files.storage import safe_segment

    return safe_segment(dag_id)


def _in_dag_folder(parts: list[str], dag_id: str) -> bool:
    """Whether a path below a root lies in ``dag_id``'s folder, as the operators name it.

    Exact text: :func:`~airflow_vibedream.files.storage.safe_segment` gives every DAG id a folder of its
    own, so no other DAG's folder (nor the ledger's) equals it.

    :param parts: the path's segments below the root.
    :param dag_id: the DAG whose record names the path.
    """
    return len(parts) > 1 and parts[0] == _dag_folder(dag_id)
