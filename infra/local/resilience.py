"""Runs that never strand, on the emulated AWS stack.

1. A run waiting for an approval loses its execution (StopExecution); the
   approval still comes in, and the tick function (the sweeper, invoked
   here as its schedule would) resumes the run, which completes.
2. A run is started twice (Express starts are at-least-once): both
   executions run, one drives, and each step's call happens once.
3. A run's Express execution is stopped mid-run: the sweeper resumes it
   once its lease runs out.
4. A schedule's fire time, seen by the tick twice (a doubled or repeated
   EventBridge invocation), starts one run.
5. A run that ends is delivered to a webhook endpoint once, signed as
   Standard Webhooks say, by ticks that come twice; an endpoint that
   answers 503 is tried again through the delivery queue.
6. A delivery whose queue message is lost (the deliver function stopped
   half way) is handed on again by the tick and sent with its id.

A counting HTTP server stands in for the outside world. Reads the stack's
ready file (infra/local/with-stack); exits non-zero on any failure.
"""

import argparse
import datetime
import http.server
import json
import sys
import threading
import time
from collections import Counter

import stack_client
from stack_client import answer_json, api, aws, store_workflow

CALLS = Counter()
# (headers, body) of each request to /webhook.
DELIVERED = []
# The same of /webhook-flaky, which answers the first one 503.
FLAKY = []
# The webhook-id of each request to /webhook-later, which answers the first
# one 503 with Retry-After: 20.
LATER = []


