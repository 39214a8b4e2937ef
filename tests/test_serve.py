"""serve.py: the API through FastAPI's test client, the worker run in-process on the toy CLIP, and
the server as a process (a token beyond loopback; kill -9 mid-queue and a restart)."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import ROOT
from staged_clip import jobs, models, orders, server, worker
from staged_clip.servebench import answering, free_port

BAKE = "a_red_circle_on_the_left"
SHARED = "shared_prompts_toy"
SMALL = {"size": 16, "steps": 6}


@pytest.fixture(scope="module")
def toy():
    return models.load_clip("toy", "cpu")


def make_server(toy, folder, token=None, max_queue=50, max_batch=8, preview_every=2):
    baked_dir = folder / "baked"
    baked_dir.mkdir(exist_ok=True)
    for name in (BAKE, SHARED):
        shutil.copy(ROOT / "baked" / f"{name}.pt", baked_dir)
    (folder / "images").mkdir(exist_ok=True)
    place = worker.Place(toy, torch.get_num_threads(), baked_dir, folder / "images", max_batch, preview_every)
    queue = jobs.Queue(folder / "jobs.sqlite3")
    served = server.Server(queue, worker.Live(), [worker.Worker(queue, None, place)], orders.Limits(),
                           baked_dir, folder / "images", token, max_queue)
    served.workers[0].live = served.live
    return served


@pytest.fixture
def served(toy, tmp_path):
    return make_server(toy, tmp_path)


@pytest.fixture
def client(served):
    return TestClient(server.create_app(served))


def post(client, body, path="/api/jobs"):
    return client.post(path, json=body)


def png_of(served, url):
    return Image.open(served.images / Path(url).name)


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def cli(script, words, out):
    """The image a script makes for these words, as a user would run it (its PNG's path)."""
    cmd = [sys.executable, str(ROOT / script), *words, "--clip-model", "toy", "--device", "cpu",
           "--threads", str(torch.get_num_threads()), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    return out


def test_a_job_is_queued_then_done_with_the_png_its_script_makes(served, client, tmp_path):
    answer = post(client, {"prompt": "a red circle", "seed": 3, **SMALL})
    assert answer.status_code == 202
    job = answer.json()
    assert job["position"] == 0 and set(job) == {"id", "position", "url"}
    view = client.get(job["url"]).json()
    assert view["state"] == "queued" and view["position"] == 0 and view["images"] == []
    assert served.workers[0].run_once() == 1
    view = client.get(job["url"]).json()
    assert view["state"] == "done" and view["step"] == view["steps"] == 6 and view["error"] is None
    image = client.get(view["images"][0])
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    made = png_of(served, view["images"][0])
    assert made.text["software"] == "staged-clip normal.py" and json.loads(made.text["settings"])["prompt"] == \
        "a red circle" and made.text["seed"] == "3"
    alone = cli("normal.py", ["a red circle", "--seed", "3", "--size", "16", "--steps", "6"], tmp_path / "cli.png")
    assert np.array_equal(pixels(alone), pixels(served.images / Path(view["images"][0]).name))
    with Image.open(alone) as theirs:
        ours = {k: v for k, v in made.text.items() if k not in ("seconds", "loss")}
        assert {k: v for k, v in theirs.text.items() if k not in ("seconds", "loss")} == ours
    assert client.get(f"{job['url']}/preview.png").content == image.content  # done: the image itself


def test_jobs_of_one_renderer_run_as_one_batch_each_as_its_own_command(served, client, tmp_path):
    asked = [{"prompt": "a red circle", "seed": 5, **SMALL}, {"prompt": "a blue square", "seed": 9, **SMALL},
             {"prompt": "a green triangle", "seed": 5, "variations": 2, **SMALL},
             {"prompt": "a red circle", "seed": 1, "size": 24, "steps": 6}]  # another renderer: another batch
    ids = [post(client, body).json()["id"] for body in asked]
    assert served.workers[0].run_once() == 3  # the first three share a renderer
    assert [client.get(f"/api/jobs/{i}").json()["state"] for i in ids] == ["done"] * 3 + ["queued"]
    assert served.workers[0].run_once() == 1
    views = [client.get(f"/api/jobs/{i}").json() for i in ids]
    assert len(views[2]["images"]) == 3 and views[2]["result"]["seeds"] == [5, 6]  # two and their sheet
    for body, view in zip(asked[1:3], views[1:3]):
        words = [body["prompt"], "--seed", str(body["seed"]), "--size", "16", "--steps", "6"]
        if body.get("variations"):
            words += ["--variations", "2"]
        alone = cli("normal.py", words, tmp_path / f"{body['seed']}.png")
        first = alone if not body.get("variations") else alone.with_name(f"{alone.stem}_2.png")
        ours = served.images / Path(view["images"][-2 if body.get("variations") else 0]).name
        assert np.abs(pixels(first) - pixels(ours)).max() <= 17  # float rounding moves a level at most
        assert (np.abs(pixels(first) - pixels(ours)).max(-1) > 0).mean() < 0.05


def test_microwave_and_auto_jobs_are_their_scripts_runs(served, client, tmp_path):
    one = post(client, {"prompt": "a blue circle", "method": "microwave", "bake": BAKE, "seed": 2, **SMALL}).json()
    two = post(client, {"prompt": "a blue circle", "method": "auto", "seed": 2, "steps": 2}).json()
    served.workers[0].run_once()
    served.workers[0].run_once()
    mw, auto = (client.get(j["url"]).json() for j in (one, two))
    assert mw["state"] == auto["state"] == "done", (mw["error"], auto["error"])
    alone = cli("microwave.py", ["a blue circle", str(served.baked_dir / f"{BAKE}.pt"), "--seed", "2", "--size",
                                 "16", "--steps", "6"], tmp_path / "mw.png")
    assert np.array_equal(pixels(alone), pixels(served.images / Path(mw["images"][0]).name))
    assert png_of(served, mw["images"][0]).text["baked_prompt"] == "a red circle on the left"
    assert png_of(served, auto["images"][0]).text["software"] == "staged-clip auto_microwave.py"


def test_every_bad_request_is_one_line_and_queues_nothing(served, client):
    bad = [({"prompt": "a red circle", "size": 1000}, 422, "size must be a whole number from 8 to 128"),
           ({"prompt": "a red circle", "steps": 0}, 422, "steps must be a whole number from 1 to 500"),
           ({"prompt": "a red circle", "variations": 9}, 422, "variations must be a whole number from 1 to 8"),
           ({"prompt": "a red circle", "seed": -1}, 422, "seed must be"),
           ({"prompt": "a red circle", "size": True}, 422, "size must be"),
           ({"prompt": "a red circle", "method": "bake"}, 422, "method must be one of normal, microwave, auto"),
           ({"prompt": "a red circle", "colour": 1}, 422, "unknown field 'colour'"),
           ({"prompt": ""}, 422, "prompt must be a text of 1 to 300 characters"),
           ({"prompt": "x" * 301}, 422, "prompt must be a text"),
           ({"prompt": "x " * 120}, 422, "prompt too long for CLIP's 77-token context"),
           ({"prompt": "/etc/passwd.png"}, 422, "a served prompt cannot name an image file"),
           ({"prompt": "a cat:x"}, 422, "prompt:"),
           ({"prompt": "a", "method": "microwave", "bake": "../baked/x"}, 422, "no paths"),
           ({"prompt": "a", "method": "microwave", "bake": "baked/x.pt"}, 422, "no paths"),
           ({"prompt": "a", "method": "microwave", "bake": "nothing_here"}, 422, "no bake named 'nothing_here'"),
           ({"method": "microwave", "bake": SHARED}, 422, "a shared bake"),
           ({"prompt": "a", "method": "microwave"}, 422, "bake is needed for method microwave"),
           ({"prompt": "a", "bake": BAKE}, 422, "bake goes with method microwave"),
           ({"prompt": "a", "palette": "/etc/hosts"}, 422, "palette must be one of"),
           ({"prompt": "a", "palette": "#12"}, 422, "palette"),
           ({"prompt": "a", "dither": "yes"}, 422, "dither must be true or false"),
           ({"prompt": "a", "method": ["normal"]}, 422, "method must be one of"),
           ({"prompt": "a", "palette": "cafe,bead"}, 422, "palette must be one of"),  # words, perhaps files
           ({"prompt": "a", "palette": "#fff"}, 422, "at least 2 distinct colours"),
           ({"prompt": "a red circle | a red circle:-1"}, 422, "cancel out"),
           (["a list"], 400, "the body must be a JSON object")]
    for body, status, says in bad:
        answer = post(client, body)
        assert answer.status_code == status, (body, answer.text)
        assert says in answer.json()["error"] and "\n" not in answer.json()["error"], (body, answer.json())
    for body in (b"{not json", b"[" * 5000 + b"]" * 5000, b'{"prompt": "\xff\xfe"}'):
        answer = client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"].startswith("the body is not JSON"), body[:20]
    assert client.get("/api/jobs/" + "a" * 5000).status_code == 404
    form = client.post("/api/jobs", data={"prompt": "a red circle"})  # what a form on another site can send
    assert form.status_code == 415 and "application/json" in form.json()["error"]
    big = client.post("/api/jobs", content=json.dumps({"prompt": "a" * 70000}).encode())
    assert big.status_code == 413 and "65536" in big.json()["error"]
    assert client.post("/api/bakes", json={"prompt": "a", "name": "../x"}).status_code == 422
    assert client.get("/images/..%2Fjobs.sqlite3").status_code == 404
    assert client.get("/images/jobs.sqlite3").status_code == 404
    assert served.queue.counts()["queued"] == 0
    assert post(client, {"prompt": "a red circle", **SMALL}).status_code == 202  # it keeps serving


def test_a_palette_of_colours_is_written_out_and_auto_needs_a_bake(served, client):
    job = post(client, {"prompt": "a red circle", "palette": "#FFF, #000000", **SMALL}).json()
    assert client.get(job["url"]).json()["request"]["palette"] == "#ffffff,#000000"
    for bake in served.baked_dir.glob("*.pt"):
        bake.unlink()
    refused = post(client, {"prompt": "a red circle", "method": "auto"})
    assert refused.status_code == 422 and "needs a bake of toy" in refused.json()["error"]


def test_a_bake_never_replaces_another(served, client):
    first = client.post("/api/bakes", json={"prompt": "a green square", "name": "mine", "meta_steps": 2})
    assert first.status_code == 202
    again = client.post("/api/bakes", json={"prompt": "a blue square", "name": "mine"})  # queued, not yet a file
    assert again.status_code == 409 and "under way" in again.json()["error"]
    shipped = client.post("/api/bakes", json={"prompt": "a red circle on the left"})  # its default name exists
    assert shipped.status_code == 409 and BAKE in shipped.json()["error"]


def test_a_job_cancelled_while_its_images_are_written_keeps_none(served, client, monkeypatch):
    job = post(client, {"prompt": "a red circle", "variations": 2, **SMALL}).json()["id"]
    end = served.queue.end

    def cancelled_meanwhile(*args, **kwargs):
        client.delete(f"/api/jobs/{job}")  # the DELETE lands after the worker's last check
        return end(*args, **kwargs)

    monkeypatch.setattr(served.queue, "end", cancelled_meanwhile)
    assert served.workers[0].run_once() == 1
    assert client.get(f"/api/jobs/{job}").json()["state"] == "cancelled"
    assert not list(served.images.glob(f"{job}*")) and served.live.get(job) is None


def test_a_failing_queue_puts_the_batch_back(served, client, monkeypatch):
    import sqlite3
    job = post(client, {"prompt": "a red circle", **SMALL}).json()["id"]
    tries = []

    def failing(*args, **kwargs):
        tries.append(args)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(served.queue, "end", failing)
    with working(served):
        assert wait_until(lambda: tries)
    assert client.get(f"/api/jobs/{job}").json()["state"] == "queued" and served.live.get(job) is None
    monkeypatch.undo()
    assert served.workers[0].run_once() == 1 and client.get(f"/api/jobs/{job}").json()["state"] == "done"


def test_a_full_queue_answers_429_with_retry_after(toy, tmp_path):
    served = make_server(toy, tmp_path, max_queue=2)
    client = TestClient(server.create_app(served))
    assert [post(client, {"prompt": "a red circle"}).status_code for _ in range(3)] == [202, 202, 429]
    full = post(client, {"prompt": "a red circle"})
    assert int(full.headers["Retry-After"]) >= 1 and "2 jobs are waiting" in full.json()["error"]
    assert served.queue.counts()["queued"] == 2


@contextlib.contextmanager
def working(served, delay=0.0, crew=None):
    """The server's workers (or crew) running, a thread each, started after delay seconds, while the
    block runs."""
    stop = threading.Event()
    threads = [threading.Thread(target=w.run_forever, args=(stop,)) for w in crew or served.workers]
    for thread in threads:
        threading.Timer(delay, thread.start).start()
    try:
        yield
    finally:
        stop.set()
        time.sleep(delay)
        for thread in threads:
            thread.join()


def wait_until(condition, seconds=20):
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        time.sleep(0.02)
    return False


def cancel_while_running(served, client, job):
    """Wait for a job's first steps, cancel it and wait for its worker to let go: its view."""
    with working(served):
        assert wait_until(lambda: client.get(f"/api/jobs/{job}").json()["step"] >= 2)
        view = client.get(f"/api/jobs/{job}").json()
        if view["kind"] == "render":
            assert client.get(f"/api/jobs/{job}/preview.png").content[:4] == b"\x89PNG"  # a live preview
        assert client.delete(f"/api/jobs/{job}").status_code == 200
        assert wait_until(lambda: served.live.get(job) is None)
    return {**client.get(f"/api/jobs/{job}").json(), "steps_then": view["steps"]}


def test_cancel_a_queued_job_and_a_running_one(served, client):
    queued = post(client, {"prompt": "a red circle", **SMALL}).json()["id"]
    assert client.delete(f"/api/jobs/{queued}").json() == {"id": queued, "state": "cancelled"}
    assert client.delete(f"/api/jobs/{queued}").status_code == 409
    assert served.workers[0].run_once() == 0  # nothing left to run
    long = post(client, {"prompt": "a blue square", "size": 16, "steps": 400, "seed": 1}).json()["id"]
    view = cancel_while_running(served, client, long)
    assert view["state"] == "cancelled" and view["step"] < 400 and not list(served.images.glob(f"{long}*"))


def test_cancel_a_running_bake_leaves_no_file(served, client):
    job = client.post("/api/bakes", json={"prompt": "a red square", "name": "never", "size": 8, "stages": 2,
                                          "steps": 2, "meta_steps": 100}).json()["id"]
    view = cancel_while_running(served, client, job)
    assert view["steps_then"] == 100 and view["state"] == "cancelled" and view["step"] < 100
    assert not (served.baked_dir / "never.pt").exists()


def test_events_stream_position_progress_preview_and_the_end(served, client):
    job = post(client, {"prompt": "a red circle", **SMALL}).json()["id"]
    with working(served, delay=0.5):  # the stream sees the job queued first
        with client.stream("GET", f"/api/jobs/{job}/events") as stream:
            text = "".join(stream.iter_text())
    names = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert names[0] == "position" and "progress" in names and "preview" in names and names[-1] == "done", names
    done = json.loads(text.split("event: done\ndata: ", 1)[1].split("\n")[0])
    assert done["state"] == "done" and done["images"]
    previews = [json.loads(block.split("data: ", 1)[1]) for block in text.split("\n\n") if "event: preview" in block]
    assert all(p["image"].startswith("data:image/png;base64,") for p in previews)


def test_bakes_are_listed_and_a_bake_is_a_job(served, client):
    listed = {b["name"]: b for b in client.get("/api/bakes").json()["bakes"]}
    assert listed[BAKE]["prompt"] == "a red circle on the left" and listed[BAKE]["kind"] == "prompt"
    assert listed[SHARED]["kind"] == "shared" and listed[SHARED]["usable"]
    answer = client.post("/api/bakes", json={"prompt": "a green square", "name": "green", "size": 8, "stages": 2,
                                             "steps": 2, "meta_steps": 2})
    assert answer.status_code == 202
    served.workers[0].run_once()
    view = client.get(answer.json()["url"]).json()
    assert view["state"] == "done", view["error"]
    assert "green" in {b["name"] for b in client.get("/api/bakes").json()["bakes"]}
    assert (served.baked_dir / "green.pt").is_file()
    assert client.post("/api/bakes", json={"prompt": "a", "name": "green"}).status_code == 409
    replay = post(client, {"prompt": "a green square", "method": "microwave", "bake": "green", **SMALL})
    assert replay.status_code == 202


def test_the_token_guards_all_but_the_page(toy, tmp_path):
    client = TestClient(server.create_app(make_server(toy, tmp_path, token="s3cret")))
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    for path in ("/api/status", "/api/bakes", "/images/" + "0" * 32 + ".png"):
        refused = client.get(path)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert post(client, {"prompt": "a"}).status_code == 401


def test_without_a_token_it_answers_to_loopback_names_only(toy, tmp_path):
    served = make_server(toy, tmp_path)
    served.hosts = ("127.0.0.1", "localhost", "::1")
    client = TestClient(server.create_app(served), base_url="http://127.0.0.1:8000")
    assert client.get("/api/status").status_code == 200
    assert client.get("/api/status", headers={"Host": "localhost:8000"}).status_code == 200
    rebound = client.get("/api/status", headers={"Host": "evil.example:8000"})  # DNS rebound to loopback
    assert rebound.status_code == 421 and "--token" in rebound.json()["error"]


def test_two_workers_on_one_queue_run_each_job_once(toy, tmp_path):
    served = make_server(toy, tmp_path, max_batch=3)
    other = worker.Worker(served.queue, served.live, worker.Place(toy, 1, served.baked_dir, served.images, 3, 100,
                                                                  "other"))
    client = TestClient(server.create_app(served))
    ids = [post(client, {"prompt": p, "seed": s, "size": 8, "steps": 2}).json()["id"]
           for s in range(6) for p in ("a red circle", "a blue square")]
    with working(served, crew=[served.workers[0], other]):
        assert wait_until(lambda: served.queue.counts()["done"] == len(ids))
    found = [served.queue.get(i) for i in ids]
    assert all(j["state"] == "done" and j["runs"] == 1 for j in found)


def serve(folder, port, *more):
    return subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--clip-model", "toy", "--devices", "cpu",
                             "--port", str(port), "--data", str(folder), "--baked-dir", str(ROOT / "baked"),
                             "--threads", "1", *more], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_up(port, seconds=60):
    assert answering(f"http://127.0.0.1:{port}", seconds), "the server did not start"


def test_serve_refuses_other_hosts_without_a_token_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--clip-model", "toy", "--host", "0.0.0.0",
                           "--data", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "--token" in done.stderr


@pytest.mark.parametrize("case", ["port taken", "no such device", "no such model"])
def test_serve_refuses_a_bad_start_in_one_line(case, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] if case == "port taken" else free_port()
        flags = {"port taken": [], "no such device": ["--devices", "tpu:7"], "no such model": ["--clip-model", "nope"]}
        done = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--clip-model", "toy", "--port", str(port),
                               "--data", str(tmp_path), *flags[case]], capture_output=True, text=True)
    says = {"port taken": "pass another --port", "no such device": "unknown device 'tpu:7'",
            "no such model": "unknown CLIP model 'nope'"}
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and says[case] in done.stderr, done.stderr


