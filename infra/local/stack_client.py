"""What the checks on the emulated stack share: its API called with the
ready file's key, waiting for a run to reach a status, storing a workflow
whatever an earlier check stored under its id, and boto3 clients for the
emulated AWS endpoint; and the answer of the local services that stand
in for the outside world."""

import json
import sys
import time
import urllib.error
import urllib.request

import boto3


def api(ready, method, path, body=None):
    """(status, JSON body) of one API call."""
    req = urllib.request.Request(
        ready["api_url"] + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"authorization": f"Bearer {ready['api_key']}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_status(ready, run, wanted, who, seconds=180):
    """The run's view once its status is one of `wanted`; exits naming
    `who` if it is not within `seconds`."""
    deadline = time.time() + seconds
    body = None
    while time.time() < deadline:
        _, body = api(ready, "GET", f"/v1/runs/{run}")
        if body["status"] in wanted:
            return body
        time.sleep(0.3)
    sys.exit(f"{who}: run {run} did not reach {wanted}: {json.dumps(body)[:800]}")


def store_workflow(ready, definition, who):
    """Stores `definition` under its id: created, or (stored by an earlier
    check on this stack) replaced by a new version, then read back."""
    wid = definition["id"]
    status, body = api(ready, "POST", "/v1/workflows", definition)
    if status == 409:
        status, body = api(ready, "PUT", f"/v1/workflows/{wid}", definition)
        if status != 200:
            sys.exit(f"{who}: replacing workflow {wid}: {status} {body}")
    elif status != 201:
        sys.exit(f"{who}: storing workflow {wid}: {status} {body}")
    status, stored = api(ready, "GET", f"/v1/workflows/{wid}")
    if status != 200 or stored.get("definition", {}).get("steps") != definition["steps"]:
        sys.exit(f"{who}: the stored workflow {wid} is not the one given: {status} {stored}")


def answer_json(handler, payload):
    """Answers a request of an http.server handler with 200 and `payload`."""
    body = json.dumps(payload).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def aws(ready, service, **config):
    """A boto3 client for `service` on the emulated AWS endpoint; and the answer of the local services that stand
in for the outside world."""
    return boto3.client(
        service,
        endpoint_url=ready["aws_endpoint"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        **config,
    )
