"""Contract tests of the Kubernetes scaler backend against kmock's Kubernetes emulator, a real HTTP server.

No real API server can run here; kmock serves Kubernetes' REST layout and keeps objects in memory, so these
tests check the requests the kubernetes client sends for our backend and how the backend reads the answers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from kubernetes import client

from conftest import Stack, unique
from runtime.controller.backends.kubernetes import KubernetesBackend, ScalerError
from runtime.controller.main import Controller
from server.core import pools_repo
from server.core.queues import QueueProbe

DEPLOYMENTS = "apps/v1/deployments"
NAMESPACE = "modeldeck"


class Emulator:
    """kmock's KubernetesEmulator served on an ephemeral port from its own event loop thread."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.kmock: Any = None
        self.url = ""

    async def _serve(self) -> None:
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self.kmock, self.url = emulator, str(server.url).rstrip("/")
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "kmock did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def deployment(self, name: str) -> dict[str, Any]:
        return dict(self.kmock.objects[DEPLOYMENTS, NAMESPACE, name])


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    emu = Emulator()
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture()
def backend(emulator: Emulator) -> KubernetesBackend:
    cfg = client.Configuration()
    cfg.host = emulator.url
    return KubernetesBackend(client.AppsV1Api(client.ApiClient(cfg)), NAMESPACE, "worker-")


def add_deployment(backend: KubernetesBackend, pool: str, replicas: int, ready: int) -> None:
    """Create the pool's worker Deployment through the API, as `kubectl apply` would."""
    labels = {"app": f"worker-{pool}"}
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"worker-{pool}", "namespace": NAMESPACE},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                         {"name": "worker", "image": "modeldeck", "command": ["python", "-m", "runtime.worker"],
                          "env": [{"name": "MODELDECK_WORKER_POOL", "value": pool}]}]}}},
            "status": {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready}}
    backend.apps.create_namespaced_deployment(NAMESPACE, body)


def test_backend_reads_a_pools_deployment_status(backend: KubernetesBackend) -> None:
    pool = unique("cpu")
    add_deployment(backend, pool, replicas=2, ready=1)
    assert backend.status(pool) == {"desired": 2, "ready": 1, "available": 1}
    assert backend.replicas(pool) == 2


def test_backend_scales_through_the_scale_subresource(backend: KubernetesBackend, emulator: Emulator) -> None:
    pool = unique("cpu")
    add_deployment(backend, pool, replicas=1, ready=1)
    backend.scale(pool, 3)
    assert emulator.deployment(f"worker-{pool}")["spec"]["replicas"] == 3
    assert backend.replicas(pool) == 3
    backend.scale(pool, 0)
    assert backend.replicas(pool) == 0
    assert backend.supervise() == []


@pytest.mark.parametrize("call", ["scale", "replicas"])
def test_a_pool_without_a_deployment_is_a_clear_error(backend: KubernetesBackend, call: str) -> None:
    with pytest.raises(ScalerError) as err:
        backend.scale("nopool", 1) if call == "scale" else backend.replicas("nopool")
    assert str(err.value) == ("pool 'nopool': Deployment 'worker-nopool' does not exist in namespace 'modeldeck'; "
                              "add one (see compose/kubernetes/workers.yaml) with MODELDECK_WORKER_POOL=nopool")


def test_controller_applies_an_operators_scale_to_the_deployment(stack: Stack, backend: KubernetesBackend,
                                                                 emulator: Emulator) -> None:
    pool = unique("k8s")
    add_deployment(backend, pool, replicas=1, ready=1)
    pools_repo.set_replicas(stack.db, pool, 4, "apikey:ops", "black friday")
    settings = stack.settings_with(scaler_backend="kubernetes")
    probe = QueueProbe(settings.broker_url)
    try:
        Controller(settings, stack.db, backend, probe).tick()
    finally:
        probe.close()
    assert emulator.deployment(f"worker-{pool}")["spec"]["replicas"] == 4
    entry = stack.db.audit.find_one({"actor": "controller", "action": "controller.scale", "target": pool})
    assert entry["details"]["from"] == 1 and entry["details"]["to"] == 4
    assert entry["details"]["reason"] == "set by apikey:ops: black friday"
    assert pools_repo.get_pool(stack.db, pool)["controller"]["backend"] == "kubernetes"
