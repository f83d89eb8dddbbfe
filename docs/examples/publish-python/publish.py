"""Publishing to Herald from a Python backend, with a client generated from the committed
OpenAPI spec by openapi-python-client:

    pip install openapi-python-client
    openapi-python-client generate --meta none --path openapi/herald.json --output-path herald_client
    python docs/examples/publish-python/publish.py http://127.0.0.1:8080 "$KEY" acme news

(with `herald_client` importable, e.g. generated next to this file or on PYTHONPATH).
"""

import json
import sys
import time

from herald_client import AuthenticatedClient
from herald_client.api.messages import history, publish
from herald_client.models import HistoryPage, Problem, Published, PublishRequest


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: publish.py <herald url> <api key> [tenant] [channel]", file=sys.stderr)
        return 2
    base, key = sys.argv[1], sys.argv[2]
    tenant = sys.argv[3] if len(sys.argv) > 3 else "acme"
    channel = sys.argv[4] if len(sys.argv) > 4 else "news"
    client = AuthenticatedClient(base_url=base, token=key)

    body = PublishRequest(
        data={"from": "python", "n": [1, 2]},
        event="generated",
        idempotency_key=f"example-{time.time_ns()}",
    )
    result = publish.sync(tenant=tenant, channel=channel, client=client, body=body)
    if isinstance(result, Problem):
        # A problem document: `code` is stable, `field` names the part of the request at fault.
        print("refused:", result.code, result.detail, file=sys.stderr)
        return 1
    assert isinstance(result, Published), result

    page = history.sync(tenant=tenant, channel=channel, client=client, limit=10)
    if not isinstance(page, HistoryPage):
        print("history refused:", page, file=sys.stderr)
        return 1
    found = any(p.position == result.position and p.epoch == result.epoch for p in page.publications)
    print(json.dumps({"position": result.position, "epoch": result.epoch, "in_history": found}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
