"""Directory backends the contract suite runs against: name -> context-manager factory.

Each factory takes a fresh temporary directory and yields an empty, ready
:class:`~services.directory.backend.Backend`; it cleans up (close, stop servers) on exit.
Add a backend with one entry in :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from services.directory.backend import Backend


@contextmanager
def sqlite_backend(tmp: Path) -> Iterator[Backend]:
    """A SqliteBackend on a new file in ``tmp``."""
    from services.directory.sqlite import SqliteBackend

    backend = SqliteBackend(str(tmp / "directory.sqlite"))
    try:
        yield backend
    finally:
        backend.close()


@contextmanager
def ldap_backend(tmp: Path) -> Iterator[Backend]:
    """An LdapBackend on a private slapd (our schema, empty base DIT) in ``tmp``."""
    from services.config import LdapConfig
    from services.directory.ldap import LdapBackend
    from tests.conftest import require_binary
    from tests.integration.slapd_server import SlapdServer

    server = SlapdServer(tmp / "slapd", binary=require_binary("slapd"))
    server.start()
    try:
        backend = LdapBackend(
            LdapConfig(
                uris=(server.uri,),
                base_dn=server.base_dn,
                bind_dn=server.service_dn,
                bind_password_file=str(server.password_file),
            )
        )
        try:
            yield backend
        finally:
            backend.close()
    finally:
        server.stop()


BACKENDS: dict[str, Callable[[Path], AbstractContextManager[Backend]]] = {
    "sqlite": sqlite_backend,
    "ldap": ldap_backend,
}
