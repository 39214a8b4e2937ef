"""bench.py --serve: serve.py measured as its users meet it. A server process on a toy model gets
jobs from concurrent clients over loopback (each client posts a job, follows its events to the
end, posts the next); printed: images a second, the time from 202 to done (p50, p95), the
server's resident memory after the 100th job and after the last; with --cli, the same first
jobs (32 by default) as CLI commands run one after another, as a shell loop would.
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow circle on the left",
           "a black square on the right", "a white triangle in the center", "a blue circle", "a red square")


@dataclass(frozen=True)
class Options:
    """What to measure: jobs, concurrent clients, each job's size and steps, the model, CPU
    threads, the server's --max-batch, and how many jobs also run as CLI commands (0: none)."""

    jobs: int = 32
    clients: int = 8
    size: int = 16
    steps: int = 40
    clip_model: str = "toy"
    threads: int = 2
    max_batch: int = 8
    cli: int = 0


def request(i, options):
    """The i-th job: a toy prompt, its own seed."""
    return {"prompt": PROMPTS[i % len(PROMPTS)], "size": options.size, "steps": options.steps, "seed": i}


def resident_mib(pid):
    """A process's resident memory (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port():
    """A loopback port no one listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answering(base, seconds=120):
    """Wait until a server at base answers GET /api/status: whether it did within seconds."""
    import httpx
    for _ in range(int(seconds * 10)):
        try:
            httpx.get(f"{base}/api/status")
            return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


def start_server(options, folder):
    """serve.py in its own process: (the process, its base URL), once it answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--clip-model", options.clip_model,
                                "--devices", "cpu", "--port", str(port), "--data", str(folder), "--threads",
                                str(options.threads), "--max-batch", str(options.max_batch), "--max-queue",
                                str(max(1000, options.clients * 2))], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    if answering(base):
        return process, base
    process.kill()
    raise RuntimeError("serve.py did not start in two minutes")


def follow(client, base, job):
    """Read a job's events until its end; its final state."""
    with client.stream("GET", f"{base}/api/jobs/{job}/events", timeout=None) as events:
        for line in events.iter_lines():
            if line.startswith("event: ") and line[7:] in ("done", "failed", "cancelled"):
                return line[7:]
    return "lost"


def clients(options, base, pid):
    """Run the jobs through options.clients concurrent clients: (latencies, states, memory marks, seconds)."""
    import httpx
    lock, taken, latencies, states, marks = threading.Lock(), [0], [], [], {}

    def one_client():
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    i, taken[0] = taken[0], taken[0] + 1
                if i >= options.jobs:
                    return
                answer = client.post(f"{base}/api/jobs", json=request(i, options))
                began = time.perf_counter()
                state = follow(client, base, answer.json()["id"]) if answer.status_code == 202 else "refused"
                with lock:
                    latencies.append(time.perf_counter() - began)
                    states.append(state)
                    if len(states) in (100, options.jobs):
                        marks[len(states)] = resident_mib(pid)

    began = time.perf_counter()
    crew = [threading.Thread(target=one_client) for _ in range(options.clients)]
    for thread in crew:
        thread.start()
    for thread in crew:
        thread.join()
    return latencies, states, marks, time.perf_counter() - began


def cli_seconds(options, folder):
    """The first options.cli jobs as normal.py commands, one after another: seconds in all."""
    began = time.perf_counter()
    for i in range(options.cli):
        job = request(i, options)
        subprocess.run([sys.executable, str(ROOT / "normal.py"), job["prompt"], "--clip-model", options.clip_model,
                        "--device", "cpu", "--size", str(job["size"]), "--steps", str(job["steps"]), "--seed",
                        str(job["seed"]), "--threads", str(options.threads), "--out", str(folder / f"{i}.png")],
                       check=True, capture_output=True, env={**os.environ, "WANDB_MODE": "disabled"})
    return time.perf_counter() - began


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(options):
    """Run the benchmark and print its figures; returns them as a dict."""
    with tempfile.TemporaryDirectory() as folder:
        process, base = start_server(options, Path(folder) / "served")
        try:
            latencies, states, marks, seconds = clients(options, base, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=60)
        figures = {"jobs": options.jobs, "clients": options.clients, "done": states.count("done"),
                   "server_images_per_s": options.jobs / seconds, "p50_s": percentile(latencies, 0.5),
                   "p95_s": percentile(latencies, 0.95), "rss_mib": marks}
        print(f"server: {options.jobs} jobs ({options.size} px, {options.steps} steps, {options.clip_model}) from "
              f"{options.clients} clients in {seconds:.1f} s: {figures['server_images_per_s']:.2f} images/s; "
              f"{figures['done']} done, {options.jobs - figures['done']} not")
        print(f"  202 to done: p50 {figures['p50_s']:.2f} s, p95 {figures['p95_s']:.2f} s")
        if len(marks) == 2:
            first, last = marks[100], marks[options.jobs]
            print(f"  resident memory: {first:.0f} MiB after job 100, {last:.0f} MiB after job {options.jobs} "
                  f"({(last - first) / first:+.1%})")
        if options.cli:
            cli = cli_seconds(options, Path(folder))
            figures["cli_images_per_s"] = options.cli / cli
            print(f"CLI: the first {options.cli} as normal.py commands, one after another, in {cli:.1f} s: "
                  f"{figures['cli_images_per_s']:.2f} images/s; the server is "
                  f"{figures['server_images_per_s'] / figures['cli_images_per_s']:.1f}x faster")
    return figures
