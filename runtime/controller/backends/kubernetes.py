"""Scale a pool's worker Deployment (`<prefix><pool>`) through the Kubernetes API; Kubernetes supervises the pods."""

from __future__ import annotations

import logging

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from server.core.settings import Settings

logger = logging.getLogger(__name__)


class ScalerError(Exception):
    """The backend could not read or change a pool's replicas."""


class KubernetesBackend:
    """Read and patch the scale of worker Deployments in one namespace."""

    def __init__(self, apps: client.AppsV1Api, namespace: str, prefix: str) -> None:
        self.apps = apps
        self.namespace = namespace
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesBackend:
        """Connect with the pod's service account in a cluster, else with the local kubeconfig."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.AppsV1Api(), settings.kubernetes_namespace, settings.kubernetes_deployment_prefix)

    def deployment(self, pool: str) -> str:
        """Return the name of a pool's worker Deployment."""
        return self.prefix + pool

    def _fail(self, pool: str, verb: str, exc: ApiException) -> ScalerError:
        name = self.deployment(pool)
        if exc.status == 404:
            return ScalerError(f"pool '{pool}': Deployment '{name}' does not exist in namespace '{self.namespace}'; "
                               f"add one (see compose/kubernetes/workers.yaml) with MODELDECK_WORKER_POOL={pool}")
        if exc.status == 403:
            return ScalerError(f"pool '{pool}': the controller's service account may not {verb} Deployment '{name}'; "
                               "list it in the modeldeck-controller Role (compose/kubernetes/controller.yaml)")
        return ScalerError(f"pool '{pool}': could not {verb} Deployment '{name}': HTTP {exc.status} {exc.reason}")

    def status(self, pool: str) -> dict[str, int]:
        """Return the Deployment's desired, ready and available replicas."""
        try:
            dep = self.apps.read_namespaced_deployment(self.deployment(pool), self.namespace)
        except ApiException as exc:
            raise self._fail(pool, "read", exc) from exc
        st = dep.status
        return {"desired": dep.spec.replicas or 0, "ready": (st and st.ready_replicas) or 0,
                "available": (st and st.available_replicas) or 0}

    def replicas(self, pool: str) -> int:
        """Return the replicas the Deployment asks for (pods starting included)."""
        return self.status(pool)["desired"]

    def scale(self, pool: str, replicas: int) -> None:
        """Patch the Deployment's scale subresource; Kubernetes starts or stops pods (SIGTERM: a warm shutdown)."""
        try:
            self.apps.patch_namespaced_deployment_scale(self.deployment(pool), self.namespace, {"spec": {"replicas": replicas}})
        except ApiException as exc:
            raise self._fail(pool, "scale", exc) from exc
        logger.info("pool %s: Deployment %s scaled to %d", pool, self.deployment(pool), replicas)

    def supervise(self) -> list[str]:
        """Nothing to do: the Deployment's ReplicaSet restarts crashed pods."""
        return []

    def close(self) -> None:
        """Leave the Deployments as they are: the workers outlive the controller."""
