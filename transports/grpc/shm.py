"""Shared memory for large objects on one machine: a value's big buffers live in POSIX segments.

Why: without it a 100 MiB ``put`` is pickled into an envelope, copied through gRPC to the node,
and again to every process that reads it. With it, the process that puts copies each large
buffer once into a segment of ``/dev/shm`` and sends only its name; the node keeps the segment
mapped while the object is in its store, and a reader maps it too: ``get`` of a numpy array
is a read-only view of the shared pages, as in Ray's plasma store.

What travels (the codec is ``wire.encode``/``wire.decode``; the engine never sees any of it):
a ``Blob`` whose ``data`` or ``buffers`` hold a large buffer is pickled as
``_rebuild_blob(fields)`` with each such buffer replaced by a descriptor
``(kind, path, size, handoff, host)``, ``kind`` ``"shm"`` (``"disk"`` once spilled, below);
unpickling maps the segment read-only (once per process: a name maps to one ``ShmMap``) and
rebuilds the Blob around ``memoryview``s of it.

The one copy: a ``put`` serializes its value with ``defer_large`` (see ``serialization``), so
a large buffer reaches the codec still as a view of the caller's array (``is_deferred``), and
``os.write`` copies it straight into the new segment while the ``PutObject`` is encoded, in
the caller's thread, before ``put`` returns. (A
``write`` into tmpfs beats ``mmap`` plus ``memcpy`` here, 3 against 1.5 GiB/s for 100 MiB:
it fills fresh pages without faulting or zeroing them; pre-faulting with ``MAP_POPULATE`` or
``posix_fallocate`` only adds the zeroing.) A deferred buffer that gets no segment (a message
not bound for a store, no shared memory) is copied into the envelope, and the Blob keeps
that copy; either way the Blob no longer aliases the caller's memory.

Which messages make segments: only those whose blob lands in a node's store, ``PutObject``
(a worker or driver hands a new object to its node), ``ObjectLocal`` (a node gives a stored
object to a local process) and ``ObjectTransfer`` (a node sends a copy to another node).
Small values (inline, below the engine's 100 KiB) never reach those and stay in-band. A Blob
that is already in shared memory travels as its descriptor, with no copy, to a process of
the same node; to another node it travels in-band, except an ``ObjectTransfer``: its large
buffers stream to the other node in chunks (``Chunk``, ``CHUNK_BYTES`` each, as Ray's object
manager does) ahead of the envelope, which names each as ``("chunks", key, size)``. The
receiving node writes the chunks into a new segment of its own as they arrive
(``receive_chunk``) and maps it when the envelope is decoded: a transfer is a copy, as in Ray,
the receiving node owns it, and nothing of it depends on the two nodes sharing a machine. When a segment is made for a Blob this process keeps (the put's own Blob, a node's
stored Blob), the Blob's buffers are swapped for the mapping, so the process-private bytes
are freed and its own reads come from the shared pages too.

Who unlinks: exactly one process owns a segment. A segment made for ``PutObject`` or
``ObjectTransfer`` is handed off (``handoff``) to the node that decodes it; one a node makes
for ``ObjectLocal`` is its own. The owner unlinks the name when its mapping is garbage
collected (the object left its store: freed, evicted, or never stored), ``GRACE`` seconds
after it last sent the descriptor, so a reader that has not yet opened it still finds it.
Processes that mapped it keep reading it (POSIX). The creating process never unlinks a
segment it handed off. Whatever remains when a cluster stops (a process killed in between)
is removed by ``cleanup(session)`` (``GrpcTransport.shutdown``, ``rayref stop``). Names are
``rayref-<session id>-<pid>-<n>``, the session id a hash of the session directory, so
clusters never collide and a session's leftovers can be found.

Spilling: when its pinned objects outgrow ``object_store_memory`` the node manager spills the
least recently used (``SpillObject``, see ``rayref/core/object_store.py``). The node copies
each large buffer of the object to a file of the session's spill folder (``<session>/spill``,
named like a segment), maps it, and gives its store that Blob (``ObjectSpilled``); the
segment goes as above. Descriptors of a spilled buffer say ``"disk"`` instead of ``"shm"``
and readers map the file (read-only, through the page cache). The node owns its spill files
and unlinks them the same way; the spill folder goes with the session directory. An unlinked
segment's pages live on while some process maps them: the owner of a ``put`` does not keep
its Blob once its node stored it, but a process that read an object keeps its Blob (and so
its pages) while it holds the ObjectRef, even if the node spilled it meanwhile. With
``RAYREF_SHM=0`` nothing is spilled (the node keeps the bytes; its store still keeps the books).

A segment is only meaningful on its machine (and container: ``/dev/shm`` is per IPC
namespace). A descriptor that cannot be mapped (the segment is gone, or this process is
elsewhere) turns its Blob into an ``ObjectLostError`` that says so, never into a failed
envelope. ``RAYREF_SHM=0`` turns the path off (everything in-band, as before).
"""
from __future__ import annotations

