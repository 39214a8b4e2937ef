"""A durable queue of jobs in one SQLite file, for a server that keeps CLIP loaded.

A job is on disk before submit returns (a crash after that loses nothing). Workers claim jobs
in one write transaction each (BEGIN IMMEDIATE), so that no two workers, threads or processes
ever run the same job; a claim takes the oldest queued job and up to max_batch - 1 more
queued jobs that share its batch key (the renderer they need), oldest first. A job left
running by a crash goes back to the queue at the next start (recover), keeping its place, and
runs again from its seed: the same image. States: queued, running, done, failed, cancelled.
"""

import json
import sqlite3
import threading
import time
import uuid

STATES = ("queued", "running", "done", "failed", "cancelled")
ENDED = ("done", "failed", "cancelled")
SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, kind TEXT NOT NULL,
    request TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0, error TEXT, result TEXT, worker TEXT, runs INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, started REAL, finished REAL)"""


class QueueFull(Exception):
    """Submitted while as many jobs as the queue's limit wait."""


class Queue:
    """The jobs of one SQLite file (path; ":memory:" for a test). Safe to share between threads;
    several processes may open the same file."""

    def __init__(self, path, timeout=30.0):
        self.path = str(path)
        self.lock = threading.Lock()  # one connection, one statement at a time
        self.db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a job is on disk when submit returns
        self.db.execute(SCHEMA)
        self.db.execute("CREATE INDEX IF NOT EXISTS waiting ON jobs (state, key, seq)")

    def close(self):
        with self.lock:
            self.db.close()

    def write(self, work):
        """Run work(db) in one write transaction, taken at once (no other writer meanwhile)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                found = work(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return found

    def submit(self, kind, request, key, steps=0, limit=None):
        """Queue a job: (its id, its position: how many queued jobs are ahead of it). request: a
        JSON-able dict (the job's whole recipe, seed included); key: the batch key. limit: the
        most jobs that may wait (QueueFull past it)."""
        job = uuid.uuid4().hex

        def add(db):
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if limit is not None and waiting >= limit:
                raise QueueFull(f"{waiting} jobs are waiting, the most this queue takes")
            db.execute("INSERT INTO jobs (id, kind, request, key, state, steps, created) "
                       "VALUES (?, ?, ?, ?, 'queued', ?, ?)", (job, kind, json.dumps(request), key, steps, time.time()))
            return waiting

        return job, self.write(add)

    def get(self, job):
        """A job as a dict (request and result decoded, position where queued), or None."""
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job,)).fetchone()
            if row is None:
                return None
            found = dict(row)
            found["position"] = None if row["state"] != "queued" else self.db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq < ?", (row["seq"],)).fetchone()[0]
        found["request"] = json.loads(found["request"])
        found["result"] = None if found["result"] is None else json.loads(found["result"])
        return found

    def claim(self, worker, max_batch=1):
        """Claim the oldest queued job and up to max_batch - 1 more queued with its key, oldest first,
        in one transaction: [job dicts], now running and this worker's ([] when none waits)."""
        def take(db):
            first = db.execute("SELECT key FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if first is None:
                return []
            rows = db.execute("SELECT id FROM jobs WHERE state = 'queued' AND key = ? ORDER BY seq LIMIT ?",
                              (first["key"], max_batch)).fetchall()
            ids = [r["id"] for r in rows]
            db.executemany("UPDATE jobs SET state = 'running', worker = ?, started = ?, step = 0, runs = runs + 1 "
                           "WHERE id = ?", [(worker, time.time(), i) for i in ids])
            return ids

        return [self.get(job) for job in self.write(take)]

    def progress(self, job, step, steps=None):
        """Record a running job's step (and its steps in all, where given); False where it is no
        longer running (cancelled: stop it)."""
        return self.write(lambda db: db.execute(
            "UPDATE jobs SET step = ?, steps = COALESCE(?, steps) WHERE id = ? AND state = 'running'",
            (step, steps, job)).rowcount == 1)

    def end(self, job, state, result=None, error=None):
        """A running job ended: done (result: a JSON-able dict) or failed (error: one line). A job
        cancelled meanwhile stays cancelled. Returns whether it was running."""
        if state not in ("done", "failed"):
            raise ValueError(f"a job ends done or failed, not {state}")
        return self.write(lambda db: db.execute(
            "UPDATE jobs SET state = ?, result = ?, error = ?, finished = ?, step = CASE WHEN ? = 'done' THEN steps "
            "ELSE step END WHERE id = ? AND state = 'running'",
            (state, None if result is None else json.dumps(result), error, time.time(), state, job)).rowcount == 1)

    def cancel(self, job):
        """Cancel a queued or running job: the state it was in ("queued" or "running"), or None where
        it was neither (unknown, or ended)."""
        def stop(db):
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()
            if row is None or row["state"] not in ("queued", "running"):
                return None
            db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?", (time.time(), job))
            return row["state"]

        return self.write(stop)

    def active(self, kind):
        """The requests of the queued and running jobs of a kind (oldest first)."""
        with self.lock:
            rows = self.db.execute("SELECT request FROM jobs WHERE kind = ? AND state IN ('queued', 'running') "
                                   "ORDER BY seq", (kind,)).fetchall()
        return [json.loads(r["request"]) for r in rows]

    def recover(self, worker=None):
        """Put back in the queue, in their places, the jobs left running (by worker, or by any: a
        server starting again after a crash); how many."""
        where, args = ("state = 'running'", ()) if worker is None else ("state = 'running' AND worker = ?", (worker,))
        return self.write(lambda db: db.execute(f"UPDATE jobs SET state = 'queued', worker = NULL, step = 0 "
                                                f"WHERE {where}", args).rowcount)

    def running(self, worker):
        """The jobs a worker holds (running, claimed by it), as dicts."""
        with self.lock:
            ids = [r["id"] for r in self.db.execute("SELECT id FROM jobs WHERE state = 'running' AND worker = ?",
                                                      (worker,)).fetchall()]
        return [self.get(job) for job in ids]

    def counts(self):
        """{state: how many jobs are in it}, every state."""
        with self.lock:
            rows = self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {**{state: 0 for state in STATES}, **{state: n for state, n in rows}}
