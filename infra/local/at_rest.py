"""Secrets never rest outside Secrets Manager, on the emulated AWS stack.

A workspace secret is used by an http step (sent as a header to a local
service that echoes it back in its answer, as careless services do), on a
run that also waits for an approval (so it is handed to the Standard
machine); a webhook endpoint's signing key signs the delivery of the
run's end. After the run, neither value must appear in any DynamoDB
item, S3 object, Step Functions execution history (inputs, outputs,
errors of every state) or line the functions logged. The service must
have received the secret and a delivery signed with the key (else the
check would prove nothing).

Reads the stack's ready file (infra/local/with-stack) and the functions'
log; exits non-zero on any failure.
"""

import argparse
import base64
import http.server
import json
import secrets
import sys
import threading
import time
from pathlib import Path

import standardwebhooks

import stack_client
from stack_client import answer_json, api, aws

ROOT = Path(__file__).resolve().parents[2]
RECEIVED = []
# (headers, body) of each webhook delivery.
DELIVERED = []


class Echo(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path == "/hook":
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            DELIVERED.append(({k.lower(): v for k, v in self.headers.items()}, body))
            answer_json(self, {"ok": True})
            return
        key = self.headers.get("x-api-key", "")
        RECEIVED.append(key)
        answer_json(self, {"you_sent": key, "status": "accepted"})

    def log_message(self, *args):
        pass


def wait_status(ready, run, wanted):
    return stack_client.wait_status(ready, run, wanted, "at_rest")


def forms(value):
    """The value as it would be written: plain, and base64-encoded."""
    raw = value.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def found_in(text, value):
    data = text if isinstance(text, bytes) else text.encode()
    return any(f in data for f in forms(value))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--log", default=str(ROOT / "target" / "emulated-aws.log"))
    args = ap.parse_args()
    ready = json.load(open(args.ready_file))
    value = "atrest-" + secrets.token_hex(16)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"

    status, endpoint = api(ready, "POST", "/v1/endpoints", {"url": f"{origin}/hook", "events": ["run.completed"]})
    if status != 201:
        sys.exit(f"at_rest: making the webhook endpoint: {status} {endpoint}")
    signing_key = endpoint["secret"]
    # A function instance that read "no endpoints" trusts it for a second.
    time.sleep(1.5)

    status, body = api(ready, "PUT", "/v1/secrets/AT_REST_KEY", {"value": value})
    if status != 200:
        sys.exit(f"at_rest: storing the secret: {status} {body}")
    status, body = api(ready, "POST", "/v1/workflows", {"name": "secret at rest", "steps": [
        {"id": "call", "type": "http", "method": "POST", "url": f"{origin}/use",
         "headers": {"x-api-key": "{{ secrets.AT_REST_KEY }}"}, "body": {"n": 1}},
        {"id": "ask", "type": "approval", "depends_on": ["call"]},
        {"id": "after", "type": "transform", "inputs": "{{ call.body }}", "depends_on": ["ask"]},
    ]})
    if status != 201:
        sys.exit(f"at_rest: storing the workflow: {status} {body}")
    status, body = api(ready, "POST", f"/v1/workflows/{body['id']}/runs", {"input": {}})
    if status != 202:
        sys.exit(f"at_rest: starting the run: {status} {body}")
    run = body["run_id"]
    wait_status(ready, run, {"WAITING"})
    status, body = api(ready, "POST", f"/v1/runs/{run}/steps/ask/complete", {"output": {"ok": True}})
    if status != 200:
        sys.exit(f"at_rest: completing the approval: {status} {body}")
    done = wait_status(ready, run, {"COMPLETED", "FAILED", "CANCELLED"})
    if done["status"] != "COMPLETED":
        sys.exit(f"at_rest: the run ended {done['status']}: {json.dumps(done)[:800]}")
    if value not in RECEIVED:
        sys.exit(f"at_rest: the service never received the secret: {RECEIVED}")
    # The run's end is delivered, signed with the endpoint's key (the tick
    # makes the delivery; the deliver function signs it).
    lam = aws(ready, "lambda")
    deadline = time.time() + 90
    while not DELIVERED and time.time() < deadline:
        event = {"detail-type": "Scheduled Event", "source": "aws.events", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "detail": {}}
        lam.invoke(FunctionName="weft-tick", Payload=json.dumps(event).encode())
        for _ in range(20):
            if DELIVERED:
                break
            time.sleep(0.25)
    if not DELIVERED:
        sys.exit("at_rest: the run's end was never delivered to the endpoint")
    try:
        standardwebhooks.Webhook(signing_key).verify(DELIVERED[0][1], DELIVERED[0][0])
    except standardwebhooks.WebhookVerificationError as e:
        sys.exit(f"at_rest: the delivery is not signed with the endpoint's key: {e}")
    api(ready, "DELETE", f"/v1/endpoints/{endpoint['id']}", None)
    server.shutdown()

    # The secret, the signing key and the key's bytes as base64 (the key
    # without its `whsec_`).
    values = [value, signing_key, signing_key.removeprefix("whsec_")]
    leaks = []
    ddb = aws(ready, "dynamodb")
    items = 0
    for page in ddb.get_paginator("scan").paginate(TableName=ready["table"]):
        for item in page["Items"]:
            items += 1
            for v in values:
                if found_in(json.dumps(item, default=str), v):
                    leaks.append(f"DynamoDB item {item.get('pk')} {item.get('sk')}")
    s3 = aws(ready, "s3")
    objects = 0
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                objects += 1
                data = s3.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
                if any(found_in(data, v) for v in values):
                    leaks.append(f"S3 object {bucket['Name']}/{obj['Key']}")
    sfn = aws(ready, "stepfunctions")
    executions = 0
    for machine in set(ready["state_machines"].values()) | {ready["state_machine_arn"]}:
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=machine):
            for e in page["executions"]:
                if not e["name"].startswith(run):
                    continue
                executions += 1
                history = sfn.get_execution_history(executionArn=e["executionArn"], maxResults=1000)
                described = sfn.describe_execution(executionArn=e["executionArn"])
                if any(found_in(json.dumps([history["events"], described], default=str), v) for v in values):
                    leaks.append(f"execution history {e['executionArn']}")
    log = Path(args.log).read_bytes() if Path(args.log).exists() else b""
    if any(found_in(log, v) for v in values):
        leaks.append(f"the functions' log {args.log}")
    if items == 0 or executions < 2 or not log:
        sys.exit(f"at_rest: too little was scanned to prove anything: {items} items, "
                 f"{executions} executions, {len(log)} log bytes")
    if leaks:
        sys.exit("at_rest: a secret was found in: " + "; ".join(leaks))
    print(f"ok  a secret used by a run and a webhook signing key are in none of {items} DynamoDB items, {objects} S3 "
          f"objects, {executions} execution histories or {len(log)} bytes of logs")


if __name__ == "__main__":
    main()
