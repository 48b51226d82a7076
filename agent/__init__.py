"""Till Agent: the store-side edge agent for POS tills."""

__all__ = ["__version__"]

try:  # written by the build from git tags (hatch-vcs); absent only in a bare source tree
    from agent._version import __version__
except ImportError:  # pragma: no cover - a source tree that was never built or installed
    __version__ = "0.0.0"
