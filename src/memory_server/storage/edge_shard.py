"""One open shard of the embedded engine: its readers and writers, and its HNSW builds.

The engine holds the GIL while it builds an index, so ``Shard`` builds on a copy of the
shard in a child process and swaps the built copy in. The store that opens, caps and
closes shards, and the collection API over them, are in ``storage/edge.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from memory_server.errors import Unavailable
from memory_server.storage.links import LinkCache
from memory_server.storage.ranking import NEXT, PREV

log = logging.getLogger(__name__)

META_FILE = "memory-server.json"
# What a clean close leaves for the next open: the link cache and the conversation tail.
# Read and removed at open, so a process that stops without closing leaves none behind
# and the next open learns the links again (a full scroll: 1.8 s of one core at 100k
# points, beside the first requests; reading this file takes 0.13 s).
STATE_FILE = "memory-server-state.json"
STATE_FORMAT = 1
DEFAULT_INDEX_THRESHOLD = 20_000
# The first build (below this an exact scan costs under 0.6 ms). Each later build waits
# for as many new points as are indexed, at most the threshold, so a collection is indexed
# at 5k, 10k, 20k, 40k, 60k... points: the exact scan of the newest points stays small
# while a collection is small (at 10k-20k it was 1.1-2.5 ms a query against 0.5 with HNSW),
# and past 20k nothing changes.
FIRST_INDEX_POINTS = 5_000

# Ranking reads only the conversation links of its ~200 candidates: whole payloads (the
# text above all) cost 2.8 ms of a 3.6 ms dense query at 100k memories.
LINKS = qe.PayloadSelector.Include([PREV, NEXT])


# Run in a child process: qdrant-edge's optimize() holds the GIL for the whole build
# (60 s at 100k points on one core), which would freeze every request of this process.
_BUILD_SCRIPT = """
import os
import sys
import qdrant_edge as qe
os.nice(5)  # serving keeps the upper hand
shard = qe.EdgeShard.load(sys.argv[1])
changed = shard.optimize()
shard.flush()
shard.close()
print(int(changed))
"""


def _index_kinds(path: Path) -> set[str]:
    """Dense-index kinds of a shard's segments on disk ("plain", "hnsw")."""
    kinds: set[str] = set()
    for meta in path.glob("segments/*/segment.json"):
        try:
            kinds.add(json.loads(meta.read_text())["config"]["vector_data"][""]["index"]["type"])
        except (OSError, ValueError, KeyError):
            continue
    return kinds


def recover_builds(path: Path) -> None:
    """Clear what a process stopped during an index build left in ``path/.building``.

    A live shard found there (stopped between the two renames of a swap) goes back in
    place; unfinished copies are dropped (the next open starts the build again).
    """
    building = path / ".building"
    if not building.is_dir():
        return
    for moved in building.glob("*.old"):
        live = path / moved.name.removesuffix(".old")
        if not live.exists():
            os.rename(moved, live)
            log.warning("restored the shard %s that an interrupted index build had moved aside", live.name)
    shutil.rmtree(building, ignore_errors=True)


