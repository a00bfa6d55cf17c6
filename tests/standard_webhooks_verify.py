"""Verifies one request with the Standard Webhooks reference library (PyPI
`standardwebhooks`), for `tests/tests/signatures.rs`.

Reads JSON on stdin: {"secret": "whsec_…", "headers": {name: value},
"body_base64": "…", "json_parse": true|false}; calls
`Webhook(secret).verify(body, headers, json_parse=…)` and prints JSON:
{"verified": true, "payload": <what verify returned>} or
{"verified": false, "error": "<the library's message>"}.
"""

import base64
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main():
    request = json.load(sys.stdin)
    body = base64.b64decode(request["body_base64"])
    try:
        payload = Webhook(request["secret"]).verify(
            body, request["headers"], json_parse=request["json_parse"]
        )
    except WebhookVerificationError as error:
        json.dump({"verified": False, "error": str(error)}, sys.stdout)
        return
    json.dump({"verified": True, "payload": payload}, sys.stdout)


if __name__ == "__main__":
    main()
