"""The site's pseudonym key ring: versioned secrets from a protected file or the environment, hot-reloadable.

File format (mode 0600, owner only)::

    {"active": 2, "keys": {"1": "<64+ hex chars>", "2": "<64+ hex chars>"}}

Rotation without downtime: `rotate_key_file` adds version N+1, makes it active and atomically replaces
the file (write to a temporary file, fsync, rename). Every worker checks the file's identity (inode,
mtime, size) every `PSEUDONYM_KEY_RELOAD_S` seconds through `KeyRingSource.current()`, between batches;
a changed file is re-read and the new active version signs every later output record, which carries
`key_version`. Old versions stay in the ring so that erasure requests can name a participant's
pseudonyms under every version and consent state can be carried over to the new pseudonym.
A file that fails to load (half-edited, bad mode) is ignored with a warning: the worker keeps its ring.

Key material never appears in a log line, an exception message, a repr or a metric.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import SecretBytes

from clinstream.core.config import Settings
from clinstream.core.constants import PSEUDONYM_KEY_RELOAD_S, PSEUDONYM_MIN_KEY_BYTES

log = logging.getLogger("clinstream.pseudonymise.keys")

_FINGERPRINT_LABEL = b"clinstream.key-fingerprint\x00"
ENV_VERSION = 1  # a secret from CLINSTREAM_PSEUDONYM_KEY is key version 1


class KeyRingError(ValueError):
    """The key ring cannot be loaded or changed; the message never contains key material."""


class KeyRing:
    """Versioned HMAC secrets of one site and the version that signs new output."""

    __slots__ = ("_active", "_keys")

    def __init__(self, active: int, keys: Mapping[int, bytes | SecretBytes]) -> None:
        wrapped: dict[int, SecretBytes] = {}
        for version, key in keys.items():
            secret = key if isinstance(key, SecretBytes) else SecretBytes(key)
            if not isinstance(version, int) or version < 1:
                raise KeyRingError("key versions must be positive integers")
            if len(secret.get_secret_value()) < PSEUDONYM_MIN_KEY_BYTES:
                raise KeyRingError(f"key version {version} is shorter than {PSEUDONYM_MIN_KEY_BYTES} bytes")
            wrapped[version] = secret
        if active not in wrapped:
            raise KeyRingError(f"active key version {active} is not in the ring")
        self._active = active
        self._keys = wrapped

    @property
    def active(self) -> int:
        """The version that signs new output."""
        return self._active

    @property
    def versions(self) -> tuple[int, ...]:
        """All versions in the ring, ascending."""
        return tuple(sorted(self._keys))

    def secret(self, version: int) -> bytes:
        """Raw key bytes of a version (for the HMAC only; never log them)."""
        try:
            return self._keys[version].get_secret_value()
        except KeyError:
            raise KeyRingError(f"key version {version} is not in the ring") from None

    def fingerprint(self, version: int) -> str:
        """A short, one-way fingerprint of a version's key, safe to print."""
        return hashlib.sha256(_FINGERPRINT_LABEL + self.secret(version)).hexdigest()[:16]

    def rotated(self, new_secret: bytes | None = None) -> KeyRing:
        """A ring with a new version (max + 1, random unless given) that is active; old versions are kept."""
        version = max(self._keys) + 1
        keys: dict[int, bytes | SecretBytes] = dict(self._keys)
        keys[version] = new_secret if new_secret is not None else secrets.token_bytes(PSEUDONYM_MIN_KEY_BYTES)
        return KeyRing(version, keys)

    def to_json(self) -> bytes:
        """The file representation (contains the secrets: write it only to a 0600 file)."""
        doc = {"active": self._active,
               "keys": {str(v): self._keys[v].get_secret_value().hex() for v in self.versions}}
        return (json.dumps(doc, indent=2) + "\n").encode()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyRing):
            return NotImplemented
        return self._active == other._active and self.versions == other.versions and all(
            secrets.compare_digest(self.secret(v), other.secret(v)) for v in self.versions)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active}, versions={list(self.versions)})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("KeyRing is not picklable (it holds secrets)")


