"""Serve one model with ModelDeck, BentoML and MLflow side by side on this machine and compare (DESIGN.md §9).

Usage (no stack needs to be running; nothing here touches .modeldeck/):
    .venv/bin/python tests/bench/compare_servers.py [--n 2000] [--warmup 200] [--seconds 10] [--throughput-rounds 3]
        [--skip-bentoml] [--skip-mlflow] [--venvs .bench-venvs] [--checkout PATH ...] [--json results.json]

A LogisticRegression(max_iter=500) on iris is served three ways, each on a free loopback port:
- ModelDeck: a private stack (`installer.stack.up`) with its own MODELDECK_HOME (a temp dir), queue prefix
  and embedded nx-27017 port, reusing the RabbitMQ that answers at MODELDECK_BROKER_URL; the model is
  uploaded as skops. The console is stopped right after `up`: it is not measured.
- BentoML (>= 1.4): `bentoml serve` of a one-class service that loads the model from a joblib file.
- MLflow (>= 3): `mlflow models serve --env-manager local --workers 1` of an `mlflow.sklearn.save_model` dir,
  called with its tensor input (`{"inputs": rows}`, its fastest); its DataFrame input (`dataframe_split`) is
  measured too, latency only, for reference (the targets compare with the faster).
`--checkout PATH` (repeatable) serves the iris model from another checkout's code too (its own private stack, through
tests/bench/hold_stack.py), interleaved and measured like the others, and prints its ratios to BentoML beside this
checkout's: a before/after comparison in one run, against one BentoML (runs minutes apart differ by more than
most changes do).
ModelDeck's `GET /healthz` (no authentication, no work) is measured beside its predictions, latency only: the
floor that its HTTP server, Flask and this client put under any endpoint.
A DataFrame Pipeline (a ColumnTransformer with OneHotEncoder on string columns and StandardScaler on numeric ones,
selected by name, then LogisticRegression) is served by all three too and called for `predict_proba` with 1 and
1,000 rows, latency only, in the same interleaved run: ModelDeck with rows in its input schema's order, BentoML
through an endpoint that builds a DataFrame from records, MLflow through a second `mlflow models serve` of the
pipeline saved with `pyfunc_predict_fn="predict_proba"`, called with `dataframe_split`.
BentoML and MLflow run from their own virtual environments under --venvs (made on first use, pip output to
<venvs>/<name>-install.log, reused while they import); a server that cannot be installed or started is
reported as skipped and the others go on.

All three are started first and stay up together. Latency: each gets --warmup requests, then --n sequential
single-row requests on one persistent session (p50/p90/p99), and ModelDeck --n-batch 100-row requests too,
sent in --rounds alternating blocks (the order rotated each round, each block opened by --block-warmup
unmeasured requests), so that a machine whose speed drifts during the run slows every server alike. The CPU time
each server's processes (ModelDeck: API, worker, RabbitMQ, repository) and the client spend per measured request
is read around every measured block and printed. Throughput: then one server at a time, 1, 4 and 16 client threads
(one session each) for --seconds each, in --throughput-rounds rounds (the order rotated each round); the median of
each server's runs is reported and every run is printed. Last, ModelDeck's cold first predict of a fresh ~10 MB model right
after its upload. The clients run on the same machine as the servers, so they share its CPUs.
Loopback only; bounded by the request counts and durations above.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import psutil
import numpy as np
import requests
import sklearn
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from private_stack import free_port, private_settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CONCURRENCY = (1, 4, 16)
INSTALL_TIMEOUT_S = 1800
START_TIMEOUT_S = 180
COLD_MODEL_BYTES = 10 * 1024 * 1024
# DESIGN.md §9: p50 <= BentoML's and <= 0.6 x MLflow's; p99 <= 2 x p50; throughput@16 >= BentoML's;
# cold first predict of a 10 MB model < 1 s.
MLFLOW_FACTOR = 0.6
MLFLOW_FRAME = "MLflow dataframe_split"
MODELDECK_FLOOR = "ModelDeck GET /healthz"
P99_OVER_P50_MAX = 2.0
COLD_MAX_MS = 1000.0

BENTO_SERVICE = '''\
"""The benchmark's BentoML service: the iris model from a joblib file, one predict endpoint."""

import os

import bentoml
import joblib
import numpy as np
import pandas as pd


@bentoml.service(workers=1)
class IrisClassifier:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL_PATH"])
        self.pipeline = joblib.load(os.environ["BENCH_PIPELINE_PATH"])

    @bentoml.api
    def predict(self, rows: list[list[float]]) -> list[int]:
        return self.model.predict(np.asarray(rows, dtype=float)).tolist()

    @bentoml.api
    def predict_proba(self, records: list[dict]) -> list[list[float]]:
        return self.pipeline.predict_proba(pd.DataFrame.from_records(records)).tolist()
