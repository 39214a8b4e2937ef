"""serve.py's flags and start: check where it binds (a token beyond loopback), load CLIP once per
device, open the queue under --data and put back the jobs a crash left running, start one
worker per device, and serve the app (server.py) with uvicorn until Ctrl-C or SIGTERM.
"""

import ipaddress
import socket
import threading
from pathlib import Path

from . import flags
from .errors import UserError, log
from .settings import DEFAULT_CLIP_MODEL

LOOPBACK = ("localhost",)


def add_args(parser):
    """serve.py's flags."""
    g = parser.add_argument_group("serving")
    g.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL,
                   help="CLIP model, loaded once (a name, a checkpoint path, toy or scene: see the scripts)")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but loopback needs --token")
    g.add_argument("--port", type=flags.positive_int, default=8000, help="port to listen on")
    g.add_argument("--token", default=None,
                   help="a secret every request but the page must send as 'Authorization: Bearer TOKEN'")
    g.add_argument("--data", default="served", metavar="DIR",
                   help="folder of the job queue (jobs.sqlite3) and the images (DIR/images/)")
    g.add_argument("--baked-dir", default="baked", help="folder of the bakes that jobs replay and bake jobs write")
    g.add_argument("--devices", type=flags.name_list(distinct=False, example="devices such as cuda:0,cuda:1"),
                   default=None, metavar="DEV[,DEV...]",
                   help="one worker per device over the same queue, e.g. cuda:0,cuda:1 (default: cuda if "
                        "available, else cpu)")
    g.add_argument("--threads", type=flags.positive_int, default=None, help="CPU threads (as the scripts')")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="precision of CLIP's image tower")
    g = parser.add_argument_group("limits")
    g.add_argument("--max-batch", type=flags.positive_int, default=8,
                   help="most jobs of one renderer rendered as one batch")
    g.add_argument("--max-queue", type=flags.positive_int, default=1000,
                   help="most jobs that may wait; past it a request gets 429 with Retry-After")
    g.add_argument("--max-size", type=flags.positive_int, default=128, help="largest image side a request may ask")
    g.add_argument("--max-steps", type=flags.positive_int, default=500, help="most steps (a stage's) a request may ask")
    g.add_argument("--max-variations", type=flags.positive_int, default=8, help="most variations a request may ask")
    g.add_argument("--preview-every", type=flags.positive_int, default=10,
                   help="steps between a running job's previews")


def is_loopback(host):
    """Whether binding host serves this machine only."""
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(args):
    """Refuse, in one line, a bind beyond loopback without a token, or a port already taken."""
    if not is_loopback(args.host) and not args.token:
        raise UserError(f"--host {args.host} serves other machines: give --token SECRET too (clients send "
                        f"'Authorization: Bearer SECRET'), or serve 127.0.0.1")
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as e:
            raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror}): pass another --port "
                            f"or --host") from None


def load_models(args):
    """CLIP loaded on each of --devices (default: cuda if there is one, else cpu), at --precision."""
    from . import models
    loaded = []
    for device in args.devices or [None]:
        try:
            device = models.pick_device(device)
        except UserError as e:  # its words name the scripts' --device
            raise UserError(str(e).replace("--device ", "--devices ")) from None
        model = models.load_clip(args.clip_model, device)
        model.set_precision(args.precision)
        loaded.append(model)
    return loaded


def make_folder(path, flag):
    """Make a folder the server writes (a one-line UserError where it cannot); whether it was new."""
    if Path(path).is_dir():
        return False
    try:
        Path(path).mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot make {flag} {path} ({e.strerror}): choose a folder you can write") from None
    return True


def build(args):
    """The Server (server.py) of serve.py's flags and its workers (not yet started). The models load
    first: a start that fails leaves no folder behind."""
    from . import jobs, orders, server, startup, worker
    data = Path(args.data)
    threads = startup.use_threads(args.threads)
    held = hold(data) if data.is_dir() else None  # a folder in use is refused before the wait for models
    loaded = load_models(args)
    make_folder(data / "images", "--data")
    held = held or hold(data)
    if make_folder(args.baked_dir, "--baked-dir"):
        log(f"made --baked-dir {args.baked_dir}: no bakes in it yet (bake jobs write there)")
    queue = jobs.Queue(data / "jobs.sqlite3")
    again = queue.recover()
    if again:
        log(f"{again} job(s) left running by the last stop are queued again, in their places")
    live, crew = worker.Live(), []
    for model in loaded:
        place = worker.Place(model, threads, Path(args.baked_dir), data / "images", args.max_batch,
                             args.preview_every, f"worker-{model.device}-{len(crew)}")
        crew.append(worker.Worker(queue, live, place))
    limits = orders.Limits(size=args.max_size, steps=args.max_steps, variations=args.max_variations)
    hosts = None if args.token else ("127.0.0.1", "localhost", "::1", args.host)  # see server.Server.hosts
    return server.Server(queue, live, crew, limits, Path(args.baked_dir), data / "images", args.token,
                         args.max_queue, hosts=hosts, held=held)


def hold(data):
    """The lock of a --data folder, held while this process serves it: a second server on the same
    queue would put this one's running jobs back in the queue at its start and run them twice."""
    import fcntl
    handle = open(data / "serving.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError(f"another serve.py is serving --data {data}: stop it, or give another --data "
                        f"(for more devices, give one server --devices)") from None
    return handle


def start_workers(served):
    """Start each worker in a thread; returns the Event that stops them."""
    stop = threading.Event()
    for w in served.workers:
        threading.Thread(target=w.run_forever, args=(stop,), name=w.place.name, daemon=True).start()
    return stop


def main(args):
    """serve.py: check, build, start the workers, serve until stopped."""
    import uvicorn

    from . import server
    check_binding(args)
    served = build(args)
    stop = start_workers(served)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {args.clip_model} at http://{host}:{args.port}/ with {len(served.workers)} worker(s); "
          f"jobs in {Path(args.data) / 'jobs.sqlite3'}, bakes in {args.baked_dir}/ (Ctrl-C stops)", flush=True)
    try:
        uvicorn.run(server.create_app(served), host=args.host, port=args.port, log_level="warning")
    finally:
        stop.set()
        left = served.queue.counts()
        log(f"stopped: {left['queued']} job(s) queued, {left['running']} running (a running job runs again, "
            f"from its seed, at the next start)")