class Shard:
    """One open shard, its write lock, and its background index builder.

    HNSW is built on a copy of the shard by a child process (see ``_BUILD_SCRIPT``);
    writes made meanwhile are logged and replayed on the built copy, which then replaces
    the live shard in a swap that readers wait out (well under a second). Until then
    searches stay exact on the live shard.
    """

    def __init__(
        self, shard: qe.EdgeShard, path: Path, config: qe.EdgeConfig, threshold: int, first: int
    ) -> None:
        self.shard = shard
        self.path = path
        self.config = config
        self.threshold = threshold
        self.first = first  # the store keeps it at most the threshold
        self.lock = threading.RLock()  # writers
        self.tail: Any = None
        self.links = LinkCache()  # for ranking (storage/links.py); writers below keep it true
        self._builder: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._replay: list[Any] | None = None  # writes since the build copy was taken
        self._gate = threading.Condition()
        self._readers = 0
        self._swapping = False
        self.closed = False
        # Points written since the last index build (by the meta file; a shard from
        # before it was kept counts as indexed if it has an HNSW segment).
        points = shard.info().points_count
        indexed = self._meta().get("indexed_points")
        if indexed is None:
            indexed = points if "hnsw" in _index_kinds(path) else 0
        self.indexed = min(points, int(indexed))
        self.unindexed = points - self.indexed
        self.restored = self._take_state(points)

    def _take_state(self, points: int) -> bool:
        """Restore the links and tail a clean close saved (``STATE_FILE``), removing the
        file; say whether it did. A file that does not match the shard is ignored."""
        where = self.path / STATE_FILE
        try:
            doc = json.loads(where.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            doc = None
        where.unlink(missing_ok=True)  # from here on this process writes; the file would go stale
        try:
            if doc["format"] != STATE_FORMAT or doc["points"] != points:
                raise ValueError(f"saved for {doc['points']} points, the shard has {points}")
            ids, prev, nxt = doc["ids"], doc["prev"], doc["next"]
            if not len(ids) == len(prev) == len(nxt):
                raise ValueError("link lists of different lengths")
            tail = doc["tail"]
            self.tail = None if tail is None else (tail[0], datetime.fromisoformat(tail[1]), tail[2])
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            log.warning("ignored the saved state of %s (%s); learning its links again", self.path.name, exc)
            return False
        self.links.wrote(dict(zip(ids, zip(prev, nxt, strict=True), strict=True)))
        return True

    def _save_state(self) -> None:
        """Write the links and tail for the next open (closing, after the last write)."""
        links = self.links.snapshot()
        tail = None if self.tail is None else [self.tail[0], self.tail[1].isoformat(), self.tail[2]]
        doc = {
            "format": STATE_FORMAT,
            "points": self.shard.info().points_count,
            "tail": tail,
            "ids": list(links),
            "prev": [link[0] for link in links.values()],
            "next": [link[1] for link in links.values()],
        }
        temporary = self.path / (STATE_FILE + ".tmp")
        try:
            temporary.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(temporary, self.path / STATE_FILE)
        except (OSError, TypeError, ValueError):  # only a cache: the next open learns instead
            log.warning("could not save the link cache of %s", self.path.name, exc_info=True)
            temporary.unlink(missing_ok=True)

    def _meta(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.path / META_FILE).read_text()))
        except (OSError, ValueError):
            return {}

    @contextmanager
    def reading(self) -> Iterator[qe.EdgeShard]:
        """The live shard, held so that a swap (or closing it) waits for this read to finish."""
        with self._gate:
            while self._swapping:
                self._gate.wait()
            if self.closed:
                raise Unavailable("the vector store is closed")
            self._readers += 1
        try:
            yield self.shard
        finally:
            with self._gate:
                self._readers -= 1
                if not self._readers:
                    self._gate.notify_all()

    def learn_links(self, page: int = 512) -> None:
        """Read every point's links into the cache (a shard just opened), 512 at a time:
        ~9 ms a page, 1.8 s of one core for 100k points, once per process."""

        def read_page(offset: Any) -> tuple[Any, Any]:
            with self.reading() as shard:
                return shard.scroll(
                    qe.ScrollRequest(limit=page, offset=offset, with_payload=LINKS, with_vector=False)
                )

        try:
            self.links.learn(read_page, lambda: self.closed)
        except Exception:  # closed under us: the cache fills on demand instead
            log.debug("learning links stopped", exc_info=True)

    def update(self, operation: Any) -> None:
        """Apply a write (and log it for the index build running, if any)."""
        with self.lock:
            self.shard.update(operation)
            if self._replay is not None:
                self._replay.append(operation)

    @property
    def build_at(self) -> int:
        """Points not yet indexed that start the next build: ``first`` at first, then as
        many as are indexed, at most ``threshold``."""
        return min(self.threshold, max(self.first, self.indexed))

    def maybe_index(self, written: int = 0) -> None:
        """Build HNSW in the background once ``build_at`` points are not yet indexed.

        The engine's own indexing threshold is ``first``, so every build has a segment to
        index.
        """
        self.unindexed += written
        if self.closed or (self._builder is not None and self._builder.is_alive()):
            return
        if self.unindexed < self.build_at:
            return
        self._builder = threading.Thread(target=self._builds, name="edge-hnsw", daemon=True)
        self._builder.start()

    def _builds(self) -> None:
        """Build, and build again while the writes made meanwhile are enough for another."""
        while self._build() and not self.closed and self.unindexed >= self.build_at:
            pass

    def _build(self) -> bool:
        work = self.path.parent / ".building" / self.path.name
        try:
            shutil.rmtree(work, ignore_errors=True)
            work.parent.mkdir(parents=True, exist_ok=True)
            with self.lock:
                self.shard.flush()
                shutil.copytree(self.path, work)
                self._replay = []
                covered = self.unindexed
            self._child = subprocess.Popen(
                [sys.executable, "-c", _BUILD_SCRIPT, str(work)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = self._child.communicate()
            if self._child.returncode != 0 or self.closed:
                if not self.closed:
                    log.error("HNSW build failed: %s", err.decode(errors="replace")[-500:])
                return False
            self.indexed = self._swap(work)
            self.unindexed = max(0, self.unindexed - covered)
            log.info("HNSW index built for %s (%s)", self.path.name, out.decode().strip())
            return True
        except Exception:  # a build that fails leaves exact search in place
            log.exception("HNSW build failed")
            return False
        finally:
            self._replay = None
            self._child = None
            shutil.rmtree(work, ignore_errors=True)

    def _swap(self, built: Path) -> int:
        """Put the built copy in place of the live shard; return the points it indexed
        (those of the copy: the writes replayed on it are not).

        The copy is completed first (the writes made during the build replayed and
        flushed, in its own directory), so that at every moment one of the two
        directories holds every write: a process stopped between the two renames leaves
        the live shard under ``.building/<name>.old``, and ``recover_builds`` puts it back.
        """
        old_dir = self.path.parent / ".building" / (self.path.name + ".old")
        with self.lock:  # writers wait from here; readers only for the renames
            copy = qe.EdgeShard.load(str(built), self.config)
            indexed = copy.info().points_count
            for operation in self._replay or []:
                copy.update(operation)
            meta = self._meta()
            meta["indexed_points"] = indexed
            copy.flush()
            copy.close()
            (built / META_FILE).write_text(json.dumps(meta))
            with self._gate:
                self._swapping = True
                while self._readers:
                    self._gate.wait()
            try:
                self.shard.close()
                shutil.rmtree(old_dir, ignore_errors=True)
                os.rename(self.path, old_dir)
                os.rename(built, self.path)
                try:
                    self.shard = qe.EdgeShard.load(str(self.path), self.config)
                except Exception:
                    os.rename(self.path, built)
                    os.rename(old_dir, self.path)
                    self.shard = qe.EdgeShard.load(str(self.path), self.config)
                    raise
            finally:
                with self._gate:
                    self._swapping = False
                    self._gate.notify_all()
        shutil.rmtree(old_dir, ignore_errors=True)
        return int(indexed)

    def wait_indexed(self) -> None:
        builder = self._builder
        if builder is not None:
            builder.join()

    def close_if_idle(self) -> bool:
        """Close unless a read, a write or an index build is under way; say whether it did."""
        if self._builder is not None and self._builder.is_alive():
            return False
        if not self.lock.acquire(blocking=False):
            return False
        try:
            with self._gate:
                if self._readers or self._swapping:
                    return False
                self.closed = True
            self.shard.flush()
            self._save_state()
            self.shard.close()
            return True
        finally:
            self.lock.release()

    def close(self) -> None:
        self.closed = True
        child = self._child
        if child is not None:
            child.terminate()  # the next open starts the build again
        self.wait_indexed()
        with self.lock:
            self.shard.flush()
            self._save_state()
            self.shard.close()
