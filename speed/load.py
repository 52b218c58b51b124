"""Load test of `spiga serve`: N concurrent clients on 127.0.0.1 for a bounded time.

    PYTHONPATH=src python speed/load.py                      # 30 s, 16 clients, tiny random model
    PYTHONPATH=src python speed/load.py --soak 300           # the 5-minute memory soak
    PYTHONPATH=src python speed/load.py --model wflw --clients 32 --duration 60
    PYTHONPATH=src python speed/load.py --model-size official --detect --burst 40
    PYTHONPATH=src python speed/load.py --model-size official --detect --burst 40 --neighbour-threads 2

Starts the server itself (`python -m spiga serve` in a subprocess, src/ on its path, so
it runs from a clean checkout), waits for /healthz, warms up, then runs the clients and
prints: throughput (requests and faces per second), latency p50/p95/p99, errors by
code, the batch-size distribution (faces per forward pass, from the server's /metrics),
and the server's resident memory (VmRSS) after warm-up and at the end.

Without --model it writes a random-weight checkpoint to a temporary folder: `tiny` (the
test suite's recipe; the server's own overhead and batching) or, with `--model-size
official`, the official network's size (`SPIGA(ModelConfig.official(98, 15))`: the real
model's cost with meaningless outputs). Requests upload the shared fixture photo with
its face box (or a synthetic face when ../shared is absent; `--image` for your own);
`--detect` leaves out the box so that the server runs the face detector too.

`--burst N` sends N requests at once (no retries) instead of looping clients, and
`--neighbour-threads T` runs a CPU-heavy neighbour process beside the server (PyTorch
matrix products on T threads) for the whole measurement. Every answer is checked
against the server's deadline (`--timeout`): the figures count requests answered in
time (200, or a refusal: 503/504 with `Retry-After`), answered late, and lost (no
answer: a transport error or the client's own timeout, deadline + 30 s).

The soak mode (`--soak SECONDS`) samples the server's memory every `--sample` seconds and
fails (exit status 1) when it grew by more than `--max-growth-mb`: the mean of the last
three samples against the mean of the first three (the first taken after warm-up), as
single samples swing by tens of MiB with the allocator. The server inherits the
environment, e.g. `MALLOC_ARENA_MAX=2` (glibc) to see how much of the swing is malloc
arenas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

import harness

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTO = REPO.parent / "shared" / "fixtures" / "images" / "image_sportsfan.jpg"
SHARED_BOX = REPO.parent / "shared" / "fixtures" / "images" / "bbox_sportsfan.json"


# --------------------------------------------------------------------------- setup


def random_checkpoint(folder: Path, size: str = "tiny") -> Path:
    """A WFLW-layout model of `size` (`tiny` as tests/conftest.py makes it, or `official`)
    with seeded random weights and a synthetic mean face."""
    sys.path.insert(0, str(REPO / "src"))
    from spiga import testing

    return testing.random_checkpoint(folder / f"{size}-random.safetensors", size, "wflw98", seed=0)


#: The neighbour: PyTorch matrix products, forever, on the given number of threads.
NEIGHBOUR = ("import sys, torch\n"
             "torch.set_num_threads(int(sys.argv[1]))\n"
             "a = torch.randn(1024, 1024)\n"
             "while True:\n"
             "    a = torch.tanh(a @ a)\n")


def start_neighbour(threads: int) -> subprocess.Popen:
    """A CPU-heavy process beside the server (terminate it when done)."""
    return subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(threads)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def request_image(args) -> tuple[bytes, str, list[float] | None]:
    """(bytes, file name, face box or None) of the uploaded image."""
    if args.image:
        path = Path(args.image)
        return path.read_bytes(), path.name, args.box
    if SHARED_PHOTO.exists():
        box = json.loads(SHARED_BOX.read_text())["bbox"] if SHARED_BOX.exists() else None
        return SHARED_PHOTO.read_bytes(), SHARED_PHOTO.name, args.box or box
    sys.path.insert(0, str(REPO / "src"))
    import cv2

    from spiga.data.synthetic import render_face

    face = render_face(np.random.default_rng(0), 256)
    return cv2.imencode(".png", face.image)[1].tobytes(), "synthetic.png", args.box or face.box.tolist()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    """Resident memory of process `pid` in MiB (Linux /proc), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine() -> str:
    return f"{harness.cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def start_server(args, model: str, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if args.server_threads:
        env["OMP_NUM_THREADS"] = str(args.server_threads)
    command = [sys.executable, "-m", "spiga", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--model-threads", str(args.model_threads), "--decode-threads", str(args.decode_threads),
               "--max-queue", str(args.max_queue), "--max-inflight", str(args.max_inflight),
               "--timeout", str(args.timeout), "--device", args.device]
    log = log_path.open("w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def wait_healthy(url: str, server: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}); its log:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not answer /healthz within {timeout:.0f} s; log: {log_path}")


