"""What route handlers take from the application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from inferd.runtime.manager import ModelManager

if TYPE_CHECKING:
    from inferd.cluster.ray_cluster import RayCluster


def manager(request: Request) -> ModelManager:
    result: ModelManager = request.app.state.manager
    return result


def cluster(request: Request) -> RayCluster | None:
    """The Ray cluster the server joined (--ray-address); None when it runs alone."""
    found: RayCluster | None = request.app.state.cluster
    return found
