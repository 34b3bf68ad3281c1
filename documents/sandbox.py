"""The render worker: every composition — PDF and text channels — under a wall-clock timeout,
a CPU-time cap and a memory cap.

One long-lived child process per calling process keeps its own warm caches (compiled templates,
parsed CSS, fonts, static pages), so the per-document cost is one pipe round trip. The child
caps its own address space with RLIMIT_AS; the parent kills it when a job overruns its time and
starts a fresh one on the next job, so a hostile or broken document costs one worker, not the
web or queue process.

Text channels (email, SMS, push) go through the same worker: a job carries a batch of (data,
channels) items and the worker answers one frame per item, so a chunk of the pipeline costs one
round trip and each item still has its own time limit. Their memory cap is a budget on top of
what the worker already holds (fonts and caches belong to PDF rendering, not to the message).

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from documents.composition import (
    PRINT_DRAWING,
    CompositionError,
    DataInvalid,
    FieldError,
    Sources,
    TemplateError,
    UnknownDrawing,
    compose_text_channels,
    composer_for,
    drawing_checked,
    sources_key,
)
from documents.rendering import (
    Limits,
    RenderedPdf,
    RenderError,
    RenderLimitExceeded,
    render_pdf_inprocess,
)

logger = logging.getLogger("ccm.documents.sandbox")

_HEADER = struct.Struct(">Q")
STARTUP_TIMEOUT_S = 60.0
WORKER_SOURCES_CACHE = 64
FORWARDED_LOG_RECORDS = 50
_EXIT_MEMORY = 3
# A batch stops trying after this many items hit a limit: a template that needs more than the
# limits for three messages in a row would only hold the queue for the rest.
MAX_LIMIT_FAILURES_PER_BATCH = 3
REPLY_EVERY_S = 0.05
_ERRORS: dict[str, type[CompositionError]] = {
    cls.__name__: cls
    for cls in (
        CompositionError,
        DataInvalid,
        TemplateError,
        RenderError,
        RenderLimitExceeded,
        UnknownDrawing,
    )
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


def _set_cpu_cap(seconds: float) -> None:
    # RLIMIT_CPU counts the whole life of the process; the cap is this job's share on top.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + 2
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _lift_caps() -> None:
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_CPU):
        _, hard = resource.getrlimit(limit)
        resource.setrlimit(limit, (hard, hard))


def _address_space_mb() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)


def _error_header(exc: CompositionError) -> dict[str, Any]:
    return {
        "error": type(exc).__name__,
        "reason": exc.reason,
        "errors": [[e.field, e.message] for e in exc.errors],
    }


class _Replies:
    """Results of a text job, sent in groups: by a flusher thread every REPLY_EVERY_S while
    items run, so that when the parent stops hearing from the worker, every item before the
    one that hangs has been reported and the time limit is blamed on the right message."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.done: list[dict[str, Any]] = []
        self.finished = threading.Event()

    def add(self, header: dict[str, Any]) -> None:
        with self.lock:
            self.done.append(header)

    def flush(self) -> None:
        with self.lock:
            if self.done:
                _reply(self.fd, {"results": self.done})
                self.done = []

    def flush_periodically(self) -> None:
        while not self.finished.wait(REPLY_EVERY_S):
            self.flush()


def _compose_text_job(out_fd: int, job: dict, sources: Sources) -> None:
    composer = composer_for(sources, locale=job["locale"])
    _set_memory_cap(_address_space_mb() + job["memory_mb"])
    # Each item has the time limit (the parent times the replies); CPU time is a backstop
    # for the whole batch.
    _set_cpu_cap(job["cpu_s"] * len(job["items"]))
    replies = _Replies(out_fd)
    flusher = None
    if len(job["items"]) > 1:
        flusher = threading.Thread(target=replies.flush_periodically, daemon=True)
        flusher.start()
    try:
        for data, channels in job["items"]:
            try:
                header: dict[str, Any] = {
                    "rendered": compose_text_channels(composer, data, channels)
                }
            except MemoryError:
                # Pure Python ran out: the allocation failed before anything was half built,
                # so the worker carries on with the next item.
                header = {"error": "RenderLimitExceeded", "memory": True}
            except CompositionError as exc:
                header = _error_header(exc)
            except Exception as exc:
                header = {"error": "TemplateError", "reason": f"{type(exc).__name__}: {exc}"}
            replies.add(header)
    finally:
        replies.finished.set()
        if flusher is not None:
            flusher.join()
        replies.flush()