def _hex_key(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyRingError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise KeyRingError(f"{what} is not valid hex") from None


def parse_key_ring(data: bytes) -> KeyRing:
    """Parse the JSON key-ring document."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise KeyRingError("key file is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
        raise KeyRingError('key file must be {"active": <int>, "keys": {"<version>": "<hex>"}}')
    active = doc.get("active")
    if not isinstance(active, int) or isinstance(active, bool):
        raise KeyRingError("key file: 'active' must be an integer version")
    keys: dict[int, bytes | SecretBytes] = {}
    for name, value in doc["keys"].items():
        if not str(name).isdigit():
            raise KeyRingError("key file: key versions must be positive integers")
        keys[int(name)] = _hex_key(value, f"key version {name}")
    return KeyRing(active, keys)


def check_key_file_mode(path: Path) -> os.stat_result:
    """Refuse a key file that is not a regular file or that group or others may read or write."""
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyRingError(f"cannot read key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyRingError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyRingError(f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                           "it must be readable by its owner only (chmod 600)")
    return st


def load_key_file(path: Path) -> KeyRing:
    """Load a key ring from a protected file."""
    check_key_file_mode(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyRingError(f"cannot read key file {path}: {exc.strerror}") from None
    return parse_key_ring(data)


def key_ring_from_secret(secret_hex: str) -> KeyRing:
    """A one-version ring (version 1) from a hex secret, as given in CLINSTREAM_PSEUDONYM_KEY."""
    return KeyRing(ENV_VERSION, {ENV_VERSION: _hex_key(secret_hex, "CLINSTREAM_PSEUDONYM_KEY")})


def load_key_ring(settings: Settings) -> KeyRing:
    """The site's key ring: from `pseudonym_key_file` if set, else from `pseudonym_key` (the environment)."""
    if settings.pseudonym_key_file is not None:
        return load_key_file(Path(settings.pseudonym_key_file))
    if settings.pseudonym_key is not None:
        return key_ring_from_secret(settings.pseudonym_key.get_secret_value())
    raise KeyRingError("no pseudonym key configured: set CLINSTREAM_PSEUDONYM_KEY_FILE "
                       "(see `clinstream keys init`) or CLINSTREAM_PSEUDONYM_KEY")


def write_key_file(path: Path, ring: KeyRing, *, overwrite: bool) -> None:
    """Write a ring atomically with mode 0600: readers see the old file or the new one, never a mix."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyRingError(f"key file {path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, ring.to_json())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def init_key_file(path: Path) -> KeyRing:
    """Create a new key file with one random version-1 key."""
    ring = KeyRing(1, {1: secrets.token_bytes(PSEUDONYM_MIN_KEY_BYTES)})
    write_key_file(path, ring, overwrite=False)
    return ring


def rotate_key_file(path: Path) -> KeyRing:
    """Add a random new version to the key file and make it active; old versions are kept."""
    ring = load_key_file(Path(path)).rotated()
    write_key_file(path, ring, overwrite=True)
    return ring


def _file_identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class KeyRingSource:
    """The current key ring of a worker: re-reads the key file when it changes, at most every few seconds."""

    def __init__(self, settings: Settings, check_every_s: float = PSEUDONYM_KEY_RELOAD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._path = Path(settings.pseudonym_key_file) if settings.pseudonym_key_file is not None else None
        self._every = check_every_s
        self._clock = clock
        self._ring = load_key_ring(settings)
        self._identity = _file_identity(self._path) if self._path is not None else None
        self._next_check = clock() + check_every_s
        self.reloads = 0

    def current(self) -> KeyRing:
        """The ring to use now; cheap (a clock read) between file checks."""
        if self._path is None:
            return self._ring
        now = self._clock()
        if now < self._next_check:
            return self._ring
        self._next_check = now + self._every
        return self.check_now()

    def check_now(self) -> KeyRing:
        """Check the key file at once and reload it if it changed."""
        if self._path is None:
            return self._ring
        try:
            identity = _file_identity(self._path)
        except OSError as exc:
            log.warning("key file unavailable (%s); keeping key version %d", exc.strerror, self._ring.active)
            return self._ring
        if identity == self._identity:
            return self._ring
        try:
            ring = load_key_file(self._path)
        except KeyRingError as exc:
            log.warning("key file changed but cannot be loaded (%s); keeping key version %d",
                        exc, self._ring.active)
            return self._ring
        self._identity = identity
        if ring != self._ring:
            log.info("key ring reloaded: active version %d (was %d), versions %s",
                     ring.active, self._ring.active, list(ring.versions))
            self._ring = ring
            self.reloads += 1
        return self._ring
