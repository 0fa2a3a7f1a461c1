"""Starting or joining Ray for a sweep.

A sweep joins the cluster it is given (``ray_address``, or ``$RAY_ADDRESS`` as set inside
``ray job submit``); otherwise it starts a private local Ray bound to 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import os

from sweeps.config import SweepConfig
from sweeps.placement import trial_node_resource
from sweeps.preflight import check_ray_address
from trainers.config import PROJECT_ROOT
from trainers.errors import ConfigError

# Ray rewrites a loopback node address to the machine's address unless this is "0" (read when
# ray is imported); with it, the GCS, raylet and worker ports listen on 127.0.0.1 only. It also
# makes `ray start` refuse to add worker nodes, so it is set for private local instances alone.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def joins_cluster(cfg: SweepConfig) -> bool:
    return bool(cfg.ray_address or os.environ.get("RAY_ADDRESS"))


def bind_to_loopback() -> None:
    """Keep a local Ray on 127.0.0.1. Call before ``ray`` is imported; works after, too."""
    os.environ[LOOPBACK_ONLY_ENV] = "0"  # inherited by the GCS, raylet and worker processes
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False  # the value read at import, for a driver that imported ray earlier


AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _not_an_auth_notice(record: logging.LogRecord) -> bool:
    """Ray's "Token authentication is enabled/disabled for this Ray cluster" WARNING, printed at
    every new local cluster: for the sweep's private Ray on 127.0.0.1 it is no news, and it looked
    like trouble. Token auth itself stays as Ray sets it (on by default)."""
    return not record.getMessage().startswith("Token authentication is")


def quiet_local_auth_notice() -> None:
    logger = logging.getLogger(AUTH_LOGGER)
    if _not_an_auth_notice not in logger.filters:
        logger.addFilter(_not_an_auth_notice)


def init_ray(cfg: SweepConfig) -> str:
    """Join the configured cluster or $RAY_ADDRESS (plain ``ray.init()``), else start a local Ray."""
    import ray

    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    common = dict(log_to_driver=cfg.trial_logs, logging_level=logging.WARNING, configure_logging=True)
    try:
        if address:
            check_ray_address(address)
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, **common)
            else:
                ray.init(**common)  # inside `ray job submit`: the job's cluster; num_cpus is not allowed here
            where = f"cluster {address}"
        else:
            bind_to_loopback()
            quiet_local_auth_notice()
            pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
            # prestart_worker_first_driver off: Ray would start num_cpus idle workers for this driver,
            # which no trial uses (a trial's actor needs the job's runtime_env): 0.9 CPU-s for the two of a
            # smoke sweep here (its processes' CPU with and without, 2026-12-06)
            ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                     _system_config={"prestart_worker_first_driver": False}, **common)
            where = "local Ray"
    except ConnectionError as err:
        raise ConfigError(f"cannot connect to Ray at {address}: {str(err).splitlines()[0]}") from None
    try:
        trial_node_resource(cfg.trial_nodes)  # trial_nodes: required on a cluster that declares no trial node
    except ConfigError:
        ray.shutdown()
        raise
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    need_cpus = cfg.cpus_per_trial * cfg.workers_per_trial
    need_gpus = cfg.gpus_per_trial * cfg.workers_per_trial
    if need_cpus > cpus or need_gpus > gpus:
        ray.shutdown()
        raise ConfigError(f"a trial of {cfg.workers_per_trial} worker(s) needs {need_cpus:g} CPU / {need_gpus:g} GPU but the "
                          f"{where} has {cpus:g} CPU / {gpus:g} GPU; lower workers_per_trial, cpus_per_trial or "
                          "gpus_per_trial, or use a bigger cluster")
    return f"{where} ({cpus:g} CPU, {gpus:g} GPU)"