import atexit
import copyreg
import dataclasses
import hashlib
import heapq
import io
import itertools
import logging
import mmap
import operator
import os
import pickle
import socket
import threading
import time
import weakref

from rayref._private.serialization import is_deferred
from rayref.core import protocol as p
from rayref.core.resources import Resources

log = logging.getLogger("rayref.shm")

SHM_DIR = "/dev/shm"
PREFIX = "rayref-"
THRESHOLD = 64 * 1024
"""Buffers (and pickle streams) at least this large go to shared memory."""
CHUNK_BYTES = 5 * 1024 * 1024
"""An object's large buffers move between nodes in pieces of this size (Ray's default chunk size)."""
GRACE = 2.0
"""Seconds an owner keeps a dropped segment's name after it last sent its descriptor."""
SESSION_ENV = "RAYREF_SHM_SESSION"
"""A node exports its session directory here, so that the workers it starts name segments alike."""

_STORE_BOUND = (p.PutObject, p.ObjectLocal, p.ObjectTransfer)
_BLOB_FIELDS = tuple(f.name for f in dataclasses.fields(p.Blob))

_session_id: str | None = None
_session_path: str | None = None
_node_id: str | None = None
_counter = itertools.count()
_lock = threading.RLock()
"""Reentrant: a finalizer (``_release``) may run inside a locked section when the GC runs there."""
_maps: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
"""Segment name -> its one mapping in this process."""
_owned: dict[str, float] = {}
"""Paths of the segments (and spill files) this process must unlink -> when it last sent their descriptor."""
_deferred: list[tuple[float, str]] = []
_deferred_paths: set[str] = set()
_reaper: threading.Condition | None = None
_exiting = False
_warned = False
_host = socket.gethostname()


class ShmMap(mmap.mmap):
    """A read-only mapping of one segment (``kind`` "shm") or spill file ("disk"). Buffers of a Blob are views of it."""

    name: str
    kind: str
    path: str


# ------------------------------------------------------------------ configuration and naming

def session_id(session_path: str) -> str:
    return hashlib.sha256(os.path.realpath(session_path).encode()).hexdigest()[:12]


def configure(session_path: str, *, node_id: str | None = None) -> None:
    """Name this process's segments after ``session_path``; a node also passes its id.

    A node exports the session to the environment of the workers it starts.
    """
    global _session_id, _session_path, _node_id
    _session_id, _session_path = session_id(session_path), session_path
    if node_id is not None:
        _node_id = node_id
        os.environ[SESSION_ENV] = session_path


if os.environ.get(SESSION_ENV):
    _session_id = session_id(os.environ[SESSION_ENV])  # a worker: its node's session


def enabled() -> bool:
    return _session_id is not None and os.environ.get("RAYREF_SHM", "1") != "0" and os.path.isdir(SHM_DIR)


def segment_names(session_path: str) -> list[str]:
    """The names of the segments of a session still in ``/dev/shm``."""
    start = f"{PREFIX}{session_id(session_path)}-"
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(start))
    except FileNotFoundError:
        return []


def spill_dir(session_path: str) -> str:
    return os.path.join(session_path, "spill")


