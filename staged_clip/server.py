"""serve.py's web server: a FastAPI app over the job queue (jobs.Queue), the workers' Live
progress, the bake folder and the images folder, and the page at /.

Every answer is JSON, an error one line ({"error": "..."}); a request is checked (orders.py)
and on disk before its 202. With a token, every request but the page and its static files
needs "Authorization: Bearer TOKEN".
"""

import asyncio
import base64
import functools
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from . import orders
from .jobs import QueueFull

PAGE = Path(__file__).parent / "page"
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
IMAGE = re.compile(r"[0-9a-f]{32}(?:_(?:[0-9]{1,2}|sheet))?\.png")
JOB = re.compile(r"[0-9a-f]{32}")


@dataclass
class Server:
    """What the app serves: the queue, the workers' Live progress and the workers (worker.Worker),
    the request Limits, the folders of bakes and images, the token (None: none asked), the most
    jobs that may wait, and how often (seconds) an event stream looks for news."""

    queue: object
    live: object
    workers: list
    limits: object
    baked_dir: Path
    images: Path
    token: str = None
    max_queue: int = 1000
    poll: float = 0.1
    hosts: tuple = None  # the Host names a request may give (None: any); see serving.build
    held: object = None  # the --data folder's lock (serving.hold), held as long as this lives
    bakes: dict = field(default_factory=dict)  # file name -> (modified, its listing)

    @property
    def model(self):
        return self.workers[0].place.model