def test_kill_9_mid_queue_then_a_restart_does_every_job_once(tmp_path):
    import httpx
    port = free_port()
    first = serve(tmp_path / "data", port, "--max-batch", "2")  # small batches: some still wait at the kill
    try:
        wait_up(port)
        url = f"http://127.0.0.1:{port}/api/jobs"
        ids = [httpx.post(url, json={"prompt": p, "seed": s, "size": 16, "steps": 40}).json()["id"]
               for s in range(4) for p in ("a red circle", "a blue square", "a green triangle")]
        for _ in range(600):
            if httpx.get(f"{url}/{ids[0]}").json()["state"] != "queued":
                break
            time.sleep(0.05)
        second = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--clip-model", "toy", "--port",
                                 str(free_port()), "--data", str(tmp_path / "data")], capture_output=True, text=True)
        assert second.returncode == 1 and "another serve.py is serving --data" in second.stderr  # one queue, one server
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    queue = jobs.Queue(tmp_path / "data" / "jobs.sqlite3")
    states = [queue.get(i)["state"] for i in ids]
    assert "running" in states and "queued" in states, states
    queue.close()
    port = free_port()
    second = serve(tmp_path / "data", port)
    try:
        wait_up(port)
        for _ in range(1200):
            views = [httpx.get(f"http://127.0.0.1:{port}/api/jobs/{i}").json() for i in ids]
            if all(v["state"] == "done" for v in views):
                break
            time.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        out = second.communicate(timeout=30)[0]
    assert all(v["state"] == "done" for v in views), [v["state"] for v in views]
    assert "queued again" in out
    ran_twice = [v for v in views if v["runs"] == 2]
    assert ran_twice and all(v["runs"] in (1, 2) for v in views)
    images = sorted(p.name for p in (tmp_path / "data" / "images").glob("*.png"))
    assert images == sorted(f"{i}.png" for i in ids)  # one image each: no job done twice, none lost


def test_the_python_client_in_docs_serve_md_makes_its_image(tmp_path):
    import re
    code = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "serve.md").read_text(), re.S)[0]
    assert len(code.strip().splitlines()) <= 30
    port = free_port()
    process = serve(tmp_path / "data", port)
    try:
        wait_up(port)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "SERVER": f"http://127.0.0.1:{port}"}, timeout=300)
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert done.returncode == 0, done.stderr
    names = eval(done.stdout.strip().splitlines()[-1])  # the list the client prints
    with Image.open(tmp_path / names[0]) as image:
        assert json.loads(image.text["settings"])["prompt"] == "a red circle on the left"