def spilled_names(session_path: str) -> list[str]:
    """The names of the spill files of a session still on disk."""
    try:
        return sorted(n for n in os.listdir(spill_dir(session_path)) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def cleanup(session_path: str) -> int:
    """Unlink every segment and spill file left by a session (its processes are gone); the number removed."""
    removed = 0
    paths = [os.path.join(SHM_DIR, n) for n in segment_names(session_path)]
    paths += [os.path.join(spill_dir(session_path), n) for n in spilled_names(session_path)]
    for path in paths:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def segment_of(value) -> str | None:
    """The segment a value (numpy array, memoryview, ...) is a view of, if any: for tests and users."""
    seen = 0
    while value is not None and seen < 64:
        if isinstance(value, ShmMap):
            return value.name
        seen += 1
        value = value.obj if isinstance(value, memoryview) else getattr(value, "base", None)
    return None


# ------------------------------------------------------------------ segments and spill files

def _create(buffer) -> ShmMap | None:
    """Copy ``buffer`` into a new segment (the one copy); None if shared memory is unavailable or full."""
    try:
        return _write(buffer, SHM_DIR, "shm")
    except OSError as error:
        return _unavailable(error)


def _new_file(directory: str) -> tuple[str, int]:
    """(path, open descriptor) of a new file of ``directory``, named like a segment (OSError if it fails)."""
    path = os.path.join(directory, f"{PREFIX}{_session_id}-{os.getpid()}-{next(_counter)}")
    return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)


def _map_written(path: str, fd: int, size: int, kind: str) -> ShmMap:
    """The read-only mapping of the ``size`` bytes written to ``fd`` (closed here), registered by name."""
    try:
        segment = ShmMap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    segment.name, segment.kind, segment.path = os.path.basename(path), kind, path
    _maps[segment.name] = segment
    return segment


def _write(buffer, directory: str, kind: str) -> ShmMap:
    """Copy ``buffer`` into a new file of ``directory`` and map it read-only (OSError if that fails)."""
    view = _flat(buffer)
    size = view.nbytes
    path, fd = _new_file(directory)
    try:
        done = 0
        while done < size:
            done += os.write(fd, view[done:])
    except OSError:
        os.close(fd)
        _unlink(path)
        raise
    try:
        return _map_written(path, fd, size, kind)
    except OSError:
        _unlink(path)
        raise


def _unavailable(error: OSError) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("shared memory unavailable (%s); large objects travel through gRPC instead", error)
    return None


def _attach(kind: str, path: str, size: int, handoff: bool, host: str):
    """The read-only buffer of the segment (or spill file) at ``path``, or the text of why it cannot be had."""
    name, directory = os.path.basename(path), os.path.dirname(path)
    expected = directory == SHM_DIR if kind == "shm" else os.path.basename(directory) == "spill"
    if not (expected and name.startswith(PREFIX)):
        return f"{path!r} is not a rayref shared-memory segment or spill file"
    segment = _maps.get(name)
    if segment is None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            where = "" if host == _host else f" (it was made on host {host!r}; this process is on {_host!r})"
            return (f"its {'shared-memory segment' if kind == 'shm' else 'spill file'} {path} no longer exists"
                    f"{where}: the object was freed or evicted before this process could map it, or this "
                    f"process is not on the machine (or container) that stored it")
        try:
            actual = os.fstat(fd).st_size
            if actual != size:
                return f"its {kind} buffer {path} holds {actual} bytes, not {size}"
            segment = ShmMap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        segment.name, segment.kind, segment.path = name, kind, path
        with _lock:
            segment = _maps.setdefault(name, segment)
    if handoff:
        _own(segment)
    return memoryview(segment)


def _keep(segment: ShmMap) -> None:
    """This process owns ``segment`` and is about to send its descriptor (it unlinks it, ``GRACE`` after)."""
    _own(segment)
    with _lock:
        _owned[segment.path] = time.monotonic()


def _own(segment: ShmMap) -> None:
    with _lock:
        if segment.path in _owned:
            return
        _owned[segment.path] = 0.0
    weakref.finalize(segment, _release, segment.path)


def _release(path: str) -> None:
    """The owner's mapping is gone: unlink now, or once the last descriptor sent had time to be mapped."""
    with _lock:
        sent = _owned.pop(path, 0.0)
    due = sent + GRACE
    if _exiting or time.monotonic() >= due:
        _unlink(path)
    else:
        _defer(path, due)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _defer(path: str, due: float) -> None:
    global _reaper
    with _lock:
        heapq.heappush(_deferred, (due, path))
        _deferred_paths.add(path)
        if _reaper is None:
            _reaper = threading.Condition(_lock)
            threading.Thread(target=_reap, name="rayref-shm-reaper", daemon=True).start()
        _reaper.notify()


