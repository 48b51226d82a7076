"""Inside the container, with the installed agent's Python: one call on its API, as JSON.

python call.py METHOD PATH [JSON-BODY-FILE]  ->  {"status": 202, "body": {...}}  (or status 0)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import requests

TOKEN_FILE = Path("/etc/till-agent/credentials/pos-token")
URL = "http://127.0.0.1:8765"


def main() -> None:
    method, path = sys.argv[1], sys.argv[2]
    body = json.loads(Path(sys.argv[3]).read_text()) if len(sys.argv) > 3 else None
    headers = {"Authorization": f"Bearer {TOKEN_FILE.read_text().strip()}"}
    try:
        answer = requests.request(method, URL + path, json=body, headers=headers, timeout=10)
    except requests.ConnectionError:
        sys.stdout.write(json.dumps({"status": 0, "body": None}) + "\n")
        return
    sys.stdout.write(json.dumps({"status": answer.status_code, "body": answer.json()}) + "\n")


if __name__ == "__main__":
    main()
