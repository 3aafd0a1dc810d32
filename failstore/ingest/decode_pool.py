"""Decoding in worker processes: ``DecodePool`` (ordered results, bounded prefetch, a worker
that dies costs only its image, workers that cannot start are one error). See
docs/ingest-sources.md."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice

from PIL import Image, ImageFile

from failstore.errors import ConfigError, IngestError
from failstore.ingest.decode import (
    DEFAULT_MAX_PIXELS,
    Decoded,
    check_preprocesses,
    decode_one,
    one_line,
)
from failstore.ingest.sources import SourceItem
from failstore.models.protocol import Preprocess


def _worker_init(pil_limit: int | None, parent: int | None = None) -> None:
    Image.MAX_IMAGE_PIXELS = pil_limit
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if parent is not None:
        _exit_with_parent(parent)


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """A worker whose ingest was killed (kill -9 leaves no chance to stop the pool) exits within
    ``every_s``: a daemon thread watches for the worker being re-parented."""
    import os
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="failstore-parent-watch", daemon=True).start()


def _ping() -> bool:
    return True


def _decode_chunk(
    items: list[SourceItem], preprocesses: Sequence[Preprocess], max_pixels: int
) -> list[Decoded]:
    return [decode_one(i, preprocesses, max_pixels=max_pixels) for i in items]


class DecodePool:
    """Ordered decoding, inline (``workers=0``) or in ``spawn`` worker processes.

    At most ``workers * prefetch`` chunks of ``chunk_size`` items are in flight, so ``imap``
    consumes its input lazily. A worker that dies (segfault, OOM kill) turns the images of its
    chunk into errors ("decode worker process died ...") after they are retried one by one.
    """

    def __init__(
        self,
        preprocesses: Sequence[Preprocess],
        workers: int = 0,
        chunk_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        *,
        prefetch: int = 2,
        close_timeout: float = 5.0,
        start_timeout: float = 120.0,
    ) -> None:
        check_preprocesses(preprocesses)
        if workers < 0 or chunk_size < 1 or prefetch < 1:
            raise ConfigError(
                f"decode pool needs workers >= 0, chunk_size >= 1 and prefetch >= 1, got "
                f"workers={workers} chunk_size={chunk_size} prefetch={prefetch}"
            )
        self.preprocesses = list(preprocesses)
        self.workers = workers
        self.chunk_size = chunk_size
        self.max_pixels = max_pixels
        self.prefetch = prefetch
        self.close_timeout = close_timeout
        self.start_timeout = start_timeout
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            import multiprocessing

            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(Image.MAX_IMAGE_PIXELS, os.getpid()),
            )
            self._check_started(self._executor)
        return self._executor

    def _check_started(self, executor: ProcessPoolExecutor) -> None:
        """A pool whose workers cannot start fails every task: that is one error for the whole
        ingest, not a decode error per image. Raised before any image is decoded."""
        try:
            executor.submit(_ping).result(timeout=self.start_timeout)
        except Exception as e:  # BrokenProcessPool, TimeoutError, pickling errors
            self.close()
            raise IngestError(
                f"the decode worker processes could not start ({type(e).__name__}: {e})",
                hint="run with --workers 0 to decode in this process; under the 'spawn' start "
                "method a program read from standard input cannot run worker processes",
            ) from e

    def _submit(self, chunk: list[SourceItem]) -> Future[list[Decoded]]:
        try:
            return self._pool().submit(_decode_chunk, chunk, self.preprocesses, self.max_pixels)
        except BrokenProcessPool:  # a worker died; its futures fail and are retried in imap
            self.close()
            return self._pool().submit(_decode_chunk, chunk, self.preprocesses, self.max_pixels)

    def _retry_one_by_one(self, chunk: list[SourceItem]) -> list[Decoded]:
        self.close()  # the pool is (probably) broken: start a fresh one
        results = []
        for item in chunk:
            try:
                results += self._submit([item]).result()
            except Exception as e:
                self.close()
                reason = (
                    f"decode worker process died while decoding this image ({type(e).__name__})"
                )
                if not isinstance(e, BrokenProcessPool):
                    reason = f"could not decode in a worker process: {type(e).__name__}: {e}"
                results.append(Decoded(item=item, image_id=None, error=one_line(reason)))
        return results

    def imap(self, items: Iterable[SourceItem]) -> Iterator[Decoded]:
        """Decoded results in input order; bad images come back with ``error`` set."""
        if self.workers == 0:
            for item in items:
                yield decode_one(item, self.preprocesses, max_pixels=self.max_pixels)
            return
        source = iter(items)
        pending: deque[tuple[list[SourceItem], Future[list[Decoded]]]] = deque()

        def fill() -> None:
            while len(pending) < self.workers * self.prefetch:
                chunk = list(islice(source, self.chunk_size))
                if not chunk:
                    return
                pending.append((chunk, self._submit(chunk)))

        try:
            fill()
            while pending:
                chunk, future = pending.popleft()
                try:
                    results = future.result()
                except Exception:
                    results = self._retry_one_by_one(chunk)
                    # chunks queued on the old pool are lost with it: queue them again
                    old = list(pending)
                    pending.clear()
                    for c, f in old:
                        ok = f.done() and not f.cancelled() and f.exception() is None
                        pending.append((c, f if ok else self._submit(c)))
                yield from results
                fill()
        finally:
            for _, future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the workers: those still busy get ``close_timeout`` seconds, then are killed."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)
        executor.shutdown(wait=False, cancel_futures=True)
        # a worker the executor started while shutting down is joined too
        try:
            later = list((getattr(executor, "_processes", None) or {}).values())
        except RuntimeError:  # the manager thread changed the dict meanwhile
            later = []
        processes += [p for p in later if p not in processes]
        deadline = time.monotonic() + self.close_timeout
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in processes:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive() and hasattr(p, "kill"):
                p.kill()
                p.join(5.0)  # SIGKILL cannot be ignored: wait until it is gone (a busy machine)
        # The executor's manager thread reaps the workers too: a worker it reaped a moment ago
        # still looks alive here (our waitpid gets ECHILD) until that thread records the exit
        # code, so wait for it; it ends once its workers are gone.
        if manager is not None:
            manager.join(max(1.0, deadline - time.monotonic()))
