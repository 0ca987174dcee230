"""Compare two or more checkouts of ModelDeck on this machine at the same time, interleaved: before/after a change.

Usage: .venv/bin/python tests/bench/ab_checkouts.py CHECKOUT_A CHECKOUT_B [CHECKOUT_C ...] [--rounds 10]
           [--block 200] [--throughput-rounds 4] [--seconds 8]
A checkout may carry environment for its stack after a '|': 'path|NAME=value;NAME=value' (the same path twice,
one with MODELDECK_ACCESS_LOG=off say, measures a setting; the same spec twice is an A/A run: the noise).
All stacks (tests/bench/hold_stack.py, one per checkout, run with this Python) stay up together. Latency: in
--rounds rounds, each stack gets 20 unmeasured then --block measured sequential single-row predictions on one
keep-alive session, the order rotating each round; the CPU each part of each stack spends per request is read
around every block. Throughput: 16 client threads for --seconds, one stack at a time, rotating,
--throughput-rounds times each. Prints p50/p90/p99, CPU per request by part, req/s per run, and each checkout
against the first for p50 and median req/s.
The machine's speed drifts by several percent over minutes here; interleaving makes the drift hit both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

HERE = Path(__file__).resolve().parent
BODY = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


def cpu_by_part(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        out[name] = sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])
    return out


def throughput(url: str, key: str, clients: int = 16, seconds: float = 8.0) -> float:
    stop_at = time.perf_counter() + seconds
    done = [0] * clients

    def client(i: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        while time.perf_counter() < stop_at:
            if session.post(url, json=BODY, timeout=30).status_code == 200:
                done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--throughput-rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if len(args.checkouts) < 2:
        parser.error("give at least two checkouts")
    sides = range(len(args.checkouts))
    holds, info = [], []
    try:
        for spec in args.checkouts:
            path, _, extra = spec.partition("|")
            env = {**os.environ, **dict(kv.split("=", 1) for kv in extra.split(";") if kv)}
            proc = subprocess.Popen([sys.executable, str(HERE / "hold_stack.py"), path], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, cwd=path, env=env)
            holds.append(proc)
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                raise SystemExit(f"the stack of {path} did not come up")
            info.append(json.loads(line))
        sessions = []
        for side in info:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {side['key']}"
            for _ in range(300):
                assert session.post(side["url"], json=BODY, timeout=30).status_code == 200
            sessions.append(session)
        latency: list[list[float]] = [[] for _ in sides]
        cpu: list[dict[str, list[float]]] = [{} for _ in sides]
        for rnd in range(args.rounds):
            for i in [(j + rnd) % len(sides) for j in sides]:
                url = info[i]["url"]
                for _ in range(20):
                    sessions[i].post(url, json=BODY, timeout=30)
                before = cpu_by_part(info[i]["pids"])
                for _ in range(args.block):
                    t = time.perf_counter()
                    sessions[i].post(url, json=BODY, timeout=30)
                    latency[i].append((time.perf_counter() - t) * 1000)
                for part, value in cpu_by_part(info[i]["pids"]).items():
                    cpu[i].setdefault(part, []).append((value - before[part]) / args.block * 1000)
        rates: list[list[float]] = [[] for _ in sides]
        for rnd in range(args.throughput_rounds):
            for i in [(j + rnd) % len(sides) for j in sides]:
                rates[i].append(throughput(info[i]["url"], info[i]["key"], seconds=args.seconds))
                time.sleep(1)
        for i, name in zip(sides, "ABCDEFGH"):
            q = statistics.quantiles(latency[i], n=100)
            parts = ", ".join(f"{p} {statistics.median(v):.3f}" for p, v in cpu[i].items())
            print(f"{name} {args.checkouts[i]}: p50 {statistics.median(latency[i]):.3f} ms, p90 {q[89]:.3f}, "
                  f"p99 {q[98]:.3f}; CPU ms per request (median of blocks): {parts}; "
                  f"req/s @16 {[round(r) for r in rates[i]]} median {statistics.median(rates[i]):.1f}")
        for i, name in zip(sides[1:], "BCDEFGH"):
            print(f"{name}/A: p50 {statistics.median(latency[i]) / statistics.median(latency[0]):.3f}, "
                  f"req/s @16 {statistics.median(rates[i]) / statistics.median(rates[0]):.3f}")
        print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    finally:
        for proc in holds:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=120)


if __name__ == "__main__":
    main()
