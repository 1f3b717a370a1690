"""The Ray Tune engine (``search.engine = "ray"``): what ``tune`` and the tests use of it."""

from ecgtune.search.ray.driver import NODE, NUMBER, RayDriver, RaySearch

__all__ = ["NODE", "NUMBER", "RayDriver", "RaySearch"]
