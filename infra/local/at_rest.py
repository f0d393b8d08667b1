"""Secrets never rest outside Secrets Manager, on the emulated AWS stack.

A workspace secret is used by an http step (sent as a header to a local
service that echoes it back in its answer, as careless services do), on a
run that also waits for an approval (so it is handed to the Standard
machine). After the run, the secret's value must appear in no DynamoDB
item, no S3 object, no Step Functions execution history (inputs, outputs,
errors of every state) and no line the functions logged. The service must
have received it (else the check would prove nothing).

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
from pathlib import Path

import stack_client
from stack_client import answer_json, api, aws

ROOT = Path(__file__).resolve().parents[2]
RECEIVED = []


class Echo(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
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
    server.shutdown()

    leaks = []
    ddb = aws(ready, "dynamodb")
    items = 0
    for page in ddb.get_paginator("scan").paginate(TableName=ready["table"]):
        for item in page["Items"]:
            items += 1
            if found_in(json.dumps(item, default=str), value):
                leaks.append(f"DynamoDB item {item.get('pk')} {item.get('sk')}")
    s3 = aws(ready, "s3")
    objects = 0
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                objects += 1
                data = s3.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
                if found_in(data, value):
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
                if found_in(json.dumps([history["events"], described], default=str), value):
                    leaks.append(f"execution history {e['executionArn']}")
    log = Path(args.log).read_bytes() if Path(args.log).exists() else b""
    if found_in(log, value):
        leaks.append(f"the functions' log {args.log}")
    if items == 0 or executions < 2 or not log:
        sys.exit(f"at_rest: too little was scanned to prove anything: {items} items, "
                 f"{executions} executions, {len(log)} log bytes")
    if leaks:
        sys.exit("at_rest: the secret was found in: " + "; ".join(leaks))
    print(f"ok  a secret used by a run is in none of {items} DynamoDB items, {objects} S3 "
          f"objects, {executions} execution histories or {len(log)} bytes of logs")


if __name__ == "__main__":
    main()
