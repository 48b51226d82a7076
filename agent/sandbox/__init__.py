"""The sandbox cloud: a local server that speaks the vendors' APIs, faults included."""

from agent.sandbox.server import RecordedRequest, SandboxCloud

__all__ = ["RecordedRequest", "SandboxCloud"]