class Counting(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        CALLS[self.path] += 1
        if self.path == "/webhook":
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            DELIVERED.append(({k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/webhook-later":
            self.rfile.read(int(self.headers.get("content-length", 0)))
            LATER.append(self.headers.get("webhook-id"))
            if len(LATER) == 1:
                self.send_response(503)
                self.send_header("retry-after", "20")
                self.send_header("content-length", "0")
                self.end_headers()
                return
        if self.path == "/webhook-flaky":
            self.rfile.read(int(self.headers.get("content-length", 0)))
            FLAKY.append({k.lower(): v for k, v in self.headers.items()})
            if len(FLAKY) == 1:
                self.send_response(503)
                self.send_header("content-length", "0")
                self.end_headers()
                return
        answer_json(self, {"ok": True})

    def log_message(self, *args):
        pass


def wait_status(ready, run, wanted):
    return stack_client.wait_status(ready, run, wanted, "resilience", seconds=120)


def clients(ready):
    return aws(ready, "stepfunctions"), aws(ready, "lambda")


def executions_of(sfn, machine, run):
    out = sfn.list_executions(stateMachineArn=machine)["executions"]
    return [e for e in out if e["name"].startswith(run)]


def sweep(lam, at):
    """Invokes the tick function with a scheduled event of time `at`."""
    event = {"detail-type": "Scheduled Event", "source": "aws.events", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "detail": {}}
    out = lam.invoke(FunctionName="weft-tick", Payload=json.dumps(event).encode())
    answer = json.loads(out["Payload"].read())
    if out.get("FunctionError"):
        sys.exit(f"resilience: the tick function failed: {answer}")
    return answer


def create(ready, definition):
    store_workflow(ready, definition, "resilience")


def start(ready, workflow, base):
    status, body = api(ready, "POST", f"/v1/workflows/{workflow}/runs", {"input": {"base": base}})
    if status != 202:
        sys.exit(f"resilience: starting {workflow} failed: {status} {body}")
    return body["run_id"]


def check_calls(paths):
    bad = {p: CALLS[p] for p in paths if CALLS[p] != 1}
    if bad:
        sys.exit(f"resilience: each call should happen once: {bad} (all: {dict(CALLS)})")


def stopped_approval(ready, base, sfn, lam):
    create(ready, {"id": "res_approval", "name": "approval", "steps": [
        {"id": "a", "type": "http", "method": "POST", "url": "{{ trigger.base }}/approval/a"},
        {"id": "ok", "type": "approval", "depends_on": ["a"], "timeout": "1h"},
        {"id": "b", "type": "http", "method": "POST", "url": "{{ trigger.base }}/approval/b", "depends_on": ["ok"]},
    ]})
    run = start(ready, "res_approval", base)
    wait_status(ready, run, {"WAITING"})
    driver = ready["state_machines"]["weft-local-dag-driver"]
    # The run parks its task token a moment after it is WAITING.
    time.sleep(2)
    running = [e for e in executions_of(sfn, driver, run) if e["status"] == "RUNNING"]
    if len(running) != 1:
        sys.exit(f"resilience: expected one running execution of {run}, found {running}")
    sfn.stop_execution(executionArn=running[0]["executionArn"], cause="resilience test")
    status, body = api(ready, "POST", f"/v1/runs/{run}/steps/ok/complete", {"output": {"by": "test"}})
    if status != 200:
        sys.exit(f"resilience: completing the approval failed: {status} {body}")
    now = datetime.datetime.now(datetime.timezone.utc)
    swept = sweep(lam, now + datetime.timedelta(minutes=1))
    done = wait_status(ready, run, {"COMPLETED", "FAILED", "CANCELLED"})
    if done["status"] != "COMPLETED":
        sys.exit(f"resilience: the resumed run ended {done['status']}: {json.dumps(done)[:800]}")
    check_calls(["/approval/a", "/approval/b"])
    print(f"ok  a run whose execution was stopped while it waited completes (sweep: {swept})")


def started_twice(ready, base, sfn):
    create(ready, {"id": "res_twice", "name": "twice", "steps": [
        {"id": "a", "type": "http", "method": "POST", "url": "{{ trigger.base }}/twice/a"},
        {"id": "b", "type": "http", "method": "POST", "url": "{{ trigger.base }}/twice/b"},
        {"id": "c", "type": "http", "method": "POST", "url": "{{ trigger.base }}/twice/c", "depends_on": ["a", "b"]},
    ]})
    run = start(ready, "res_twice", base)
    # The same start delivered again.
    sfn.start_execution(
        stateMachineArn=ready["state_machine_arn"],
        name=f"{run}-again",
        input=json.dumps({"workspace_id": ready["workspace_id"], "run_id": run}),
    )
    done = wait_status(ready, run, {"COMPLETED", "FAILED", "CANCELLED"})
    if done["status"] != "COMPLETED":
        sys.exit(f"resilience: the run started twice ended {done['status']}: {json.dumps(done)[:800]}")
    time.sleep(2)
    check_calls(["/twice/a", "/twice/b", "/twice/c"])
    print("ok  a run started twice calls each step once")


def stopped_mid_run(ready, base, sfn, lam):
    create(ready, {"id": "res_midrun", "name": "midrun", "steps": [
        {"id": "a", "type": "http", "method": "POST", "url": "{{ trigger.base }}/midrun/a"},
        {"id": "pause", "type": "delay", "duration": "20s", "depends_on": ["a"]},
        {"id": "b", "type": "http", "method": "POST", "url": "{{ trigger.base }}/midrun/b", "depends_on": ["pause"]},
    ]})
    run = start(ready, "res_midrun", base)
    deadline = time.time() + 60
    while CALLS["/midrun/a"] == 0 and time.time() < deadline:
        time.sleep(0.2)
    fast = ready["state_machine_arn"]
    for e in executions_of(sfn, fast, run):
        if e["status"] == "RUNNING":
            sfn.stop_execution(executionArn=e["executionArn"], cause="resilience test")
    # Nothing drives the run now; once its lease has run out, a sweep
    # hands it to a new execution.
    _, body = api(ready, "GET", f"/v1/runs/{run}")
    if body["status"] in ("COMPLETED", "FAILED"):
        sys.exit(f"resilience: the run ended before its execution was stopped: {body['status']}")
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    swept = sweep(lam, later)
    if swept.get("resumed", 0) < 1:
        sys.exit(f"resilience: the sweep resumed nothing: {swept}")
    done = wait_status(ready, run, {"COMPLETED", "FAILED", "CANCELLED"})
    if done["status"] != "COMPLETED":
        sys.exit(f"resilience: the resumed run ended {done['status']}: {json.dumps(done)[:800]}")
    check_calls(["/midrun/a", "/midrun/b"])
    # A second sweep finds nothing left to do for it.
    again = sweep(lam, later)
    if again.get("resumed", 0) != 0:
        sys.exit(f"resilience: a finished run was resumed again: {again}")
    print(f"ok  a run whose execution was stopped mid-run completes (sweep: {swept})")


def scheduled_once(ready, base, lam):
    create(ready, {"id": "res_sched", "name": "scheduled", "steps": [
        {"id": "call", "type": "http", "method": "POST", "url": f"{base}/sched", "body": {"n": "{{ trigger.n }}"}}
    ]})
    status, body = api(ready, "POST", "/v1/workflows/res_sched/schedules",
                       {"spec": "rate(1 minute)", "input": {"n": 3}})
    if status != 201:
        sys.exit(f"resilience: creating the schedule failed: {status} {body}")
    first = datetime.datetime.fromisoformat(body["next_fire_times"][0].replace("Z", "+00:00"))
    at = first + datetime.timedelta(seconds=5)
    ticks = [sweep(lam, at) for _ in range(2)]
    started = sum(t["schedules"]["started"] for t in ticks)
    if any(t["schedules"]["errors"] for t in ticks) or started < 1:
        sys.exit(f"resilience: the ticks did not fire the schedule: {ticks}")
    status, body = api(ready, "GET", "/v1/runs?workflow_id=res_sched", None)
    runs = body.get("items", []) if status == 200 else []
    if len(runs) != 1:
        sys.exit(f"resilience: one fire time should start one run: {status} {body}")
    wait_status(ready, runs[0]["run_id"], {"COMPLETED"})
    check_calls(["/sched"])
    print(f"ok  a schedule's fire time seen by two ticks starts one run (ticks: {[t['schedules'] for t in ticks]})")


def webhook_once(ready, base, lam):
    import standardwebhooks

    create(ready, {"id": "res_notify", "name": "notified", "steps": [
        {"id": "t", "type": "transform", "inputs": {"ok": True}}
    ]})
    status, ep = api(ready, "POST", "/v1/endpoints", {"url": f"{base}/webhook", "workflow_ids": ["res_notify"]})
    if status != 201:
        sys.exit(f"resilience: creating the endpoint failed: {status} {ep}")
    status, flaky = api(ready, "POST", "/v1/endpoints", {"url": f"{base}/webhook-flaky", "workflow_ids": ["res_notify"]})
    if status != 201:
        sys.exit(f"resilience: creating the endpoint failed: {status} {flaky}")
    # A function instance that read "no endpoints" trusts it for a second.
    time.sleep(1.5)
    try:
        run = start(ready, "res_notify", base)
        wait_status(ready, run, {"COMPLETED"})
        ticks = [sweep(lam, datetime.datetime.now(datetime.timezone.utc)) for _ in range(2)]
        deadline = time.time() + 30
        while not DELIVERED and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        if len(DELIVERED) != 1:
            sys.exit(f"resilience: one run's end should be delivered once: {len(DELIVERED)} (ticks: {ticks})")
        headers, body = DELIVERED[0]
        # Checked with the Standard Webhooks reference library.
        try:
            standardwebhooks.Webhook(ep["secret"]).verify(body, headers)
        except standardwebhooks.WebhookVerificationError as e:
            sys.exit(f"resilience: the delivery is not signed as Standard Webhooks say: {e} {headers}")
        forged = body.replace(b"run.completed", b"run.cancelled")
        try:
            standardwebhooks.Webhook(ep["secret"]).verify(forged, headers)
            sys.exit("resilience: a changed body verified")
        except standardwebhooks.WebhookVerificationError:
            pass
        event = json.loads(body)
        if event["type"] != "run.completed" or event["data"]["run_id"] != run:
            sys.exit(f"resilience: the delivery is not the run's end: {event}")
        print(f"ok  a run's end is delivered once, signed, by ticks that come twice (ticks: {[t.get('webhooks') for t in ticks]})")
        # The endpoint that answered 503 is tried again (held back by the
        # delivery queue about 5 s), with the same id.
        deadline = time.time() + 60
        while len(FLAKY) < 2 and time.time() < deadline:
            time.sleep(0.2)
        if len(FLAKY) != 2 or FLAKY[0]["webhook-id"] != FLAKY[1]["webhook-id"]:
            sys.exit(f"resilience: a delivery answered 503 should be tried again with its id: {FLAKY}")
        print("ok  a delivery answered 503 is tried again through the delivery queue, with the same webhook-id")
    finally:
        # Later checks (the cost measurement) run in this workspace.
        api(ready, "DELETE", f"/v1/endpoints/{ep['id']}", None)
        api(ready, "DELETE", f"/v1/endpoints/{flaky['id']}", None)


def lost_delivery_message(ready, base, lam):
    """A delivery whose queue message is lost (the deliver function stopped
    half way, or the message never reached the queue) is handed on again by
    the tick once it is two minutes overdue, and delivered with its id."""
    create(ready, {"id": "res_lost", "name": "lost", "steps": [
        {"id": "t", "type": "transform", "inputs": {"ok": True}}
    ]})
    status, ep = api(ready, "POST", "/v1/endpoints", {"url": f"{base}/webhook-later", "workflow_ids": ["res_lost"]})
    if status != 201:
        sys.exit(f"resilience: creating the endpoint failed: {status} {ep}")
    time.sleep(1.5)
    try:
        run = start(ready, "res_lost", base)
        wait_status(ready, run, {"COMPLETED"})
        sweep(lam, datetime.datetime.now(datetime.timezone.utc))
        # The first attempt (503, Retry-After: 20) is recorded; the message
        # that holds the next is then lost.
        deadline = time.time() + 60
        while True:
            status, page = api(ready, "GET", f"/v1/endpoints/{ep['id']}/deliveries", None)
            items = page.get("items") or []
            if items and len(items[0]["attempts"]) == 1 and items[0]["status"] == "pending":
                break
            if time.time() > deadline:
                sys.exit(f"resilience: the first attempt was never recorded: {page}")
            time.sleep(0.2)
        aws(ready, "sqs").purge_queue(QueueUrl=ready["queues"]["DeliveryQueue"])
        due = datetime.datetime.fromisoformat(items[0]["next_attempt_at"].replace("Z", "+00:00"))
        time.sleep(max(0.0, (due - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1)
        if len(LATER) != 1:
            sys.exit(f"resilience: the delivery was sent again before the tick handed it on: {LATER}")
        # A tick two minutes on hands it on.
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=3)
        tick = sweep(lam, later)
        deadline = time.time() + 30
        while len(LATER) < 2 and time.time() < deadline:
            time.sleep(0.2)
        if len(LATER) != 2 or LATER[0] != LATER[1]:
            sys.exit(f"resilience: a delivery whose message was lost should be sent again with its id: {LATER} (tick: {tick.get('webhooks')})")
        print(f"ok  a delivery whose queue message was lost is handed on again by the tick and sent with its id (tick: {tick.get('webhooks')})")
    finally:
        api(ready, "DELETE", f"/v1/endpoints/{ep['id']}", None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    ready = json.load(open(args.ready_file))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    sfn, lam = clients(ready)
    started_twice(ready, base, sfn)
    stopped_approval(ready, base, sfn, lam)
    stopped_mid_run(ready, base, sfn, lam)
    scheduled_once(ready, base, lam)
    webhook_once(ready, base, lam)
    lost_delivery_message(ready, base, lam)
    server.shutdown()


if __name__ == "__main__":
    main()
