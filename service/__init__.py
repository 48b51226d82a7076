"""Service wrappers: the Windows service adapter and the systemd unit."""
