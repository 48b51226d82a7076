"""The till-side HTTP API the POS calls (WSGI, served by waitress)."""
