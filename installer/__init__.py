"""The technician's installer (till-install)."""
