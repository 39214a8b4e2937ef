"""The durable job queue (staged_clip/jobs.py): positions, batches by key, one claim per job
among many workers, cancel, limits, and every job kept through a kill -9."""

import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from staged_clip import jobs


def queue(tmp_path):
    return jobs.Queue(tmp_path / "jobs.sqlite")


def test_a_job_answers_its_position_and_its_request(tmp_path):
    q = queue(tmp_path)
    made = [q.submit("normal", {"prompt": f"p{i}", "seed": i}, "k", steps=10) for i in range(3)]
    assert [position for _, position in made] == [0, 1, 2]
    found = q.get(made[2][0])
    assert found["state"] == "queued" and found["position"] == 2 and found["request"] == {"prompt": "p2", "seed": 2}
    q.claim("w")
    assert q.get(made[2][0])["position"] == 1 and q.get(made[0][0])["position"] is None
    assert q.get("no such job") is None


def test_a_submitted_job_is_on_disk_before_submit_returns(tmp_path):
    job, _ = queue(tmp_path).submit("normal", {"prompt": "a red apple"}, "k")  # the queue is never closed
    again = jobs.Queue(tmp_path / "jobs.sqlite")
    assert again.get(job)["request"] == {"prompt": "a red apple"} and again.counts()["queued"] == 1


def test_a_claim_takes_the_oldest_job_and_more_of_its_key(tmp_path):
    q = queue(tmp_path)
    ids = [q.submit("normal", {"i": i}, key)[0] for i, key in enumerate("ABAAB")]
    assert [j["id"] for j in q.claim("w", max_batch=2)] == [ids[0], ids[2]]
    assert [j["id"] for j in q.claim("w", max_batch=8)] == [ids[1], ids[4]]
    assert [j["id"] for j in q.claim("w", max_batch=8)] == [ids[3]]
    assert q.claim("w") == [] and q.counts()["running"] == 5


def test_no_job_is_claimed_twice_by_workers_on_the_same_file(tmp_path):
    q = queue(tmp_path)
    for i in range(200):
        q.submit("normal", {"i": i}, f"k{i % 3}")
    claimed, lock = [], threading.Lock()

    def work(name):
        mine = jobs.Queue(tmp_path / "jobs.sqlite")  # each worker its own connection
        while found := mine.claim(name, max_batch=4):
            for job in found:
                assert mine.end(job["id"], "done", {"by": name})
            with lock:
                claimed.extend(job["id"] for job in found)

    workers = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(claimed) == len(set(claimed)) == 200
    assert q.counts()["done"] == 200 and q.counts()["queued"] == 0


def test_cancel_stops_a_queued_or_running_job_and_nothing_ends_it_after(tmp_path):
    q = queue(tmp_path)
    first, _ = q.submit("normal", {}, "k")
    second, _ = q.submit("normal", {}, "k")
    assert q.cancel(second) == "queued" and q.get(second)["state"] == "cancelled"
    assert [j["id"] for j in q.claim("w", max_batch=8)] == [first]  # the cancelled one is not claimed
    assert q.progress(first, 3) and q.get(first)["step"] == 3
    assert q.cancel(first) == "running" and not q.progress(first, 4)  # the worker learns to stop
    assert not q.end(first, "done", {"image": "x.png"}) and q.get(first)["state"] == "cancelled"
    assert q.cancel(first) is None and q.cancel("no such job") is None  # already ended; unknown
    assert [r["n"] for r in q.active("bake")] == [] and q.submit("bake", {"n": 1}, "b")
    assert [r["n"] for r in q.active("bake")] == [1]


def test_a_job_ends_done_with_its_result_or_failed_with_one_line(tmp_path):
    q = queue(tmp_path)
    good, _ = q.submit("normal", {}, "k", steps=25)
    bad, _ = q.submit("normal", {}, "k", steps=25)
    q.claim("w", max_batch=2)
    assert q.end(good, "done", {"images": ["/images/a.png"]}) and q.end(bad, "failed", error="out of memory")
    assert q.get(good)["result"] == {"images": ["/images/a.png"]} and q.get(good)["step"] == 25
    assert q.get(bad)["state"] == "failed" and q.get(bad)["error"] == "out of memory"
    with pytest.raises(ValueError):
        q.end(good, "cancelled")


def test_the_queue_refuses_past_its_limit_and_queues_nothing(tmp_path):
    q = queue(tmp_path)
    for i in range(3):
        q.submit("normal", {}, "k", limit=3)
    with pytest.raises(jobs.QueueFull):
        q.submit("normal", {}, "k", limit=3)
    assert q.counts()["queued"] == 3
    q.claim("w")
    q.submit("normal", {}, "k", limit=3)  # a place came free


KILLED = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from staged_clip import jobs
q = jobs.Queue(sys.argv[2])
claimed = q.claim("doomed", max_batch=2)
print(",".join(job["id"] for job in claimed), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # mid-job, as kill -9 would
"""


def test_after_a_kill_9_every_accepted_job_runs_once_in_its_place(tmp_path):
    q = queue(tmp_path)
    ids = [q.submit("normal", {"seed": i}, "k")[0] for i in range(4)]
    q.close()
    done = subprocess.run([sys.executable, "-c", KILLED, str(ROOT), str(tmp_path / "jobs.sqlite")],
                          capture_output=True, text=True)
    assert done.returncode == -9 and done.stdout.strip().split(",") == ids[:2]
    again = jobs.Queue(tmp_path / "jobs.sqlite")
    assert again.counts()["running"] == 2 and again.recover() == 2
    assert [again.get(job)["position"] for job in ids] == [0, 1, 2, 3]  # back in their places
    ran = []
    while found := again.claim("w", max_batch=3):
        for job in found:
            ran.append((job["id"], job["request"]["seed"], job["runs"]))
            again.end(job["id"], "done", {})
    assert [r[0] for r in ran] == ids and [r[1] for r in ran] == [0, 1, 2, 3]  # each once, from its own seed
    assert [r[2] for r in ran] == [2, 2, 1, 1]  # the two the crash cut short ran again