def error(status, message, headers=None):
    """A JSON error of one line."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def public(path):
    """Whether a path is the page or its static files (served without the token)."""
    return path == "/" or path.startswith("/static/")


def create_app(server):
    """The FastAPI app of a Server."""
    app = FastAPI(title="staged-clip", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request, call_next):
        host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]")
        if server.hosts is not None and host not in server.hosts:  # a page elsewhere, its name rebound here
            return error(421, f"this server answers to {', '.join(server.hosts)} only; give --token to serve "
                              f"other names")
        if server.token is not None and not public(request.url.path):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {server.token}".encode()):
                return error(401, "this server needs its token: send 'Authorization: Bearer TOKEN'",
                             {"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > server.limits.body:
            return error(413, f"the body may be at most {server.limits.body} bytes")
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def any_error(request, e):
        return error(500, f"the server failed on this request ({type(e).__name__}); it keeps serving")

    add_job_routes(app, server)
    add_bake_routes(app, server)
    add_file_routes(app, server)
    return app


async def body_of(request, server):
    """A request's JSON body (orders.Refused where it is too long or not JSON). Only a body sent as
    application/json is read: a form on another site cannot send one without the browser asking
    this server first, which it never allows."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise orders.Refused(415, "send the body as JSON, with 'Content-Type: application/json'")
    raw = b""
    async for chunk in request.stream():  # read no further than the limit, whatever the headers said
        raw += chunk
        if len(raw) > server.limits.body:
            raise orders.Refused(413, f"the body may be at most {server.limits.body} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past Python's depth
        raise orders.Refused(400, "the body is not JSON (or nests too deep)") from None


def submit(server, kind, request, key):
    """Queue a checked request: a 202 with its id and position, or a 429 with Retry-After."""
    try:
        job, position = server.queue.submit(kind, request, key, limit=server.max_queue)
    except QueueFull as e:
        return error(429, f"{e}; try again later", {"Retry-After": str(retry_after(server))})
    return JSONResponse({"id": job, "position": position, "url": f"/api/jobs/{job}"}, status_code=202)


def retry_after(server):
    """Seconds until the queue has room again: about the time a batch takes, as the last jobs' pace
    says (at least 1)."""
    seconds = [s for w in server.workers for s in w.seconds]
    pace = sum(seconds) / len(seconds) if seconds else 1.0  # a job's, from claim to done
    return max(1, math.ceil(pace * server.workers[0].place.max_batch / len(server.workers)))  # a batch's


def check_with_model(server, request):
    """What only the model and the bakes tell (run in a thread: it embeds the prompt): the prompt
    fits CLIP's context and its weights do not cancel out, the bake replays for this request (a
    shared bake needs a prompt) at this model's width, auto has a bake of this model to draw
    from. Refused (422) otherwise."""
    from . import baked, knobs, prompts
    from .errors import UserError
    model = server.model
    if request.get("prompt") is not None:
        try:
            prompts.load_prompt(model, request["prompt"])
        except UserError as e:
            raise orders.Refused(422, str(e) if str(e).startswith("prompt") else f"prompt: {e}") from None
    if request.get("method") == "auto" and not any(b["usable"] for b in bake_listings(server)):
        raise orders.Refused(422, f"method auto needs a bake of {model.name} in the bake folder (GET /api/bakes)")
    if request.get("bake") is not None:
        try:
            bake = baked.load_baked(orders.bake_name(request["bake"], server.baked_dir))
            knobs.check_replay(bake, request.get("prompt") is not None)
            baked.check_stage_width(bake, model.dim)
        except UserError as e:
            raise orders.Refused(422, f"bake {request['bake']}: {e}") from None


def job_view(server, job):
    """A job as GET /api/jobs/{id} answers: state, position, step of steps, images, error."""
    live = server.live.get(job["id"])
    step, steps = (live["step"], live["steps"]) if live else (job["step"], job["steps"])
    result = job["result"] or {}
    return {"id": job["id"], "kind": job["kind"], "state": job["state"], "position": job["position"],
            "step": step, "steps": steps, "preview": live["version"] if live else None,
            "images": result.get("images", []), "error": job["error"],
            "request": job["request"], "result": result, "runs": job["runs"], "created": job["created"],
            "started": job["started"], "finished": job["finished"]}


def find(server, job):
    """A job by id (orders.Refused 404 where there is none)."""
    found = server.queue.get(job) if JOB.fullmatch(job) else None
    if found is None:
        raise orders.Refused(404, f"no job {job[:40]!r}")
    return found


def refusals(route):
    """A route whose orders.Refused becomes its one-line JSON error."""
    @functools.wraps(route)
    async def answer(*args, **kwargs):
        try:
            return await route(*args, **kwargs)
        except orders.Refused as e:
            return error(e.status, e.message)
    return answer


def add_job_routes(app, server):
    """POST /api/jobs, GET /api/jobs/{id} (and its events and preview), DELETE /api/jobs/{id}."""
    @app.post("/api/jobs", status_code=202)
    @refusals
    async def post_job(request: Request):
        checked = orders.check_render(await body_of(request, server), server.limits, server.baked_dir)
        await run_in_threadpool(check_with_model, server, checked)
        return submit(server, "render", checked, orders.batch_key(checked))

    @app.get("/api/jobs/{job}")
    @refusals
    async def get_job(job: str):
        return job_view(server, find(server, job))

    @app.get("/api/jobs/{job}/events")
    @refusals
    async def events(job: str):
        find(server, job)
        return StreamingResponse(event_stream(server, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/api/jobs/{job}/preview.png")
    @refusals
    async def preview(job: str):
        found, live = find(server, job), server.live.get(job)
        if live is not None and live["preview"] is not None:
            return Response(live["preview"], media_type="image/png", headers={"Cache-Control": "no-store"})
        images = (found["result"] or {}).get("images", [])
        if found["state"] == "done" and images:
            return FileResponse(server.images / Path(images[0]).name, media_type="image/png")
        raise orders.Refused(404, f"no preview yet: the job is {found['state']}")

    @app.delete("/api/jobs/{job}")
    @refusals
    async def cancel(job: str):
        find(server, job)  # 404 where there is no such job
        server.live.cancel(job)  # first: a worker between its checks must not miss it
        was = server.queue.cancel(job)
        if was != "running":  # no worker holds it: nothing to tell
            server.live.end(job)
        if was is None:
            raise orders.Refused(409, f"the job is {server.queue.get(job)['state']} already")
        return {"id": job, "state": "cancelled"}

    @app.get("/api/status")
    async def status():
        model = server.model
        return {"clip_model": model.name, "devices": [str(w.place.model.device) for w in server.workers],
                "max_batch": server.workers[0].place.max_batch, "max_queue": server.max_queue,
                "limits": vars(server.limits), "jobs": server.queue.counts()}


async def event_stream(server, job):
    """Server-sent events of a job: position while queued, step while running, a preview as each
    is made, then its end (done, failed or cancelled) with the job's view; a comment each 15 s."""
    said, quiet = {}, 0.0
    while True:
        found, live = server.queue.get(job), server.live.get(job)
        news = []
        if found["state"] == "queued" and said.get("position") != found["position"]:
            said["position"] = found["position"]
            news.append(("position", {"position": found["position"]}))
        if live is not None and said.get("step") != live["step"]:
            said["step"] = live["step"]
            news.append(("progress", {"step": live["step"], "steps": live["steps"]}))
        if live is not None and live["preview"] is not None and said.get("version") != live["version"]:
            said["version"] = live["version"]
            picture = base64.b64encode(live["preview"]).decode()
            news.append(("preview", {"step": live["step"], "image": f"data:image/png;base64,{picture}"}))
        if found["state"] in ("done", "failed", "cancelled"):
            news.append((found["state"], job_view(server, found)))
        for name, data in news:
            yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
        if found["state"] in ("done", "failed", "cancelled"):
            return
        quiet = 0.0 if news else quiet + server.poll
        if quiet >= 15:
            quiet = 0.0
            yield ": still here\n\n"
        await asyncio.sleep(server.poll)


def bake_listing(server, path):
    """A bake file as GET /api/bakes lists it, remembered while the file is unchanged; None where unreadable."""
    from . import baked, knobs
    from .errors import UserError
    modified = path.stat().st_mtime_ns
    if server.bakes.get(path.name, (None,))[0] != modified:
        try:
            bake = baked.load_baked(path)
        except UserError:
            return None
        config = bake.get("config") or {}
        server.bakes[path.name] = (modified, {
            "name": path.stem, "prompt": bake["prompt"], "kind": "shared" if knobs.is_shared(bake) else "prompt",
            "clip_model": bake["clip_model"], "stages": len(bake["stages"]), "complete": bake["complete"],
            "settings": {k: config.get(k) for k in ("size", "steps", "lr", "cutn", "param", "palette")}})
    return server.bakes[path.name][1]


def bake_listings(server):
    """The bake folder's files as GET /api/bakes lists them, each marked usable where this model made it."""
    found = [bake_listing(server, p) for p in sorted(Path(server.baked_dir).glob("*.pt"))]
    model = server.model
    return [{**b, "usable": b["clip_model"] in (None, model.name) and b["stages"] > 0} for b in found
            if b is not None]


def add_bake_routes(app, server):
    """GET /api/bakes (the bake folder's files), POST /api/bakes {prompt, ...} (a bake job)."""
    @app.get("/api/bakes")
    def bakes():  # a plain def: FastAPI runs it in a thread, as reading the files asks
        return {"bakes": bake_listings(server)}

    @app.post("/api/bakes", status_code=202)
    @refusals
    async def post_bake(request: Request):
        checked = orders.check_bake(await body_of(request, server), server.limits, server.baked_dir)
        await run_in_threadpool(check_with_model, server, {"prompt": checked["prompt"]})
        taken = (Path(server.baked_dir) / f"{checked['name']}.pt").exists() or \
            checked["name"] in {r["name"] for r in server.queue.active("bake")}
        if taken:
            raise orders.Refused(409, f"a bake named {checked['name']!r} exists or is under way: give another name")
        return submit(server, "bake", checked, f"bake:{secrets.token_hex(8)}")  # a bake is a batch of one


def add_file_routes(app, server):
    """The page (/, /static/...) and the images (/images/NAME.png)."""
    @app.get("/")
    async def page():
        return FileResponse(PAGE / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC:
            return error(404, f"no static file {name[:40]!r}")
        return FileResponse(PAGE / name, media_type=STATIC[name])

    @app.get("/images/{name}")
    async def image(name: str):
        path = server.images / name
        if not IMAGE.fullmatch(name) or not path.is_file():
            return error(404, f"no image {name[:60]!r}")
        return FileResponse(path, media_type="image/png")