'''

PIPELINE_COLUMNS = ["city", "member", "income", "visits", "segment"]
PIPELINE_SCHEMA = [{"name": "city", "type": "string"}, {"name": "member", "type": "boolean"},
                   {"name": "income", "type": "number"}, {"name": "visits", "type": "integer"},
                   {"name": "segment", "type": "string"}]


def pipeline_frame(n: int, seed: int) -> Any:
    """Rows of the benchmark's DataFrame model: strings, a boolean, a float and an integer."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame({"city": rng.choice(["paris", "lyon", "nice"], n), "member": rng.choice([True, False], n),
                         "income": rng.normal(50.0, 10.0, n).round(3), "visits": rng.integers(0, 20, n),
                         "segment": rng.choice(["a", "b", "c"], n)})


def pipeline_model() -> tuple[Any, list[list[Any]]]:
    """Return the fitted DataFrame Pipeline and 1,000 rows (lists in PIPELINE_COLUMNS order) to call it with."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pipeline_frame(2000, 0)
    label = np.where(frame["income"] + 2 * frame["visits"] + 10 * (frame["city"] == "paris") > 72, "churn", "stay")
    pre = ColumnTransformer([("categories", OneHotEncoder(handle_unknown="ignore"), ["city", "segment"]),
                             ("flags", "passthrough", ["member"]),
                             ("numbers", StandardScaler(), ["income", "visits"])])
    model = make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(frame, label)
    rows = [[c.item() if hasattr(c, "item") else c for c in r] for r in pipeline_frame(1000, 1).itertuples(index=False)]
    return model, rows


PIPELINE_RUNS = ("pipeline predict_proba 1-row", "pipeline predict_proba 1000-row")
PIPELINE_ROWS: list[list[Any]] = []  # filled by main()
PIPELINE_CHECK_ROWS: list[list[Any]] = []

# Run with a venv's python whose scikit-learn differs from ours: a pickle does not load across versions.
RETRAIN = '''\
import sys

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

X, y = load_iris(return_X_y=True)
joblib.dump(LogisticRegression(max_iter=500).fit(X, y), sys.argv[1])
'''

# Run with the MLflow venv's python: save the model (retrained there if its scikit-learn differs from ours).
MLFLOW_SAVE = '''\
import sys

import joblib
import mlflow.sklearn
import sklearn

model_path, out_dir, our_version = sys.argv[1:4]
predict_fn = sys.argv[4] if len(sys.argv) > 4 else "predict"
if sklearn.__version__ == our_version:
    model = joblib.load(model_path)
else:
    raise SystemExit(f"the MLflow venv has scikit-learn {sklearn.__version__}, ours is {our_version}")
mlflow.sklearn.save_model(model, out_dir, pip_requirements=["scikit-learn==" + sklearn.__version__],
                          pyfunc_predict_fn=predict_fn)