def worker_main() -> None:
    # The protocol owns the original stdout; anything a library prints goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # A job over its CPU cap gets SIGXCPU, whose default action would also write a core file.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    collector = _LogCollector()
    for name in ("weasyprint", "ccm", "fontTools"):
        logging.getLogger(name).addHandler(collector)
        logging.getLogger(name).propagate = False
    # Warm fontconfig and Pango before saying we are ready, so the first job is not slow.
    render_pdf_inprocess(sources=Sources(print_html="<p>ready</p>"), locale="en_GB", data={})
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
        if job.get("kind") == "text":
            try:
                _compose_text_job(out_fd, job, sources)
            finally:
                _lift_caps()
            continue
        _set_memory_cap(job["memory_mb"])
        _set_cpu_cap(job["cpu_s"])
        try:
            pdf = render_pdf_inprocess(
                sources=sources,
                locale=job["locale"],
                data=job["data"],
                watermark=job["watermark"],
                drawing=job["drawing"],
            )
        except MemoryError:
            # Leave while we still can: after a failed allocation the C libraries' state is
            # suspect, and a fresh worker is cheap.
            stored.clear()
            with contextlib.suppress(BaseException):
                _reply(out_fd, {"error": "RenderLimitExceeded", "memory": True, "exit": True})
            os._exit(_EXIT_MEMORY)
        except CompositionError as exc:
            _reply(out_fd, {**_error_header(exc), "logs": collector.records})
        except Exception as exc:
            reason = f"PDF rendering failed: {type(exc).__name__}: {exc}"
            _reply(out_fd, {"error": "RenderError", "reason": reason, "logs": collector.records})
        else:
            header = {"page_count": pdf.page_count, "logs": collector.records}
            _reply(out_fd, header, pdf.data)
        finally:
            # Caches built outside the job's budget must not count against the next job's.
            _lift_caps()


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
        except BaseException:
            # Raised into the wait from outside (a task's time-out alarm): nobody holds the new
            # process yet, so it goes now rather than live on as an orphan.
            self._kill(process)
            raise
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

    def stream(
        self, job: dict[str, Any], *, limits: Limits, until: int = 1
    ) -> Iterator[tuple[dict, bytes]]:
        """Send `job`, then yield its replies, each read within the time limit, until they
        carry `until` results (a text job's reply carries several; a PDF job's, one).
        A reply overdue or a worker dead raises RenderLimitExceeded (the worker is gone; the
        next job starts a fresh one)."""
        process = self.ensure_started()
        # Until every reply of this job is read, leaving the job (an exception raised into the
        # caller, such as a task's time-out alarm, or a caller that stops reading) would leave
        # replies in the pipe for the next job to take as its own: the worker goes instead,
        # and the next job starts a fresh one.
        read_all = False
        try:
            for header, body, last in self._replies(process, job, limits=limits, until=until):
                read_all = last
                yield header, body
        finally:
            if not read_all and self.process is process:
                self._kill(process)
                self.process = None

    def _replies(
        self, process: subprocess.Popen, job: dict[str, Any], *, limits: Limits, until: int
    ) -> Iterator[tuple[dict, bytes, bool]]:
        """`stream`'s replies, each with whether it was the job's last."""
        key = job["key"]
        text = job.get("kind") == "text"
        send_sources = key not in self.known_keys
        for _ in range(2):
            request = {**job, "sources": job["sources"] if send_sources else None}
            request["memory_mb"] = limits.memory_mb
            request["cpu_s"] = limits.timeout_s
            try:
                message = pickle.dumps(request, protocol=5)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise RenderError(f"the data cannot be sent to the render worker: {exc}") from exc
            # A worker that died reports it through the read below.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                _write_frame(process.stdin.fileno(), message)  # type: ignore[union-attr]
            header, body = self._receive(process, limits, text=text)
            if header.get("need_sources"):
                send_sources = True
                continue
            break
        else:
            raise RenderError("the render worker lost the template sources twice")
        self.known_keys.add(key)
        received = 0
        while True:
            if header.get("exit"):
                self._kill(process)
                self.process = None
            received += len(header["results"]) if text else 1
            yield header, body, received >= until
            if received >= until:
                return
            header, body = self._receive(process, limits, text=text)

    def run(self, job: dict[str, Any], *, limits: Limits) -> tuple[dict, bytes]:
        return next(self.stream(job, limits=limits))

    def _receive(
        self, process: subprocess.Popen, limits: Limits, *, text: bool
    ) -> tuple[dict, bytes]:
        deadline = time.monotonic() + limits.timeout_s
        try:
            payload = _read_frame(process.stdout.fileno(), deadline)  # type: ignore[union-attr]
        except TimeoutError:
            self._kill(process)
            self.process = None
            raise RenderLimitExceeded(
                f"composition exceeded {limits.timeout_s:g} s, the time limit for one rendition"
                if text
                else f"rendering took longer than the {limits.timeout_s:g} s time limit"
            ) from None
        except (BrokenPipeError, ConnectionResetError):
            payload = None
        if payload is None:
            self._kill(process)
            self.process = None
            raise self._death(process, limits, text=text)
        return _parse_reply(payload)

    @staticmethod
    def _death(process: subprocess.Popen, limits: Limits, *, text: bool) -> RenderError:
        code = process.returncode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit status {code}"
        if code == -signal.SIGXCPU:
            return RenderLimitExceeded(
                f"composition exceeded {limits.timeout_s:g} s of CPU time ({how})"
            )
        if text:
            return RenderLimitExceeded(
                f"composition exceeded {limits.memory_mb} MB, the memory limit for one rendition "
                f"(the render worker died: {how})"
            )
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


