"""The render worker: PDF rendering under a wall-clock timeout and a memory cap.

One long-lived child process per calling process keeps its own warm caches (compiled templates,
parsed CSS, fonts, static pages), so the per-document cost is one pipe round trip. The child
caps its own address space with RLIMIT_AS; the parent kills it when a job overruns its time and
starts a fresh one on the next job, so a hostile or broken document costs one worker, not the
web or queue process.

Wire format, both ways: an 8-byte big-endian length, then the payload. Requests are pickles
(the parent is trusted by the child). Replies are a JSON header plus raw PDF bytes, so the
parent never unpickles anything produced while rendering untrusted templates.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from documents.composition import (
    CompositionError,
    DataInvalid,
    FieldError,
    Sources,
    TemplateError,
    sources_key,
)
from documents.rendering import Limits, RenderedPdf, RenderError, RenderLimitExceeded

logger = logging.getLogger("ccm.documents.sandbox")

_HEADER = struct.Struct(">Q")
STARTUP_TIMEOUT_S = 60.0
WORKER_SOURCES_CACHE = 64
FORWARDED_LOG_RECORDS = 50
_EXIT_MEMORY = 3
_ERRORS: dict[str, type[CompositionError]] = {
    cls.__name__: cls
    for cls in (CompositionError, DataInvalid, TemplateError, RenderError, RenderLimitExceeded)
}


# -- framing ----------------------------------------------------------------------------------


def _write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes | None:
    """Read `size` bytes; None on EOF. Raises TimeoutError when the deadline passes."""
    chunks = []
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None = None) -> bytes | None:
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    return _read_exact(fd, _HEADER.unpack(header)[0], deadline)


def _reply(fd: int, header: dict, body: bytes = b"") -> None:
    encoded = json.dumps(header).encode()
    _write_frame(fd, struct.pack(">I", len(encoded)) + encoded + body)


def _parse_reply(payload: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack(">I", payload[:4])
    return json.loads(payload[4 : 4 + size]), payload[4 + size :]


# -- the child --------------------------------------------------------------------------------


class _LogCollector(logging.Handler):
    """Keeps the job's warnings (refused URLs, CSS errors) to send back to the parent's logs."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < FORWARDED_LOG_RECORDS:
            self.records.append(
                {"name": record.name, "level": record.levelno, "msg": record.getMessage()}
            )