def _reap() -> None:
    with _lock:
        while True:
            now = time.monotonic()
            while _deferred and _deferred[0][0] <= now:
                _, path = heapq.heappop(_deferred)
                _deferred_paths.discard(path)
                _unlink(path)
            _reaper.wait(_deferred[0][0] - now if _deferred else None)


def spill(blob: p.Blob) -> p.Blob:
    """``blob`` with each large buffer moved to a new file of the session's spill folder (a node spills).

    The node owns the files (unlinked like its segments once the Blob is dropped). If the disk
    refuses, the object stays where it is (in memory) and a warning says so.
    """
    if not enabled():
        return blob
    try:
        os.makedirs(spill_dir(_session_path), exist_ok=True)
        data = _spill_buffer(blob.data)
        buffers = tuple(_spill_buffer(b) for b in blob.buffers)
    except OSError as error:
        log.warning("could not spill an object to %s (%s); it stays in memory", spill_dir(_session_path), error)
        return blob
    return dataclasses.replace(blob, data=data, buffers=buffers)


def _spill_buffer(buffer):
    if memoryview(buffer).nbytes < THRESHOLD:
        return buffer
    spilled = _write(buffer, spill_dir(_session_path), "disk")
    _own(spilled)
    return memoryview(spilled)


@atexit.register
def _at_exit() -> None:
    global _exiting
    _exiting = True
    with _lock:
        names = list(_deferred_paths)
        _deferred.clear()
        _deferred_paths.clear()
    for path in names:
        _unlink(path)


# ------------------------------------------------------------------ the codec

class _Encoding:
    """How the Blobs of one envelope travel (see the module doc)."""

    def __init__(self, to: str, msg, chunked: list | None):
        self.store_bound = isinstance(msg, _STORE_BOUND)
        self.cross_node = _node_id is not None and to.split(".", 1)[0] != _node_id
        self.chunked = chunked if isinstance(msg, p.ObjectTransfer) and self.cross_node else None

    def reduce_blob(self, blob: p.Blob):
        if not blob.buffers and type(blob.data) is bytes and len(blob.data) < THRESHOLD:
            return _reduce_message(blob)  # the common small value: it travels as it is (what ``place`` says)
        data, data_spec = self.place(blob.data)
        placed = [self.place(buffer) for buffer in blob.buffers]
        buffers, specs = tuple(kept for kept, _ in placed), tuple(spec for _, spec in placed)
        if data_spec is blob.data and all(s is b for s, b in zip(specs, blob.buffers)):
            return _reduce_message(blob)
        if data is not blob.data or any(k is not b for k, b in zip(buffers, blob.buffers)):
            object.__setattr__(blob, "data", data)  # the Blob stays in this process: it keeps what was made
            object.__setattr__(blob, "buffers", buffers)
        fields = {name: getattr(blob, name) for name in _BLOB_FIELDS}
        fields["data"], fields["buffers"] = data_spec, specs
        return _rebuild_blob, (fields,)

    def place(self, buffer):
        """(what the Blob keeps in this process, what travels) for one of its buffers.

        A deferred buffer (a view of user memory, ``serialization.is_deferred``) is copied here,
        once: into a new segment, or else into the envelope's bytes, which the Blob keeps.
        """
        segment = _segment_behind(buffer)
        if segment is not None and not self.cross_node:
            with _lock:
                if segment.path in _owned:
                    _owned[segment.path] = time.monotonic()
            return buffer, (segment.kind, segment.path, len(segment), False, _host)
        size = _flat(buffer).nbytes
        if self.chunked is not None and size >= THRESHOLD:  # a transfer to another node streams its buffers
            key = f"{_node_id}-{os.getpid()}-{next(_counter)}"
            self.chunked.append((key, buffer))
            return buffer, ("chunks", key, size)
        if segment is None and self.store_bound and size >= THRESHOLD and enabled() and not self.cross_node:
            # A worker or driver hands its new segment to its node; a node owns what it makes for its own store.
            made = self.make(buffer, handoff=_node_id is None)
            if made is not None:
                return made
        if is_deferred(buffer):
            copy = bytes(_flat(buffer))
            return copy, copy
        return buffer, bytes(buffer) if type(buffer) is memoryview else buffer

    def make(self, buffer, handoff: bool):
        """(the mapping, its descriptor) of a new segment holding a copy of ``buffer``; None if none can be made."""
        segment = _create(buffer)
        if segment is None:
            return None
        if not handoff:
            _keep(segment)
        return memoryview(segment), ("shm", segment.path, len(segment), handoff, _host)


