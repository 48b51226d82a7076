"""The sandbox cloud: a local server that speaks the vendors' APIs, faults included."""
