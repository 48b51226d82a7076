"""Run by the Windows Python under Wine: the key file wrapped by our Dpapi protector, reopened.

Prints one JSON line for the test on Linux to judge.
"""

import base64
import json
import sys
from pathlib import Path

from agent.core import crypto
from agent.core.errors import KeyStoreError
from service.windows import Dpapi

path = Path(sys.argv[1])
made = crypto.load_or_create(path, may_create=True, protector=Dpapi())
text = path.read_text(encoding="utf-8")
sealed = made.seal_bytes(b"a receipt", "R-1")
again = crypto.load_or_create(path, may_create=False, protector=Dpapi())
try:
    crypto.load_or_create(path, may_create=False)  # no protector: another account's view
    refused = ""
except KeyStoreError as exc:
    refused = str(exc)
secrets = [base64.b64encode(k.secret).decode() for k in made.data_keys()]
secrets.append(base64.b64encode(made.index_key).decode())
result = {
    "protected_by": json.loads(text).get("protected_by"),
    "a_key_in_clear": any(secret in text for secret in secrets),
    "reopened": again.open_bytes(sealed, "R-1").decode(),
    "same_keys": [k.secret for k in again.data_keys()] == [k.secret for k in made.data_keys()],
    "without_dpapi": refused,
    "examined": crypto.examine(path),
}
sys.stdout.write(json.dumps(result) + "\n")