def batch_buckets(url: str) -> dict[float, float]:
    """Cumulative spiga_batch_faces histogram: upper bound -> count (+inf included)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "spiga_batch_faces":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    out[float(sample.labels["le"])] = sample.value
    return out


def distribution(before: dict[float, float], after: dict[float, float]) -> dict[str, int]:
    """Per-bucket counts of forward passes between two cumulative snapshots, by size range."""
    bounds = sorted(after)
    result, previous_bound, previous_count = {}, 0.0, 0.0
    for bound in bounds:
        count = after[bound] - before.get(bound, 0.0)
        in_bucket = int(round(count - previous_count))
        if in_bucket:
            low = int(previous_bound) + 1
            label = f"{low}" if bound == low else (f"{low}-{int(bound)}" if bound != float("inf") else f">{int(previous_bound)}")
            result[label] = in_bucket
        previous_bound, previous_count = bound, count
    return result


# --------------------------------------------------------------------------- the load


async def post_once(http: httpx.AsyncClient, url: str, image: bytes, name: str, data: dict) -> dict:
    """One request -> {status, code, seconds, retry_after, faces}; status 0 when no answer came."""
    start = time.perf_counter()
    try:
        response = await http.post(url + "/v1/align", files={"image": (name, image)}, data=data)
    except httpx.TransportError as exc:
        return {"status": 0, "code": f"transport:{type(exc).__name__}", "seconds": time.perf_counter() - start,
                "retry_after": None, "faces": 0}
    seconds = time.perf_counter() - start
    outcome = {"status": response.status_code, "code": "ok", "seconds": seconds,
               "retry_after": response.headers.get("retry-after"), "faces": 0}
    if response.status_code == 200:
        outcome["faces"] = len(response.json()["images"][0]["faces"])
    else:
        try:
            outcome["code"] = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            outcome["code"] = f"http_{response.status_code}"
    return outcome


async def run_burst(url: str, count: int, image: bytes, name: str, box, client_timeout: float) -> dict:
    """`count` requests sent at once, each answered or not once (no retries)."""
    data = {"boxes": json.dumps([box])} if box is not None else {}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=client_timeout, limits=limits) as http:
        outcomes = await asyncio.gather(*(post_once(http, url, image, name, data) for _ in range(count)))
    return {"outcomes": list(outcomes), "elapsed": time.perf_counter() - started}


async def run_clients(url: str, clients: int, duration: float, image: bytes, name: str, box,
                      on_tick=None, tick: float = 30.0, client_timeout: float = 120.0) -> dict:
    """`clients` concurrent loops posting the image until `duration` seconds have passed
    (after a 503 a client waits the `Retry-After` seconds)."""
    outcomes: list[dict] = []
    deadline = time.monotonic() + duration
    data = {"boxes": json.dumps([box])} if box is not None else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(client_http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            outcome = await post_once(client_http, url, image, name, data)
            outcomes.append(outcome)
            if outcome["status"] == 503:
                await asyncio.sleep(min(float(outcome["retry_after"] or 1), max(0.0, deadline - time.monotonic())))

    async def ticker() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(tick, max(0.0, deadline - time.monotonic())))
            if on_tick is not None:
                on_tick()

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=client_timeout, limits=limits) as http:
        await asyncio.gather(ticker(), *(client(http) for _ in range(clients)))
    return {"outcomes": outcomes, "elapsed": time.perf_counter() - started}


def percentiles(values: list[float]) -> dict:
    """p50, p95, max of seconds, in ms (None when empty)."""
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ms = np.array(values) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
            "max": round(float(ms.max()), 1)}


#: Slack on the deadline for the answer's way back (JSON, loopback): an answer within
#: deadline + this counts as in time.
DEADLINE_SLACK = 0.5


def judge(outcomes: list[dict], timeout: float) -> dict:
    """Every request against the deadline: in time, late, lost; refusals and their Retry-After."""
    answered = [o for o in outcomes if o["status"]]
    refusals = [o for o in answered if o["status"] in (503, 504)]
    retry_after = [int(o["retry_after"]) for o in refusals if o["retry_after"] and o["retry_after"].isdigit()]
    return {
        "requests": len(outcomes),
        "by_status": dict(sorted(Counter(str(o["status"]) for o in outcomes).items())),
        "by_code": dict(sorted(Counter(o["code"] for o in outcomes).items())),
        "in_time": sum(o["seconds"] <= timeout + DEADLINE_SLACK for o in answered),
        "late": sum(o["seconds"] > timeout + DEADLINE_SLACK for o in answered),
        "lost": len(outcomes) - len(answered),
        "refusals_without_retry_after": len(refusals) - len(retry_after),
        "retry_after_s": [min(retry_after), max(retry_after)] if retry_after else None,
        "latency_ms_200": percentiles([o["seconds"] for o in answered if o["status"] == 200]),
        "latency_ms_503": percentiles([o["seconds"] for o in answered if o["status"] == 503]),
        "latency_ms_504": percentiles([o["seconds"] for o in answered if o["status"] == 504]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name or checkpoint (default: a random checkpoint of --model-size)")
    parser.add_argument("--model-size", choices=["tiny", "small", "official"], default="tiny",
                        help="size of the random checkpoint without --model (tiny)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (30)")
    parser.add_argument("--burst", type=int, metavar="N", help="send N requests at once instead of looping clients")
    parser.add_argument("--neighbour-threads", type=int, default=0, metavar="T",
                        help="run a CPU-heavy neighbour (torch matmuls on T threads) beside the server (0: none)")
    parser.add_argument("--timeout", type=float, default=30.0, help="the server's request deadline, s (30)")
    parser.add_argument("--decode-threads", type=int, default=1)
    parser.add_argument("--max-inflight", type=int, default=64)
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="memory soak of this length (e.g. 300)")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between memory samples (15)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0,
                        help="allowed memory growth after warm-up, MiB (50)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before measuring (20)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--model-threads", type=int, default=1)
    parser.add_argument("--server-threads", type=int, help="torch threads of the server (OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image", help="image to upload (default: the shared fixture photo)")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X", "Y", "W", "H"), help="its face box")
    parser.add_argument("--detect", action="store_true", help="send no box: the server detects the face")
    parser.add_argument("--json", metavar="OUT.json", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    duration = args.soak or args.duration

    work = Path(tempfile.mkdtemp(prefix="spiga-load-"))
    model = args.model or str(random_checkpoint(work, args.model_size))
    image, name, box = request_image(args)
    if args.detect:
        box = None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "server.log"
    client_timeout = args.timeout + 30.0
    server = start_server(args, model, port, log_path)
    neighbour = None
    try:
        wait_healthy(url, server, log_path)
        warm_clients = 1 if args.burst else args.clients
        print(f"server pid {server.pid} on {url}, model {Path(model).name}; warming up {args.warmup:g} s",
              file=sys.stderr)
        asyncio.run(run_clients(url, warm_clients, args.warmup, image, name, box, client_timeout=client_timeout))
        if args.neighbour_threads:
            neighbour = start_neighbour(args.neighbour_threads)
            time.sleep(2.0)  # let it get going (and the server's cost estimates see it)
        rss_before = rss_mib(server.pid)
        samples = [(0.0, rss_before)]
        start = time.monotonic()

        def sample() -> None:
            samples.append((time.monotonic() - start, rss_mib(server.pid)))
            print(f"  t={samples[-1][0]:5.0f} s  server RSS {samples[-1][1]:.1f} MiB", file=sys.stderr)

        buckets_before = batch_buckets(url)
        if args.burst:
            print(f"load: a burst of {args.burst} requests", file=sys.stderr)
            result = asyncio.run(run_burst(url, args.burst, image, name, box, client_timeout))
        else:
            print(f"load: {args.clients} clients for {duration:g} s", file=sys.stderr)
            result = asyncio.run(run_clients(url, args.clients, duration, image, name, box, on_tick=sample,
                                             tick=args.sample if args.soak else duration + 1,
                                             client_timeout=client_timeout))
        buckets_after = batch_buckets(url)
        rss_after = rss_mib(server.pid)
    finally:
        if neighbour is not None:
            neighbour.terminate()
            neighbour.wait(10)
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    outcomes = result["outcomes"]
    good = [o for o in outcomes if o["status"] == 200]
    latencies = np.array([o["seconds"] for o in good]) * 1000
    ok = len(latencies)
    faces = sum(o["faces"] for o in good)
    passes = distribution(buckets_before, buckets_after)
    total_passes = sum(passes.values())
    figures = {
        "machine": machine(), "model": Path(model).name, "clients": args.burst or args.clients,
        "mode": "burst" if args.burst else "clients", "duration_s": round(result["elapsed"], 1),
        "neighbour_threads": args.neighbour_threads, "timeout_s": args.timeout,
        "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "model_threads": args.model_threads,
        "decode_threads": args.decode_threads, "server_threads": args.server_threads, "detect": box is None,
        "requests_ok": ok, "throughput_rps": round(ok / result["elapsed"], 2),
        "faces_per_s": round(faces / result["elapsed"], 2),
        "latency_ms": {p: round(float(np.percentile(latencies, q)), 1) if ok else None
                       for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        "errors": dict(Counter(o["code"] for o in outcomes if o["status"] != 200)),
        "deadline": judge(outcomes, args.timeout),
        "forward_passes": total_passes,
        "faces_per_pass_mean": round(faces / total_passes, 2) if total_passes else None,
        "batch_size_distribution": passes,
        "rss_mib": {"after_warmup": rss_before, "end": rss_after,
                    "growth": None if rss_before is None or rss_after is None else round(rss_after - rss_before, 1)},
    }
    if args.soak:
        values = [v for _, v in samples if v is not None]
        figures["rss_samples_mib"] = [(round(t), round(v, 1)) for t, v in samples if v is not None]
        figures["rss_mib"]["max"] = round(max(values), 1)
        # single samples swing with the allocator: compare the means of the first and last three
        figures["rss_mib"]["growth"] = round(float(np.mean(values[-3:]) - np.mean(values[:3])), 1)
    print(json.dumps(figures, indent=1))
    verdict = figures["deadline"]
    print(f"\n{ok} requests in {result['elapsed']:.1f} s: {figures['throughput_rps']} req/s, "
          f"{figures['faces_per_s']} faces/s; latency p50 {figures['latency_ms']['p50']} ms, "
          f"p95 {figures['latency_ms']['p95']} ms, p99 {figures['latency_ms']['p99']} ms; "
          f"errors {figures['errors'] or 'none'}; mean batch {figures['faces_per_pass_mean']} faces; "
          f"server RSS {rss_before:.1f} -> {rss_after:.1f} MiB; deadline {args.timeout:g} s: "
          f"{verdict['in_time']} in time, {verdict['late']} late, {verdict['lost']} lost", file=sys.stderr)
    if args.json:
        sys.path.insert(0, str(REPO / "src"))
        from spiga.io import write_output

        write_output(args.json, json.dumps(figures, indent=1) + "\n")
    if verdict["late"] or verdict["lost"] or verdict["refusals_without_retry_after"]:
        print("some requests were answered late, not at all, or refused without Retry-After", file=sys.stderr)
        return 1
    if args.soak and figures["rss_mib"]["growth"] is not None and figures["rss_mib"]["growth"] > args.max_growth_mb:
        print(f"memory grew by {figures['rss_mib']['growth']} MiB, more than the allowed {args.max_growth_mb} MiB",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
