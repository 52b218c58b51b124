"""Load test of `spiga serve`: N concurrent clients on 127.0.0.1 for a bounded time.

    PYTHONPATH=src python benchmarks/load.py                      # 30 s, 16 clients, tiny random model
    PYTHONPATH=src python benchmarks/load.py --soak 300           # the 5-minute memory soak
    PYTHONPATH=src python benchmarks/load.py --model wflw --clients 32 --duration 60

Starts the server itself (`python -m spiga serve` in a subprocess, src/ on its path, so
it runs from a clean checkout), waits for /healthz, warms up, then runs the clients and
prints: throughput (requests and faces per second), latency p50/p95/p99, errors by
code, the batch-size distribution (faces per forward pass, from the server's /metrics),
and the server's resident memory (VmRSS) after warm-up and at the end.

Without --model it writes a tiny random-weight checkpoint (the test suite's recipe) to
a temporary folder: it measures the server's own overhead and batching, not a real
model's speed. Requests upload the shared fixture photo with its face box (or a
synthetic face when ../shared is absent; `--image` for your own); `--detect` leaves out
the box so that the server runs the face detector too.

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

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTO = REPO.parent / "shared" / "fixtures" / "images" / "image_sportsfan.jpg"
SHARED_BOX = REPO.parent / "shared" / "fixtures" / "images" / "bbox_sportsfan.json"


# --------------------------------------------------------------------------- setup


def tiny_checkpoint(folder: Path) -> Path:
    """A tiny WFLW-layout model with seeded random weights (as tests/conftest.py makes it)."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from spiga.checkpoint import build_model, save_checkpoint
    from spiga.landmarks import WFLW_98
    from spiga.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.sized("tiny", WFLW_98.num_landmarks, WFLW_98.num_edges)
    rng = np.random.default_rng(0)
    mean_face = np.column_stack([rng.uniform(-0.3, 0.1, 98), rng.uniform(-0.8, 0.8, 98), rng.uniform(-1, 1, 98)])
    return save_checkpoint(folder / "tiny-random.safetensors", build_model(config, WFLW_98, mean_face).eval(),
                           WFLW_98)


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
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def start_server(args, model: str, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if args.server_threads:
        env["OMP_NUM_THREADS"] = str(args.server_threads)
    command = [sys.executable, "-m", "spiga", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--workers", str(args.workers), "--max-queue", str(args.max_queue), "--device", args.device]
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


async def run_clients(url: str, clients: int, duration: float, image: bytes, name: str, box,
                      on_tick=None, tick: float = 30.0) -> dict:
    """`clients` concurrent loops posting the image until `duration` seconds have passed."""
    latencies: list[float] = []
    errors: Counter = Counter()
    faces = 0
    deadline = time.monotonic() + duration
    data = {"boxes": json.dumps([box])} if box is not None else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(client_http: httpx.AsyncClient) -> None:
        nonlocal faces
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                response = await client_http.post(url + "/v1/align", files={"image": (name, image)}, data=data)
            except httpx.TransportError as exc:
                errors[f"transport:{type(exc).__name__}"] += 1
                continue
            elapsed = time.perf_counter() - start
            if response.status_code == 200:
                latencies.append(elapsed)
                faces += len(response.json()["images"][0]["faces"])
            else:
                try:
                    errors[response.json()["error"]["code"]] += 1
                except (ValueError, KeyError, TypeError):
                    errors[f"http_{response.status_code}"] += 1
                if response.status_code == 503:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

    async def ticker() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(tick, max(0.0, deadline - time.monotonic())))
            if on_tick is not None:
                on_tick()

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(ticker(), *(client(http) for _ in range(clients)))
    return {"latencies": latencies, "errors": errors, "faces": faces, "elapsed": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name or checkpoint (default: a tiny random checkpoint)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (30)")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="memory soak of this length (e.g. 300)")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between memory samples (15)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0,
                        help="allowed memory growth after warm-up, MiB (50)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before measuring (20)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server-threads", type=int, help="torch threads of the server (OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image", help="image to upload (default: the shared fixture photo)")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X", "Y", "W", "H"), help="its face box")
    parser.add_argument("--detect", action="store_true", help="send no box: the server detects the face")
    parser.add_argument("--json", metavar="OUT.json", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    duration = args.soak or args.duration

    work = Path(tempfile.mkdtemp(prefix="spiga-load-"))
    model = args.model or str(tiny_checkpoint(work))
    image, name, box = request_image(args)
    if args.detect:
        box = None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "server.log"
    server = start_server(args, model, port, log_path)
    try:
        wait_healthy(url, server, log_path)
        print(f"server pid {server.pid} on {url}, model {Path(model).name}; warming up {args.warmup:g} s",
              file=sys.stderr)
        asyncio.run(run_clients(url, args.clients, args.warmup, image, name, box))
        rss_before = rss_mib(server.pid)
        samples = [(0.0, rss_before)]
        start = time.monotonic()

        def sample() -> None:
            samples.append((time.monotonic() - start, rss_mib(server.pid)))
            print(f"  t={samples[-1][0]:5.0f} s  server RSS {samples[-1][1]:.1f} MiB", file=sys.stderr)

        buckets_before = batch_buckets(url)
        print(f"load: {args.clients} clients for {duration:g} s", file=sys.stderr)
        result = asyncio.run(run_clients(url, args.clients, duration, image, name, box, on_tick=sample,
                                         tick=args.sample if args.soak else duration + 1))
        buckets_after = batch_buckets(url)
        rss_after = rss_mib(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    latencies = np.array(result["latencies"]) * 1000
    ok = len(latencies)
    passes = distribution(buckets_before, buckets_after)
    total_passes = sum(passes.values())
    figures = {
        "machine": machine(), "model": Path(model).name, "clients": args.clients, "duration_s": round(result["elapsed"], 1),
        "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "workers": args.workers,
        "server_threads": args.server_threads, "detect": box is None,
        "requests_ok": ok, "throughput_rps": round(ok / result["elapsed"], 2),
        "faces_per_s": round(result["faces"] / result["elapsed"], 2),
        "latency_ms": {p: round(float(np.percentile(latencies, q)), 1) if ok else None
                       for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        "errors": dict(result["errors"]),
        "forward_passes": total_passes,
        "faces_per_pass_mean": round(result["faces"] / total_passes, 2) if total_passes else None,
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
    print(f"\n{ok} requests in {result['elapsed']:.1f} s: {figures['throughput_rps']} req/s, "
          f"{figures['faces_per_s']} faces/s; latency p50 {figures['latency_ms']['p50']} ms, "
          f"p95 {figures['latency_ms']['p95']} ms, p99 {figures['latency_ms']['p99']} ms; "
          f"errors {dict(result['errors']) or 'none'}; mean batch {figures['faces_per_pass_mean']} faces; "
          f"server RSS {rss_before:.1f} -> {rss_after:.1f} MiB", file=sys.stderr)
    if args.json:
        sys.path.insert(0, str(REPO / "src"))
        from spiga.io import write_atomic

        write_atomic(args.json, json.dumps(figures, indent=1) + "\n")
    if args.soak and figures["rss_mib"]["growth"] is not None and figures["rss_mib"]["growth"] > args.max_growth_mb:
        print(f"memory grew by {figures['rss_mib']['growth']} MiB, more than the allowed {args.max_growth_mb} MiB",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