def _set_memory_cap(memory_mb: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = memory_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def worker_main() -> None:
    # The protocol owns the original stdout; anything a library prints goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    from documents import rendering

    collector = _LogCollector()
    for name in ("weasyprint", "ccm", "fontTools"):
        logging.getLogger(name).addHandler(collector)
        logging.getLogger(name).propagate = False
    # Warm fontconfig and Pango before saying we are ready, so the first job is not slow.
    rendering.render_pdf_inprocess(
        sources=Sources(print_html="<p>ready</p>"), locale="en_GB", data={}
    )
    stored: OrderedDict[str, Sources] = OrderedDict()
    # Modules, fonts and caches live as long as the worker; keeping them out of the cyclic
    # collector's scans saves a few percent per document.
    gc.freeze()
    _reply(out_fd, {"ready": True, "pid": os.getpid()})

    while True:
        payload = _read_frame(in_fd)
        if payload is None:
            return  # parent went away
        job = pickle.loads(payload)  # noqa: S301 - written by our parent process only
        collector.records = []
        if job["sources"] is not None:
            stored[job["key"]] = job["sources"]
            while len(stored) > WORKER_SOURCES_CACHE:
                stored.popitem(last=False)
        sources = stored.get(job["key"])
        if sources is None:
            _reply(out_fd, {"need_sources": True})
            continue
        stored.move_to_end(job["key"])
        _set_memory_cap(job["memory_mb"])
        try:
            pdf = rendering.render_pdf_inprocess(
                sources=sources, locale=job["locale"], data=job["data"], watermark=job["watermark"]
            )
        except MemoryError:
            # Leave while we still can: after a failed allocation the C libraries' state is
            # suspect, and a fresh worker is cheap.
            stored.clear()
            with contextlib.suppress(BaseException):
                _reply(out_fd, {"error": "RenderLimitExceeded", "memory": True})
            os._exit(_EXIT_MEMORY)
        except CompositionError as exc:
            header: dict[str, Any] = {
                "error": type(exc).__name__,
                "reason": exc.reason,
                "errors": [[e.field, e.message] for e in exc.errors],
            }
            _reply(out_fd, {**header, "logs": collector.records})
        except Exception as exc:
            reason = f"PDF rendering failed: {type(exc).__name__}: {exc}"
            _reply(out_fd, {"error": "RenderError", "reason": reason, "logs": collector.records})
        else:
            header = {"page_count": pdf.page_count, "logs": collector.records}
            _reply(out_fd, header, pdf.data)
        finally:
            # Caches built outside the job's budget must not count against the next job's.
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


# -- the parent -------------------------------------------------------------------------------


class RenderWorker:
    """Parent-side handle on one worker process; callers serialise on `lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.known_keys: set[str] = set()
        self.started_at_pid = os.getpid()
        self.last_start_s: float | None = None

    def _spawn(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "documents.sandbox"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        try:
            payload = _read_frame(process.stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT_S)  # type: ignore[union-attr]
        except TimeoutError:
            payload = None
        if payload is None or not _parse_reply(payload)[0].get("ready"):
            self._kill(process)
            raise RenderError("the render worker did not start")
        self.last_start_s = time.monotonic() - started
        logger.info("render worker %s started in %.2fs", process.pid, self.last_start_s)
        self.known_keys = set()
        return process

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]

    def ensure_started(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                self._kill(self.process)
            self.process = self._spawn()
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError):
                # EOF: the worker exits on its own.
                self.process.stdin.close()  # type: ignore[union-attr]
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._kill(self.process)
            self.process = None

    def run(self, job: dict[str, Any], *, limits: Limits) -> tuple[dict, bytes]:
        process = self.ensure_started()
        key = job["key"]
        send_sources = key not in self.known_keys
        for _ in range(2):
            request = {**job, "sources": job["sources"] if send_sources else None}
            request["memory_mb"] = limits.memory_mb
            deadline = time.monotonic() + limits.timeout_s
            try:
                message = pickle.dumps(request, protocol=5)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise RenderError(f"the data cannot be sent to the render worker: {exc}") from exc
            try:
                _write_frame(process.stdin.fileno(), message)  # type: ignore[union-attr]
                payload = _read_frame(process.stdout.fileno(), deadline)  # type: ignore[union-attr]
            except TimeoutError:
                self._kill(process)
                self.process = None
                raise RenderLimitExceeded(
                    f"rendering took longer than the {limits.timeout_s:g} s time limit"
                ) from None
            except (BrokenPipeError, ConnectionResetError):
                payload = None
            if payload is None:
                self._kill(process)
                self.process = None
                raise self._death(process, limits)
            header, body = _parse_reply(payload)
            if header.get("need_sources"):
                send_sources = True
                continue
            self.known_keys.add(key)
            if header.get("memory"):
                self._kill(process)
                self.process = None
                raise RenderLimitExceeded(
                    f"rendering needed more than the {limits.memory_mb} MB memory limit"
                )
            return header, body
        raise RenderError("the render worker lost the template sources twice")

    @staticmethod
    def _death(process: subprocess.Popen, limits: Limits) -> RenderError:
        code = process.returncode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit status {code}"
        # Under RLIMIT_AS, C libraries abort or crash when an allocation fails; a worker that
        # dies mid-job has almost always hit the memory cap.
        return RenderLimitExceeded(
            f"the render worker died ({how}); most likely the {limits.memory_mb} MB "
            "memory limit was exceeded"
        )


_worker: RenderWorker | None = None
_worker_guard = threading.Lock()


def _current_worker() -> RenderWorker:
    global _worker
    with _worker_guard:
        # After a fork the child must not share its parent's pipes.
        if _worker is None or _worker.started_at_pid != os.getpid():
            _worker = RenderWorker()
        return _worker


def worker_pids() -> list[int]:
    """The live render worker of this process, if any (for benchmarks and health reports)."""
    worker = _worker
    if worker is None or worker.process is None or worker.process.poll() is not None:
        return []
    return [worker.process.pid]


def start_worker() -> float:
    """Start the worker now (e.g. when a queue process boots); returns the start time in s."""
    worker = _current_worker()
    with worker.lock:
        worker.ensure_started()
        return worker.last_start_s or 0.0


def render(
    *, sources: Sources, locale: str, data: Mapping, watermark: str | None, limits: Limits
) -> RenderedPdf:
    job = {
        "key": sources_key(sources, locale),
        "sources": sources,
        "locale": locale,
        "data": dict(data),
        "watermark": watermark,
    }
    worker = _current_worker()
    with worker.lock:
        header, body = worker.run(job, limits=limits)
    for record in header.get("logs", []):
        logging.getLogger(record["name"]).log(record["level"], "%s", record["msg"])
    if "error" in header:
        cls = _ERRORS.get(header["error"], RenderError)
        errors = [FieldError(field=f, message=m) for f, m in header.get("errors", [])]
        raise cls(header["reason"], errors=errors)
    return RenderedPdf(data=body, page_count=header["page_count"])


def shutdown_workers() -> None:
    global _worker
    with _worker_guard:
        worker, _worker = _worker, None
    if worker is not None and worker.started_at_pid == os.getpid():
        with worker.lock:
            worker.stop()


atexit.register(shutdown_workers)


if __name__ == "__main__":
    worker_main()
