"""Serving platforms: where a version's engine runs and how a model@alias keeps one URL across versions.

- ``local`` (the default, ``make demo``): each version an endpoint process group on this machine
  (``tasks.serving.endpoints``), each model@alias a router process on a kept port (``tasks.servers.router``).
- ``ray``: each version a Ray Serve application whose replicas run the engine's own server, spread over the
  cluster's nodes; each model@alias an application at a stable route on Serve's proxy. It outlives the worker
  that deployed it, and any worker can move, roll back or restore it.

A pipeline chooses one in its deploy section (``serving: {platform: ray, address: HEAD:PORT, replicas: 2}``) or
for every pipeline with ``FINEFLOW_SERVING`` (``local``, ``ray``: the local stack's cluster,
``ray://HEAD:PORT``, or ``ray-client://HEAD:PORT``). ``address`` is the head's GCS port where the worker's machine
is a node of the cluster (a Ray driver there uses the node's files and processes), or ``ray://HOST:PORT``, the
head's client server, from a machine that is not (a Kubernetes Job's pod). The section is checked when the config
loads: a cluster that does not answer is an error before anything is trained. A version records its section in
``deploy_config``, so it is served again where it was. A new platform is a module here with a row in
``PLATFORMS``.
"""

from __future__ import annotations

import json

from tasks.serving.endpoints import Endpoint
from tasks.serving.platforms.base import Log, ServingPlatform, ServingSection
from tasks.serving.platforms.local import LocalPlatform
from tasks.serving.platforms.ray import RayPlatform

PLATFORMS: dict[str, type[ServingPlatform]] = {"local": LocalPlatform, "ray": RayPlatform}
__all__ = ["PLATFORMS", "Log", "ServingPlatform", "ServingSection", "of_endpoint", "of_relaunch", "of_tags", "platform"]


def platform(section: ServingSection | dict | None) -> ServingPlatform:
    """The platform a serving section (or its recorded JSON form, not checked against the cluster again) names;
    None: local."""
    # A recorded section is where a version was served, not a choice to check again: its defaults are filled in
    # unvalidated (validation asks the cluster, and refuses local serving where FINEFLOW_EPHEMERAL is set).
    if section is None:
        section = ServingSection.model_construct()
    elif isinstance(section, dict):
        section = ServingSection.model_construct(**{**ServingSection.model_construct().model_dump(), **section})
    return PLATFORMS[section.platform](section)


def of_relaunch(relaunch: dict | None) -> ServingPlatform:
    """The platform a recorded ``relaunch`` (an endpoint's, a version's ``deploy_config``) was served on."""
    return platform(((relaunch or {}).get("deploy") or {}).get("serving"))


def of_tags(tags: dict[str, str]) -> ServingPlatform:
    """The platform a registered version (its tags: ``deploy_config``) is served on."""
    return of_relaunch(json.loads(tags["deploy_config"]) if "deploy_config" in tags else None)


def of_endpoint(ep: Endpoint) -> ServingPlatform:
    return platform(ep.serving) if ep.serving else of_relaunch(ep.relaunch)