def _segment_behind(buffer) -> ShmMap | None:
    """The segment (or spill file) ``buffer`` is the whole of, if any."""
    if type(buffer) is not memoryview or not isinstance(buffer.obj, ShmMap):
        return None
    return buffer.obj if buffer.nbytes == len(buffer.obj) and buffer.c_contiguous else None


def _flat(buffer) -> memoryview:
    """``buffer``'s bytes as a flat view (a deferred one may be multi-dimensional, in either order)."""
    return buffer.raw() if is_deferred(buffer) else memoryview(buffer).cast("B")


_encoding = threading.local()


def _reduce_blob(blob: p.Blob):
    encoding = getattr(_encoding, "current", None)
    return _reduce_message(blob) if encoding is None else encoding.reduce_blob(blob)


def _fields_of(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_MESSAGE_TYPES = tuple(t for t in vars(p).values()
                       if isinstance(t, type) and dataclasses.is_dataclass(t)
                       and getattr(t, "__module__", "") == p.__name__ and "__slots__" in vars(t))
_FIELDS = {t: _fields_of(t) for t in _MESSAGE_TYPES}
_GETTERS = {t: operator.attrgetter(*names) if len(names) > 1 else (lambda obj, n=names[0]: (getattr(obj, n),))
            for t, names in _FIELDS.items() if names}


def _reduce_message(message):
    """A protocol dataclass as its class and field values (the default path asks ``dataclasses.fields``
    for every object: about a quarter of the cost of pickling an envelope)."""
    kind = type(message)
    return _BUILDERS[kind], (_GETTERS[kind](message),)


def _builder(kind):
    """``_build_<Class>(values) -> message``, setting each field in turn (a frozen dataclass refuses
    ``setattr``): straight-line code made from the class's field names, a third faster than a
    loop over them. A global of this module, so that a pickle names it."""
    name = f"_build_{kind.__name__}"
    lines = [f"    set(message, {field!r}, values[{i}])" for i, field in enumerate(_FIELDS[kind])]
    source = f"def {name}(values):\n    message = new(kind)\n" + "\n".join(lines) + "\n    return message\n"
    scope = {"new": object.__new__, "set": object.__setattr__, "kind": kind, "__name__": __name__}
    exec(source, scope)  # noqa: S102 - source made above from the class's own field names
    globals()[name] = scope[name]
    return scope[name]


_BUILDERS = {t: _builder(t) for t in _MESSAGE_TYPES}


def _reduce_enum(member):
    """An enum member as a lookup by name (unpickling by value goes through EnumType.__call__)."""
    return getattr, (type(member), member.name)


_RESOURCES: dict = {}


def _reduce_resources(resources: Resources):
    return _resources, (tuple(resources.items_raw()),)


def _resources(items: tuple) -> Resources:
    """The same amounts decode to one shared (immutable) Resources: tasks carry few distinct ones."""
    found = _RESOURCES.get(items)
    if found is None:
        if len(_RESOURCES) >= 4096:
            _RESOURCES.clear()
        found = _RESOURCES[items] = Resources.from_raw(dict(items))
    return found


class _Pickler(pickle.Pickler):
    dispatch_table = {**copyreg.dispatch_table, **{t: _reduce_message for t in _GETTERS}, p.Blob: _reduce_blob,
                      p.TaskKind: _reduce_enum, Resources: _reduce_resources}
    """Blobs have their own reduction (shared memory, chunks); which falls back to ``_reduce_message``."""


def dumps(envelope: tuple, chunked: list | None = None) -> bytes:
    """Pickle an envelope ``(src, to, msg)``. For an ``ObjectTransfer`` to another node, each large
    buffer is appended to ``chunked`` as ``(key, buffer)`` and travels there (``chunks``), not here."""
    out = io.BytesIO()
    _encoding.current = _Encoding(envelope[1], envelope[2], chunked)
    try:
        _Pickler(out, protocol=5).dump(envelope)
    finally:
        _encoding.current = None
    return out.getvalue()


def _rebuild_blob(fields: dict) -> p.Blob:
    problems = []

    def load(spec):
        if type(spec) is tuple and spec and spec[0] in ("shm", "disk", "chunks"):
            found = _attach(*spec) if spec[0] != "chunks" else _assembled(*spec[1:])
            if isinstance(found, str):
                problems.append(found)
                return b""
            return found
        return spec

    fields["data"] = load(fields["data"])
    fields["buffers"] = tuple(load(s) for s in fields["buffers"])
    if problems:
        log.warning("an object could not be read: %s", problems[0])
        return p.Blob(data=b"", nbytes=fields["nbytes"], contained=fields["contained"], is_error=True,
                      system_error=("ObjectLostError", f"The object cannot be read here: {problems[0]}."))
    return p.Blob(**fields)


# ------------------------------------------------------------------ transfers in chunks

@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """``data`` is the piece at ``offset`` of the ``size`` bytes of the buffer streamed as ``key``:
    bytes as received; as sent, a ``PickleBuffer`` over the object itself, so that pickling the
    chunk's envelope is its one copy on the sender."""

    key: str
    offset: int
    size: int
    data: bytes | pickle.PickleBuffer


def chunks(key: str, buffer):
    """The pieces of ``buffer`` as ``Chunk`` makers: each reads its bytes only when called, so a
    transfer waiting for its turn on a stream holds no copy of the object."""
    view = _flat(buffer).toreadonly()
    return [lambda offset=offset: Chunk(key, offset, view.nbytes, pickle.PickleBuffer(view[offset:offset + CHUNK_BYTES]))
            for offset in range(0, view.nbytes, CHUNK_BYTES)]


class _Assembly:
    """A buffer arriving in chunks: a new segment of this node's, written piece by piece and mapped
    read-only once whole (without shared memory: bytes in memory)."""

    def __init__(self, size: int, stream: object = None):
        self.size = size
        self.received = 0
        self.stream = stream
        self.fd = None
        self.memory = None
        if enabled():
            try:
                self.path, self.fd = _new_file(SHM_DIR)
            except OSError as error:
                _unavailable(error)
        if self.fd is None:
            self.memory = bytearray(size)

    def write(self, offset: int, data: bytes) -> None:
        if self.fd is None:
            self.memory[offset:offset + len(data)] = data
        else:
            try:
                done = 0
                while done < len(data):
                    done += os.pwrite(self.fd, memoryview(data)[done:], offset + done)
            except OSError as error:  # /dev/shm is full: the rest (and what came) goes to memory
                _unavailable(error)
                self._to_memory()
                self.memory[offset:offset + len(data)] = data
        self.received += len(data)

    def _to_memory(self) -> None:
        self.memory = bytearray(self.size)
        written = os.pread(self.fd, self.size, 0)
        self.memory[:len(written)] = written
        os.close(self.fd)
        self.fd = None
        _unlink(self.path)

    def discard(self) -> None:
        """What arrived of a transfer that will not be whole: gone, segment and all."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            _unlink(self.path)
        self.memory = None

    def finish(self) -> memoryview:
        """The whole buffer, read-only; this node owns its segment (unlinked when its store drops it)."""
        if self.fd is None:
            return memoryview(self.memory).toreadonly()
        segment = _map_written(self.path, self.fd, self.size, "shm")
        self.fd = None
        _keep(segment)
        return memoryview(segment)


_assemblies: dict[str, _Assembly] = {}


def receive_chunk(chunk: Chunk, stream: object = None) -> None:
    """Write one piece of a transfer into its buffer (loop thread of a node; in stream order).
    ``stream`` names the stream it came on (``discard_cut_short``)."""
    assembly = _assemblies.get(chunk.key)
    if assembly is None:
        assembly = _assemblies[chunk.key] = _Assembly(chunk.size, stream)
    assembly.write(chunk.offset, chunk.data)


def discard_cut_short(stream: object) -> None:
    """``stream`` has ended: what arrived on it of transfers whose envelope did not (a transfer's
    chunks and envelope travel on one stream, and nothing lost with a stream is sent again) is
    gone, segments and all."""
    for key in [key for key, assembly in _assemblies.items() if assembly.stream is stream]:
        _assemblies.pop(key).discard()


def _assembled(key: str, size: int):
    """The buffer streamed as ``key``, now whole, or the text of why it is not."""
    assembly = _assemblies.pop(key, None)
    if assembly is None or assembly.received != size:
        got = 0 if assembly is None else assembly.received
        if assembly is not None:
            assembly.discard()
        return f"its transfer from another node was cut short ({got} of {size} bytes arrived)"
    return assembly.finish()