'''


@dataclass
class Result:
    """What was measured for one server (or why it was skipped)."""

    name: str
    skipped: str = ""
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    throughput: dict[int, float] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    """How to send one predict request to a server and tell whether it succeeded."""

    url: str
    body: Callable[[list[list[float]]], dict[str, Any]] | None  # None: a GET
    headers: dict[str, str] = field(default_factory=dict)

    def session(self) -> requests.Session:
        s = requests.Session()
        s.headers.update(self.headers)
        return s

    def send(self, session: requests.Session, rows: list[list[float]], timeout: float = 30) -> requests.Response:
        if self.body is None:
            return session.get(self.url, timeout=timeout)
        return session.post(self.url, json=self.body(rows), timeout=timeout)


@dataclass
class Server:
    """A started server: its result, how to call it (None if it could not start), how to stop it, and what to
    measure on it after the side-by-side runs."""

    result: Result
    target: Target | None = None
    stop: Callable[[], None] = lambda: None
    after: Callable[[], None] = lambda: None
    variants: dict[str, Target] = field(default_factory=dict)  # other ways to call it, latency only (name -> target)
    pipeline: Target | None = None  # the DataFrame Pipeline's predict_proba (rows in PIPELINE_COLUMNS order)
    processes: Callable[[], dict[str, list[psutil.Process]]] = dict  # what serves it, by part (for its CPU time)


def tree(proc: subprocess.Popen[bytes] | psutil.Process) -> list[psutil.Process]:
    """A process and its descendants (a server's workers), as far as they can be read."""
    try:
        root = proc if isinstance(proc, psutil.Process) else psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User and system CPU time of these processes, their own only (threads included, children not)."""
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def throughput(target: Target, rows: list[list[float]], clients: int, seconds: float) -> tuple[float, int]:
    """Run `clients` threads, each sending requests back to back for `seconds`; return (req/s, errors)."""
    ok = [0] * clients
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(i: int) -> None:
        session = target.session()
        start.wait()
        while time.perf_counter() < deadline[0]:
            try:
                resp = target.send(session, rows)
                if resp.status_code == 200:
                    ok[i] += 1
                else:
                    errors[i] += 1
            except requests.RequestException:
                errors[i] += 1
        session.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for t in threads:
        t.join(seconds + 60)
    return sum(ok) / (time.perf_counter() - began), sum(errors)


def interleaved(runs: dict[str, tuple[Target, list[list[float]], int]], warmup: int, rounds: int,
                block_warmup: int, processes: dict[str, dict[str, list[psutil.Process]]] | None = None,
                cpu: dict[str, dict[str, float]] | None = None) -> dict[str, list[float]]:
    """Measure sequential latencies of several servers in alternating blocks.

    runs maps a name to (target, rows, n). Each gets its warm-up, then `rounds` rounds in which every run sends
    block_warmup unmeasured requests and then n / rounds measured ones, one after another, in an order rotated
    each round. A machine whose speed drifts within the run (a 2-core VM's neighbours, a burst of disk writes)
    then slows every server alike instead of whichever happened to be measured at that moment; the unmeasured
    requests keep the switch between servers, which a client of one server never sees, out of the numbers.
    Where processes maps a run's name to its server's processes by part, cpu[name] receives the CPU milliseconds
    per measured request of each part during that run's measured requests, and of this client ("client").
    Raises RuntimeError naming the server on any non-200 answer.
    """
    sessions = {name: target.session() for name, (target, _, _) in runs.items()}
    out: dict[str, list[float]] = {name: [] for name in runs}

    def send(name: str, count: int, keep: bool) -> None:
        target, rows, _ = runs[name]
        session = sessions[name]
        for _ in range(count):
            t = time.perf_counter()
            try:
                resp = target.send(session, rows)
            except requests.ConnectionError as exc:
                if keep:
                    raise RuntimeError(f"{name} ({target.url}): {exc}") from exc
                # A server may close a kept-alive connection left idle while the other servers' blocks ran; if it
                # does so just as a block's first (unmeasured) request goes out, the session opens a new one.
                resp = target.send(session, rows)
            elapsed = (time.perf_counter() - t) * 1000
            if resp.status_code != 200:
                raise RuntimeError(f"{name} ({target.url}) answered {resp.status_code}: {resp.text[:300]}")
            if keep:
                out[name].append(elapsed)

    processes = processes or {}
    spent: dict[str, dict[str, float]] = {name: {} for name in runs}

    def snapshot(name: str) -> dict[str, float]:
        parts = {part: cpu_seconds(procs) for part, procs in processes.get(name, {}).items()}
        parts["client"] = time.process_time()
        return parts

    names = list(runs)
    for name in names:
        send(name, warmup, keep=False)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            send(name, block_warmup, keep=False)
            before = snapshot(name)
            send(name, max(1, runs[name][2] // rounds), keep=True)
            for part, value in snapshot(name).items():
                spent[name][part] = spent[name].get(part, 0.0) + value - before[part]
    for session in sessions.values():
        session.close()
    if cpu is not None:
        for name in names:
            cpu[name] = {part: seconds * 1000 / len(out[name]) for part, seconds in spent[name].items()}
    return out


def measure_throughput(live: list[Any], row: list[float], args: argparse.Namespace) -> None:
    """Fill in each server's throughput at each concurrency: the median of --throughput-rounds runs, one server at a
    time, the servers' order rotated each round (one 10 s run per server came out 1.5-1.8x apart for the same code
    twice in one run: the machine's speed drifts over minutes)."""
    runs: dict[str, dict[int, list[float]]] = {s.result.name: {c: [] for c in CONCURRENCY} for s in live}
    for r in range(args.throughput_rounds):
        order = live[r % len(live):] + live[:r % len(live)]
        for clients in CONCURRENCY:
            for server in order:
                rps, errs = throughput(server.target, [row], clients, args.seconds)
                runs[server.result.name][clients].append(rps)
                server.result.errors[clients] = server.result.errors.get(clients, 0) + errs
                print(f"  round {r + 1}: {server.result.name}: {clients:>2} clients for {args.seconds:g} s: "
                      f"{rps:.1f} req/s, {errs} errors", flush=True)
    for server in live:
        for clients, values in runs[server.result.name].items():
            server.result.throughput[clients] = statistics.median(values)
        server.result.extra["throughput_runs"] = runs[server.result.name]
        print(f"  {server.result.name}: median req/s @1/4/16 " + " / ".join(
            f"{server.result.throughput[c]:.1f}" for c in CONCURRENCY) + "; @16 runs " + ", ".join(
            f"{v:.0f}" for v in runs[server.result.name][16]), flush=True)


# ---------------------------------------------------------------- processes we start (by pid, own session)

def spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a process we started and its process group: SIGTERM, then SIGKILL after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until GET url answers 200; fail with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}; last lines of {log}:\n{log_tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"did not answer {url} within {timeout_s:.0f} s; last lines of {log}:\n{log_tail(log)}")


def log_tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- virtual environments for the other servers

def ensure_venv(venvs: Path, name: str, packages: list[str], module: str) -> tuple[Path | None, str, float | None]:
    """Return (python, note, install seconds or None when reused); python is None with the reason when it fails."""
    venv = venvs / name
    python = venv / "bin" / "python"
    # pandas: the BentoML service's pipeline endpoint builds a DataFrame (MLflow has it anyway).
    check = [str(python), "-c", f"import {module}, sklearn, pandas; print({module}.__version__, sklearn.__version__)"]

    def probe() -> str | None:
        if not python.exists():
            return None
        done = subprocess.run(check, capture_output=True, text=True, timeout=120, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    versions = probe()
    if versions:
        return python, f"reused {venv} ({module} {versions.split()[0]}, scikit-learn {versions.split()[1]})", None
    log = venvs / f"{name}-install.log"
    print(f"  installing {' '.join(packages)} into {venv} (pip output: {log}) ...", flush=True)
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    venvs.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        try:
            made = subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=f, stderr=subprocess.STDOUT,
                                  timeout=300, check=False)
            if made.returncode != 0:
                return None, f"python -m venv failed (status {made.returncode}); see {log}", None
            pip = [str(python), "-m", "pip", "install", "--progress-bar", "off"]
            done = subprocess.run(pip + packages + [f"scikit-learn=={sklearn.__version__}"], stdout=f,
                                  stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S, check=False)
            if done.returncode != 0:
                # Our scikit-learn may not install beside this package; take the one pip picks (the model is
                # then retrained in that venv, since a pickle does not load across scikit-learn versions).
                f.write("\n--- retrying without pinning scikit-learn ---\n")
                f.flush()
                done = subprocess.run(pip + packages + ["scikit-learn"], stdout=f, stderr=subprocess.STDOUT,
                                      timeout=INSTALL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return None, f"pip install took over {INSTALL_TIMEOUT_S} s; see {log}", None
    seconds = time.monotonic() - started
    if done.returncode != 0:
        last = [ln for ln in log_tail(log, 40).splitlines() if "ERROR" in ln or "error" in ln][-1:] or ["see the log"]
        return None, f"pip install failed (status {done.returncode}): {last[0].strip()[:200]} ({log})", seconds
    versions = probe()
    if not versions:
        return None, f"installed, but `import {module}` fails; see {log}", seconds
    return python, f"installed in {seconds:.0f} s ({module} {versions.split()[0]}, scikit-learn {versions.split()[1]})", seconds


def venv_env(python: Path) -> dict[str, str]:
    """Return our environment as if the venv were activated: the servers start its tools (uvicorn) by name."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["PATH"] = str(python.parent) + os.pathsep + env.get("PATH", "")
    return env


def venv_sklearn(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import sklearn; print(sklearn.__version__)"], capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip()


def start_bentoml(args: argparse.Namespace, work: Path, model: LogisticRegression, row: list[float],
                  pipeline: Any) -> Server:
    """Install (or reuse) BentoML and serve the model with `bentoml serve`."""
    result = Result("BentoML")
    python, note, secs = ensure_venv(args.venvs, "bentoml", ["bentoml>=1.4", "joblib", "pandas"], "bentoml")
    result.extra.update(venv=note, install_s=secs)
    print(f"  BentoML venv: {note}", flush=True)
    if python is None:
        result.skipped = note
        return Server(result)
    folder = work / "bentoml"
    folder.mkdir()
    model_path = folder / "model.joblib"
    pipeline_path = folder / "pipeline.joblib"
    theirs = venv_sklearn(python)
    joblib.dump(pipeline, pipeline_path)  # loads only under the same scikit-learn: the endpoint fails otherwise
    if theirs == sklearn.__version__:
        joblib.dump(model, model_path)
    else:
        print(f"  BentoML venv has scikit-learn {theirs} (ours {sklearn.__version__}): retraining there", flush=True)
        subprocess.run([str(python), "-c", RETRAIN, str(model_path)], check=True, timeout=300)
    (folder / "service.py").write_text(BENTO_SERVICE)
    port = free_port()
    env = {**venv_env(python), "BENCH_MODEL_PATH": str(model_path), "BENCH_PIPELINE_PATH": str(pipeline_path),
           "BENTOML_DO_NOT_TRACK": "True",
           "BENTOML_HOME": str(folder / "home"), "PYTHONUNBUFFERED": "1"}
    log = folder / "serve.log"
    bentoml = python.with_name("bentoml")
    proc = spawn([str(bentoml), "serve", "service:IrisClassifier", "--host", "127.0.0.1", "--port", str(port)],
                 log, env, folder)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        target = Target(f"http://127.0.0.1:{port}/predict", lambda rows: {"rows": rows})
        check = target.send(requests.Session(), [row])
        if check.status_code != 200:
            raise RuntimeError(f"predict answered {check.status_code}: {check.text[:300]}")
        result.extra["answer"] = check.json()
        frame = Target(f"http://127.0.0.1:{port}/predict_proba",
                       lambda rows: {"records": [dict(zip(PIPELINE_COLUMNS, r)) for r in rows]})
        return Server(result, target, lambda: terminate(proc), processes=lambda: {"server": tree(proc)},
                      pipeline=checked(frame, "BentoML"))
    except (RuntimeError, requests.RequestException, subprocess.SubprocessError) as exc:
        result.skipped = f"bentoml serve failed: {exc}"
        terminate(proc)
        return Server(result)


def start_mlflow(args: argparse.Namespace, work: Path, model_path: Path, row: list[float], pipeline: Any) -> Server:
    """Install (or reuse) MLflow, save the model as an MLflow model and serve it."""
    result = Result("MLflow")
    python, note, secs = ensure_venv(args.venvs, "mlflow", ["mlflow>=3"], "mlflow")
    result.extra.update(venv=note, install_s=secs)
    print(f"  MLflow venv: {note}", flush=True)
    if python is None:
        result.skipped = note
        return Server(result)
    folder = work / "mlflow"
    folder.mkdir()
    saved = folder / "model"
    env = {**venv_env(python), "MLFLOW_TRACKING_URI": (folder / "mlruns").as_uri(), "PYTHONUNBUFFERED": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log = folder / "serve.log"
    proc = frame_proc = None
    pipeline_path = folder / "pipeline.joblib"
    joblib.dump(pipeline, pipeline_path)
    try:
        with open(log, "ab") as f:
            subprocess.run([str(python), "-c", MLFLOW_SAVE, str(model_path), str(saved), sklearn.__version__],
                           stdout=f, stderr=subprocess.STDOUT, env=env, cwd=folder, timeout=300, check=True)
            subprocess.run([str(python), "-c", MLFLOW_SAVE, str(pipeline_path), str(folder / "pipeline"),
                            sklearn.__version__, "predict_proba"],
                           stdout=f, stderr=subprocess.STDOUT, env=env, cwd=folder, timeout=300, check=True)
        port = free_port()
        mlflow = python.with_name("mlflow")
        proc = spawn([str(mlflow), "models", "serve", "-m", str(saved), "--env-manager", "local",
                      "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], log, env, folder)
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log)
        target = Target(f"http://127.0.0.1:{port}/invocations", lambda rows: {"inputs": rows})
        check = target.send(requests.Session(), [row])
        if check.status_code != 200:
            raise RuntimeError(f"/invocations answered {check.status_code}: {check.text[:300]}")
        result.extra["answer"] = check.json()
        # MLflow's DataFrame input, the form its docs lead with for scikit-learn models, costs it more than the
        # tensor form above (pandas on its side): measured too, for reference; the targets use the faster one.
        frame = Target(target.url, lambda rows: {"dataframe_split": {"columns": list(range(len(row))), "data": rows}})
        check = frame.send(requests.Session(), [row])
        variants = {}
        if check.status_code == 200:
            variants[MLFLOW_FRAME] = frame
        else:
            print(f"  MLflow dataframe_split input answered {check.status_code}: {check.text[:200]}; not measured", flush=True)
        # The pipeline is a second MLflow model, so a second server (MLflow serves one model per server).
        frame_port = free_port()
        frame_proc = spawn([str(mlflow), "models", "serve", "-m", str(folder / "pipeline"), "--env-manager", "local",
                            "--host", "127.0.0.1", "--port", str(frame_port), "--workers", "1"], log, env, folder)
        wait_http(f"http://127.0.0.1:{frame_port}/ping", frame_proc, log)
        pipe = Target(f"http://127.0.0.1:{frame_port}/invocations",
                      lambda rows: {"dataframe_split": {"columns": PIPELINE_COLUMNS, "data": rows}})

        def stop_both() -> None:
            terminate(proc)
            terminate(frame_proc)

        return Server(result, target, stop_both, variants=variants,
                      processes=lambda: {"server": tree(proc) + tree(frame_proc)}, pipeline=checked(pipe, "MLflow"))
    except subprocess.CalledProcessError as exc:
        result.skipped = f"mlflow.sklearn.save_model failed (status {exc.returncode}): {log_tail(log, 5)}"
    except (RuntimeError, requests.RequestException, subprocess.SubprocessError) as exc:
        result.skipped = f"mlflow models serve failed: {exc}"
    terminate(proc)
    terminate(frame_proc)
    return Server(result)


def checked(target: Target, name: str) -> Target | None:
    """Return the pipeline target if it answers a 1-row predict_proba, else None (reported, not measured)."""
    rows = PIPELINE_CHECK_ROWS
    try:
        resp = target.send(target.session(), rows)
    except requests.RequestException as exc:
        print(f"  {name}: the pipeline endpoint failed ({exc}); not measured", flush=True)
        return None
    if resp.status_code != 200:
        print(f"  {name}: the pipeline endpoint answered {resp.status_code}: {resp.text[:200]}; not measured", flush=True)
        return None
    return target


# ---------------------------------------------------------------- ModelDeck

def cold_model(target_bytes: int) -> tuple[bytes, int]:
    """Return a RandomForest on 4 features (iris-shaped rows) dumped as skops at about target_bytes, and its trees."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 4))
    y = rng.integers(0, 3, size=5000)  # random labels grow full-depth trees of predictable size
    probe = len(sio.dumps(RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y))) / 4
    trees = max(1, round(target_bytes / probe))
    return sio.dumps(RandomForestClassifier(n_estimators=trees, random_state=0).fit(X, y)), trees


def start_modeldeck(args: argparse.Namespace, work: Path, model: LogisticRegression, X: np.ndarray,
                    pipeline: Any) -> Server:
    """Bring up a private stack and upload the model as skops; Server.after measures the cold start of a ~10 MB
    model (run once the side-by-side measurements are done)."""
    result = Result("ModelDeck")
    tag = uuid.uuid4().hex[:8]
    home = work / "modeldeck-home"
    settings = private_settings(home, f"bench-compare-{tag}.")
    from installer.processes import Layout, running, stop
    from installer.services import StackError
    from installer.stack import api_url, down, up

    def shut() -> None:
        stopped = down(settings)
        print(f"  ModelDeck stack down (stopped {', '.join(stopped) or 'nothing'})", flush=True)
        delete_queues(settings.broker_url, [settings.queue_name("cpu")])

    try:
        started = time.monotonic()
        key = up(settings)
        stop(Layout(settings.home.resolve()), "console")  # not measured; its CPU would only add noise
        result.extra["stack_up_s"] = round(time.monotonic() - started, 1)
        print(f"  ModelDeck stack up at {api_url(settings)} in {result.extra['stack_up_s']} s "
              f"(home {home}, queue {settings.queue_name('cpu')}; api workers {settings.api_workers} x "
              f"{settings.api_threads} threads, worker concurrency {settings.worker_concurrency})", flush=True)
        base = api_url(settings) + "/api/v1"
        auth = {"Authorization": f"Bearer {key}"}
        session = requests.Session()
        session.headers.update(auth)

        def upload(name: str, blob: bytes, **extra: Any) -> float:
            meta = {"name": name, "format": "skops", "pool": "cpu", **extra}
            t = time.perf_counter()
            resp = session.post(base + "/models", files={"file": (f"{name}.skops", io.BytesIO(blob)),
                                                         "metadata": (None, json.dumps(meta))}, timeout=300)
            if resp.status_code not in (200, 201):
                raise RuntimeError(f"upload of {name} answered {resp.status_code}: {resp.text[:300]}")
            return (time.perf_counter() - t) * 1000

        upload("bench-iris", sio.dumps(model))
        target = Target(base + "/models/bench-iris/predict", lambda rows: {"inputs": rows}, auth)
        upload("bench-pipeline", sio.dumps(pipeline), input_schema=PIPELINE_SCHEMA)
        frame = Target(base + "/models/bench-pipeline/predict",
                       lambda rows: {"inputs": rows, "method": "predict_proba"}, auth)
    except (StackError, RuntimeError, requests.RequestException) as exc:
        result.skipped = f"ModelDeck failed: {exc}"
        shut()
        return Server(result)

    def cold() -> None:
        blob, trees = cold_model(COLD_MODEL_BYTES)
        upload_ms = upload("bench-cold", blob)
        t = time.perf_counter()
        first = session.post(base + "/models/bench-cold/predict", json={"inputs": [X[0].tolist()]}, timeout=120)
        first_ms = (time.perf_counter() - t) * 1000
        if first.status_code != 200:
            raise RuntimeError(f"first predict of bench-cold answered {first.status_code}: {first.text[:300]}")
        body = first.json()
        result.extra["cold"] = {"model_mb": round(len(blob) / 2**20, 1), "trees": trees, "upload_ms": upload_ms,
                                "first_predict_ms": first_ms, "upload_to_answer_ms": upload_ms + first_ms,
                                "worker_load_ms": body.get("timings", {}).get("load_ms"),
                                "pool_cold_start": body.get("cold_start")}  # the pool had to start a worker
        print(f"  ModelDeck: cold {len(blob) / 2**20:.1f} MB RandomForest ({trees} trees): upload {upload_ms:.0f} ms, "
              f"first predict {first_ms:.0f} ms (worker load_ms {result.extra['cold']['worker_load_ms']}, "
              f"pool started from zero: {body.get('cold_start')})", flush=True)

    layout = Layout(settings.home.resolve())

    def processes() -> dict[str, list[psutil.Process]]:
        parts = {"API": "api", "worker": "worker-cpu", "repository": "repository"}
        found = {part: tree(proc) for part, name in parts.items() if (proc := running(layout, name)) is not None}
        # The broker is the machine's RabbitMQ (or one `up` started): no other server here uses it.
        found["RabbitMQ"] = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
        return found

    # The same HTTP server, Flask app and client with no work behind: what any endpoint of this API costs.
    floor = {MODELDECK_FLOOR: Target(api_url(settings) + "/healthz", None)}
    return Server(result, target, shut, cold, variants=floor, processes=processes, pipeline=checked(frame, "ModelDeck"))


def start_checkout(path: Path) -> Server:
    """Serve the iris model from another checkout's code (tests/bench/hold_stack.py: its own private stack), so that
    a before/after comparison shares one run, one BentoML and one machine state."""
    result = Result(f"ModelDeck@{path.name}")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "hold_stack.py"), str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=path)
    assert proc.stdin is not None and proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        result.skipped = f"{path}: its stack did not come up (exit {proc.wait(60)})"
        return Server(result)
    info = json.loads(line)

    def stop() -> None:
        assert proc.stdin is not None
        proc.stdin.close()  # hold_stack.py takes its stack down
        proc.wait(120)

    def processes() -> dict[str, list[psutil.Process]]:
        found = {part: tree(psutil.Process(info["pids"][name])) for part, name in
                 (("API", "api"), ("worker", "worker-cpu"), ("repository", "repository"))}
        found["RabbitMQ"] = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
        return found

    print(f"  {result.name}: stack up, predict at {info['url']}", flush=True)
    target = Target(info["url"], lambda rows: {"inputs": rows}, {"Authorization": f"Bearer {info['key']}"})
    return Server(result, target, stop, processes=processes)


def delete_queues(broker_url: str, queues: list[str]) -> None:
    """Remove the private stack's queues from the shared broker (best effort)."""
    from server.core.broker import close_quietly, connect, parse_broker_url

    try:
        conn = connect(parse_broker_url(broker_url))
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue)
        close_quietly(conn)
    except Exception:  # best effort: the broker may be gone already
        pass


def measure_all(servers: list[Server], row: list[float], batch: list[list[float]], args: argparse.Namespace) -> None:
    """Latencies of every running server side by side (interleaved), then each one's throughput alone, then
    ModelDeck's cold start."""
    live = [s for s in servers if s.target is not None and not s.result.skipped]
    runs: dict[str, tuple[Target, list[list[float]], int]] = {}
    for server in live:
        assert server.target is not None
        runs[server.result.name] = (server.target, [row], args.n)
        for name, variant in server.variants.items():
            runs[name] = (variant, [row], args.n)
    md = next((s for s in live if s.result.name == "ModelDeck"), None)
    if md is not None and md.target is not None:
        runs["ModelDeck 100-row"] = (md.target, batch, args.n_batch)
    for server in live:
        if server.pipeline is not None:
            one, many = PIPELINE_RUNS
            # 0 leaves a run out (for comparisons with a checkout whose benchmark had no pipeline).
            if args.n_pipeline:
                runs[f"{server.result.name} {one}"] = (server.pipeline, PIPELINE_ROWS[:1], args.n_pipeline)
            if args.n_pipeline_batch:
                runs[f"{server.result.name} {many}"] = (server.pipeline, PIPELINE_ROWS, args.n_pipeline_batch)
    print(f"Latency, interleaved: {', '.join(runs)} in {args.rounds} rounds (warm-up {args.warmup} each, "
          f"{args.block_warmup} more unmeasured at the start of each block)", flush=True)
    processes = {server.result.name: server.processes() for server in live}
    cpu: dict[str, dict[str, float]] = {}
    lat = interleaved(runs, args.warmup, args.rounds, args.block_warmup, processes, cpu)
    for server in live:
        values = lat[server.result.name]
        r = server.result
        r.p50, r.p90, r.p99 = pct(values, 0.5), pct(values, 0.9), pct(values, 0.99)
        print(f"  {r.name}: {len(values)} sequential single-row requests: p50 {r.p50:.2f} ms, "
              f"p90 {r.p90:.2f} ms, p99 {r.p99:.2f} ms", flush=True)
        for name in server.variants:
            values = lat[name]
            r.extra[name] = {"p50": pct(values, 0.5), "p90": pct(values, 0.9), "p99": pct(values, 0.99)}
            print(f"  {name}: {len(values)} sequential single-row requests: p50 {r.extra[name]['p50']:.2f} ms, "
                  f"p90 {r.extra[name]['p90']:.2f} ms, p99 {r.extra[name]['p99']:.2f} ms", flush=True)
    for server in live:
        for run in PIPELINE_RUNS:
            values = lat.get(f"{server.result.name} {run}")
            if values:
                server.result.extra[run] = {"p50": pct(values, 0.5), "p90": pct(values, 0.9), "p99": pct(values, 0.99)}
                print(f"  {server.result.name} {run}: {len(values)} sequential requests: p50 {pct(values, 0.5):.2f} ms",
                      flush=True)
    if md is not None:
        md.result.extra["p50_100_rows_ms"] = pct(lat["ModelDeck 100-row"], 0.5)
        print(f"  ModelDeck: {len(lat['ModelDeck 100-row'])} sequential 100-row requests: "
              f"p50 {md.result.extra['p50_100_rows_ms']:.2f} ms", flush=True)
    print("  CPU per measured single-row request, ms (each process's user + system time; the client's own):")
    for server in live:
        parts = cpu[server.result.name]
        server.result.extra["cpu_ms"] = parts
        serving = {k: v for k, v in parts.items() if k != "client"}
        print(f"    {server.result.name}: client {parts['client']:.2f}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in serving.items())
              + (f"; serving in all {sum(serving.values()):.2f}" if len(serving) > 1 else ""), flush=True)
    print(f"Throughput, one server at a time, {args.throughput_rounds} rounds, the order rotated each round:",
          flush=True)
    measure_throughput(live, row, args)
    if md is not None:
        try:
            md.after()
        except (RuntimeError, requests.RequestException) as exc:
            print(f"  ModelDeck cold start failed: {exc}", flush=True)


# ---------------------------------------------------------------- report

def announce(result: Result) -> Result:
    """Print the skip reason as soon as a server is skipped."""
    if result.skipped:
        print(f"  skipped: {result.name}: {result.skipped}", flush=True)
    return result


def ratios(md: Result, bento: Result, mlflow: Result) -> list[tuple[str, float | None, str, bool | None]]:
    """Return (what, value, target, met) for each of ModelDeck's targets; value None when not measurable."""
    usable = md.p50 is not None
    b = bento if not bento.skipped and bento.p50 else None
    m = mlflow if not mlflow.skipped and mlflow.p50 else None
    out: list[tuple[str, float | None, str, bool | None]] = []
    v = md.p50 / b.p50 if usable and b and b.p50 else None
    out.append(("p50 / BentoML p50", v, "<= 1.0", None if v is None else v <= 1.0))
    v = md.p50 / (MLFLOW_FACTOR * m.p50) if usable and m and m.p50 else None
    out.append((f"p50 / ({MLFLOW_FACTOR} x MLflow p50)", v, "<= 1.0", None if v is None else v <= 1.0))
    frame = m.extra.get(MLFLOW_FRAME) if m else None
    v = md.p50 / (MLFLOW_FACTOR * frame["p50"]) if usable and frame else None
    out.append((f"p50 / ({MLFLOW_FACTOR} x MLflow dataframe_split p50)", v, "(reference)", None))
    floor = md.extra.get(MODELDECK_FLOOR)
    v = floor["p50"] / (MLFLOW_FACTOR * m.p50) if floor and m and m.p50 else None
    out.append((f"GET /healthz p50 / ({MLFLOW_FACTOR} x MLflow p50)", v, "(reference)", None))
    v = md.p99 / md.p50 if usable and md.p99 and md.p50 else None
    out.append(("p99 / p50", v, f"<= {P99_OVER_P50_MAX:g}", None if v is None else v <= P99_OVER_P50_MAX))
    v = md.extra["p50_100_rows_ms"] / md.p50 if usable and "p50_100_rows_ms" in md.extra else None
    out.append(("100-row p50 / 1-row p50", v, "<= 1.3", None if v is None else v <= 1.3))
    v = md.throughput[16] / b.throughput[16] if b and b.throughput.get(16) and md.throughput.get(16) else None
    out.append(("req/s @16 / BentoML req/s @16", v, ">= 1.0", None if v is None else v >= 1.0))
    for run in PIPELINE_RUNS:
        mine, theirs = md.extra.get(run), bento.extra.get(run) if not bento.skipped else None
        v = mine["p50"] / theirs["p50"] if mine and theirs else None
        out.append((f"{run.removeprefix('pipeline ')} p50 / BentoML", v, "<= 1.0", None if v is None else v <= 1.0))
    cold = md.extra.get("cold")
    v = cold["first_predict_ms"] if cold else None
    out.append((f"cold: first predict of {cold['model_mb'] if cold else '~10'} MB model, ms", v,
                f"< {COLD_MAX_MS:g}", None if v is None else v < COLD_MAX_MS))
    v = cold["upload_to_answer_ms"] if cold else None
    out.append(("cold: upload start -> first answer, ms", v, "(no target)", None))
    v = cold["worker_load_ms"] if cold else None
    out.append(("cold: worker timings.load_ms", v, "(no target)", None))
    return out


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: list[Result], checks: list[tuple[str, float | None, str, bool | None]]) -> None:
    head = ["server", "p50 ms", "p90 ms", "p99 ms"] + [f"req/s @{c}" for c in CONCURRENCY] + ["errors @1/4/16"]
    rows = []
    for r in results:
        if r.skipped:
            rows.append([r.name, "skipped"] + [""] * (len(head) - 2))
            continue
        rows.append([r.name, fmt(r.p50), fmt(r.p90), fmt(r.p99)]
                    + [fmt(r.throughput.get(c), ".1f") for c in CONCURRENCY]
                    + ["/".join(str(r.errors.get(c, "-")) for c in CONCURRENCY)])
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    for r in results:
        if r.skipped:
            print(f"skipped: {r.name}: {r.skipped}")
        for name, q in r.extra.items():
            if isinstance(q, dict) and set(q) == {"p50", "p90", "p99"}:
                print(f"{name} (latency only, same interleaved run): p50 {q['p50']:.2f} ms, p90 {q['p90']:.2f} ms, "
                      f"p99 {q['p99']:.2f} ms")
    print()
    print("DataFrame Pipeline, predict_proba, p50 ms (same interleaved run):")
    print("| server    | 1 row  | 1,000 rows |")
    print("|-----------|--------|------------|")
    for r in results:
        one, many = (r.extra.get(run) for run in PIPELINE_RUNS)
        print(f"| {r.name:<9} | {fmt(one['p50'] if one else None):<6} | {fmt(many['p50'] if many else None):<10} |")
    print()
    print("ModelDeck targets (DESIGN.md §9):")
    for what, value, target, met in checks:
        verdict = "n/a" if met is None and not target.startswith("(") else ("" if met is None else ("met" if met else "NOT MET"))
        print(f"  {what:<40} {fmt(value, '.2f'):>9}   target {target:<12} {verdict}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="measured sequential single-row requests per server")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--throughput-rounds", type=int, default=3,
                        help="throughput runs per server and concurrency, interleaved; the median is reported")
    parser.add_argument("--n-batch", type=int, default=300, help="measured 100-row requests (ModelDeck)")
    parser.add_argument("--n-pipeline", type=int, default=1000, help="measured 1-row predict_proba requests to the pipeline (0: none)")
    parser.add_argument("--n-pipeline-batch", type=int, default=200, help="measured 1,000-row predict_proba requests (0: none)")
    parser.add_argument("--rounds", type=int, default=10, help="blocks each server's latency requests are split into")
    parser.add_argument("--block-warmup", type=int, default=10, help="unmeasured requests at the start of each block")
    parser.add_argument("--skip-bentoml", action="store_true")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--venvs", type=Path, default=ROOT / ".bench-venvs", help="where the BentoML/MLflow venvs go")
    parser.add_argument("--checkout", type=Path, action="append", default=[],
                        help="also serve the iris model from this checkout (before/after a change), in the same run")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    args.venvs = args.venvs.resolve()

    cpus = os.cpu_count()
    load_before = os.getloadavg()
    print(f"CPUs: {cpus}; load average before (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in load_before)}", flush=True)
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    row = X[0].tolist()
    pipeline, rows = pipeline_model()
    PIPELINE_ROWS[:] = rows
    PIPELINE_CHECK_ROWS[:] = rows[:1]
    with tempfile.TemporaryDirectory(prefix="modeldeck-compare-") as tmp:
        work = Path(tmp)
        model_path = work / "model.joblib"
        joblib.dump(model, model_path)
        servers: list[Server] = []
        try:
            print("ModelDeck:", flush=True)
            servers.append(start_modeldeck(args, work, model, X, pipeline))
            print("BentoML:", flush=True)
            servers.append(Server(Result("BentoML", skipped="--skip-bentoml")) if args.skip_bentoml
                           else start_bentoml(args, work, model, row, pipeline))
            print("MLflow:", flush=True)
            servers.append(Server(Result("MLflow", skipped="--skip-mlflow")) if args.skip_mlflow
                           else start_mlflow(args, work, model_path, row, pipeline))
            for path in args.checkout:
                print(f"ModelDeck from {path}:", flush=True)
                servers.append(start_checkout(path.resolve()))
            for server in servers:
                announce(server.result)
            measure_all(servers, row, X[:100].tolist(), args)
        finally:
            for server in servers:
                server.stop()
        results = [server.result for server in servers]
        md, bento, mlflow = results[:3]
    load_after = os.getloadavg()
    checks = ratios(md, bento, mlflow)
    print()
    print(f"Side by side: {args.n} sequential single-row requests after {args.warmup} warm-up; throughput "
          f"{args.seconds:g} s per concurrency; scikit-learn {sklearn.__version__}, LogisticRegression on iris")
    print_table(results, checks)
    for other in results[3:]:
        if other.skipped or not other.p50:
            continue
        b = bento if not bento.skipped and bento.p50 else None
        print(f"  {other.name}: p50 / BentoML {fmt(other.p50 / b.p50 if b and b.p50 else None)}, req/s @16 / BentoML "
              f"{fmt(other.throughput[16] / b.throughput[16] if b and b.throughput.get(16) else None)} (same run; "
              f"this checkout: {fmt(md.p50 / b.p50 if b and b.p50 and md.p50 else None)}, "
              f"{fmt(md.throughput[16] / b.throughput[16] if b and b.throughput.get(16) and md.throughput.get(16) else None)})")
    print(f"CPUs: {cpus}; load average before: {', '.join(f'{v:.2f}' for v in load_before)}; "
          f"after: {', '.join(f'{v:.2f}' for v in load_after)}")
    if args.json:
        doc = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "cpus": cpus, "load_before": load_before, "load_after": load_after,
               "sklearn": sklearn.__version__, "results": [r.__dict__ for r in results],
               "targets": [{"what": w, "value": v, "target": t, "met": m} for w, v, t, m in checks]}
        args.json.write_text(json.dumps(doc, indent=2, default=str))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
