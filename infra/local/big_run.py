"""One big run on the emulated AWS stack: a map of N `http` items (each a
step function invocation) and a step after it, from start to end. Reports
how long it took, the executions it used (a Standard execution continues
in a fresh one before its history is full), their state transitions and
history events, and what DynamoDB was asked for. Fails unless the run
completes with every item's result.

Usage: infra/local/with-stack bash -c \\
    'infra/local/.venv/bin/python infra/local/big_run.py --ready-file "$WEFT_STACK_READY" --items 10000'
"""

import argparse
import http.server
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import meter, transitions  # noqa: E402
from stack_client import answer_json, api, aws, store_workflow  # noqa: E402


class Echo(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"null")
        answer_json(self, {"i": body.get("i")})

    def log_message(self, *_):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=40)
    ap.add_argument("--timeout", type=int, default=7200, help="seconds")
    args = ap.parse_args()
    ready = json.loads(Path(args.ready_file).read_text())
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{upstream.server_address[1]}"

    definition = {
        "id": "big-map",
        "name": "Big map",
        "steps": [
            {
                "id": "each",
                "type": "map",
                "items": "{{ trigger.xs }}",
                "concurrency": args.concurrency,
                "step": {
                    "id": "call",
                    "type": "http",
                    "method": "POST",
                    "url": "{{ trigger.base }}/echo",
                    "body": {"i": "{{ item }}"},
                },
                "output": "{{ call.body.i }}",
            },
            {"id": "total", "type": "transform", "expression": "each | sum"},
        ],
    }
    store_workflow(ready, definition, "big_run.py")
    endpoint = ready["aws_endpoint"]
    meter(endpoint, reset=True)
    xs = list(range(args.items))
    started = time.time()
    status, body = api(ready, "POST", "/v1/workflows/big-map/runs", {"input": {"base": base, "xs": xs}})
    if status != 202:
        sys.exit(f"big_run.py: starting the run: {status} {body}")
    run_id = body["run_id"]
    view, last = None, 0.0
    while time.time() - started < args.timeout:
        # The listing: the run without its steps (reading a big run's steps
        # on every poll would load the stack being measured).
        _, page = api(ready, "GET", "/v1/runs?workflow_id=big-map&limit=5")
        view = next((r for r in page["items"] if r["run_id"] == run_id), {"status": "?"})
        if view["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            break
        if time.time() - last > 60:
            last = time.time()
            print(f"  {time.time() - started:6.0f} s  {view['status']}", flush=True)
        time.sleep(2)
    took = time.time() - started
    usage = meter(endpoint)
    if view["status"] == "COMPLETED":
        _, view = api(ready, "GET", f"/v1/runs/{run_id}")
    sfn = aws(ready, "stepfunctions")
    executions = []
    for machine in ready["state_machines"].values():
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=machine):
            executions += [e for e in page["executions"] if run_id in e["name"] or run_id in e["executionArn"]]
    events = {e["name"]: transitions(sfn, e["executionArn"]) for e in executions}
    c = usage["counts"]
    print(f"A map of {args.items} http items (concurrency {args.concurrency}) on emulated AWS:")
    print(f"  run {run_id}: {view['status']} in {took:.0f} s")
    print(f"  executions: {len(executions)}, state transitions {sum(events.values())}"
          f" (largest history {max(events.values(), default=0)})")
    lambdas = {k.split(".", 2)[2]: v for k, v in c.items() if k.startswith("lambda.invocations.")}
    print(f"  lambda invocations: {json.dumps(lambdas, sort_keys=True)}")
    print(f"  dynamodb: {c.get('dynamodb.requests', 0):.0f} requests, "
          f"{c.get('dynamodb.read_units', 0):.0f} read units, {c.get('dynamodb.write_units', 0):.0f} write units")
    upstream.shutdown()
    if view["status"] != "COMPLETED":
        sys.exit(f"big_run.py: the run ended {view['status']}: {json.dumps(view.get('error'))}")
    if view.get("output") != sum(xs):
        sys.exit(f"big_run.py: the output is {view.get('output')}, not {sum(xs)}")


if __name__ == "__main__":
    main()