def render_pdf(
    *,
    sources: Sources,
    locale: str,
    data: Mapping,
    watermark: str | None = None,
    limits: Limits | None = None,
    drawing: int = PRINT_DRAWING,
) -> RenderedPdf:
    """Compose and render one document in the render worker, under a timeout and memory cap,
    its charts drawn as `drawing` (a reprint passes its archived document's; UnknownDrawing
    for a drawing this code does not know, before anything is rendered)."""
    limits = limits or Limits()
    job = {
        "key": sources_key(sources, locale),
        "sources": sources,
        "locale": locale,
        "data": dict(data),
        "watermark": watermark,
        "drawing": drawing_checked(drawing),
    }
    worker = _current_worker()
    with worker.lock:
        header, body = worker.run(job, limits=limits)
    for record in header.get("logs", []):
        logging.getLogger(record["name"]).log(record["level"], "%s", record["msg"])
    if header.get("memory"):
        raise RenderLimitExceeded(
            f"rendering needed more than the {limits.memory_mb} MB memory limit"
        )
    if "error" in header:
        raise _error_from(header)
    return RenderedPdf(data=body, page_count=header["page_count"])


def _error_from(header: dict) -> CompositionError:
    cls = _ERRORS.get(header["error"], RenderError)
    errors = [FieldError(field=f, message=m) for f, m in header.get("errors", [])]
    return cls(header.get("reason", "composition failed"), errors=errors)


def compose_text(
    *,
    sources: Sources,
    locale: str,
    items: Sequence[tuple[Mapping, Sequence[str]]],
    limits: Limits,
) -> list[dict | CompositionError]:
    """Compose the text channels of every (data, channels) item in the worker, each item under
    the time and memory limits. One result per item, in order: the rendered channels (as stored
    on a communication), or the CompositionError saying why not."""
    key = sources_key(sources, locale)
    results: list[dict | CompositionError] = []
    limit_failures, last_limit = 0, RenderLimitExceeded("")
    worker = _current_worker()
    while len(results) < len(items):
        pending = items[len(results) :]
        if limit_failures >= MAX_LIMIT_FAILURES_PER_BATCH:
            reason = (
                f"not composed: the template exceeded its limits for {limit_failures} earlier "
                f"messages of this batch ({last_limit.reason})"
            )
            results += [RenderLimitExceeded(reason) for _ in pending]
            break
        job = {
            "kind": "text",
            "key": key,
            "sources": sources,
            "locale": locale,
            "items": [(dict(data), list(channels)) for data, channels in pending],
        }
        with worker.lock:
            try:
                for header, _ in worker.stream(job, limits=limits, until=len(pending)):
                    results += [_text_result(item, limits) for item in header["results"]]
            except RenderLimitExceeded as exc:
                # The worker is gone with the item it was on; the rest go to a fresh one.
                results.append(exc)
                limit_failures, last_limit = limit_failures + 1, exc
    return results


def _text_result(header: dict, limits: Limits) -> dict | CompositionError:
    if header.get("memory"):
        return RenderLimitExceeded(
            f"composition exceeded {limits.memory_mb} MB, the memory limit for one rendition"
        )
    if "error" in header:
        return _error_from(header)
    return header["rendered"]


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
