"""What one run of the reference workflow costs on AWS, measured on the
emulated stack: runs infra/local/reference-workflow.json (10 steps:
transforms, conditions, HTTP calls) and reports per run the state
transitions (from each execution's history), Lambda invocations and
duration, DynamoDB request units, S3/SQS/Secrets Manager requests, and the
list price of 1M such runs. A run starts on the Express machine (billed per
request and duration) and is handed to the Standard one (billed per
transition) only when it must wait; both are priced as such. Also the zipped arm64 size of each function,
when `cargo lambda build --release --arm64 --output-format zip` has made them.

Usage: infra/local/measure [--runs N] (starts its own stack), or
measure.py --ready-file F against a running infra/local/up. Also each
function's start: process start to its first request for work to the
runtime API (`--init-from target/release` times release builds). Exits
non-zero, naming the figure, when a target that does not depend on how busy
the machine is (transitions per step, price per 1M runs, zipped size) is
missed; start times are wall times, so a missed one is reported (MISS) but
fails nothing: compare them in BENCHMARKS.md, measured on a quiet machine.
"""

import argparse
import collections
import http.server
import json
import threading
import time
import urllib.request
from pathlib import Path

from stack_client import answer_json, api, aws, store_workflow

ROOT = Path(__file__).resolve().parents[2]

# us-east-1 list prices (USD), arm64 functions at the template's 256 MB.
PRICE = {
    "transition": 0.025 / 1000,
    "express_request": 1.00 / 1e6,
    "express_gb_second": 0.00001667,
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_second": 0.0000133334,
    "dynamodb_write_unit": 0.625 / 1e6,
    "dynamodb_read_unit": 0.125 / 1e6,
    "s3_put": 0.005 / 1000,
    "s3_get": 0.0004 / 1000,
    "sqs_request": 0.40 / 1e6,
    "secretsmanager_request": 0.05 / 10000,
    "http_api_request": 1.00 / 1e6,
}
MEMORY_GB = 256 / 1024
# An Express execution's memory is billed in 64 MB steps; the DAG driver's
# state (ids and one step's call) stays in the first.
EXPRESS_MEMORY_GB = 64 / 1024
TARGET_TRANSITIONS_PER_STEP = 1.5
TARGET_USD_PER_MILLION = 25
TARGET_ZIP_BYTES = 5_000_000  # 5 MB, as printed
TARGET_INIT_MS = 20


class Echo(http.server.BaseHTTPRequestHandler):
    """The reference workflow's HTTP calls land here."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        answer_json(self, {"json": json.loads(body or b"null")})

    def log_message(self, *_):
        pass


def meter(endpoint, reset=False):
    req = urllib.request.Request(
        endpoint + "/_weft/usage" + ("/reset" if reset else ""),
        method="POST" if reset else "GET",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def transitions(sfn, arn):
    n, token = 0, None
    while True:
        kw = {"executionArn": arn, "maxResults": 1000}
        if token:
            kw["nextToken"] = token
        out = sfn.get_execution_history(**kw)
        n += sum(1 for e in out["events"] if e["type"].endswith("StateEntered"))
        token = out.get("nextToken")
        if not token:
            return n


def zip_sizes():
    sizes = {}
    for z in sorted((ROOT / "target" / "lambda").glob("*/bootstrap.zip")):
        sizes[z.parent.name] = z.stat().st_size
    return sizes


class FirstPoll(http.server.BaseHTTPRequestHandler):
    """A runtime API that notes when a function first asks for work (and
    never gives it any)."""

    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next") and self.server.first is None:
            self.server.first = time.monotonic()
        self.send_response(503)
        self.end_headers()

    def log_message(self, *_):
        pass


def init_ms(binary, env, trials=7):
    """The median time from a function's process start to its first request
    for work to the runtime API (what Lambda bills as init), over `trials`."""
    import os
    import statistics
    import subprocess

    times = []
    for _ in range(trials):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FirstPoll)
        server.first = None
        threading.Thread(target=server.serve_forever, daemon=True).start()
        fenv = dict(os.environ)
        fenv.update(env)
        fenv["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{server.server_address[1]}"
        started = time.monotonic()
        proc = subprocess.Popen(
            [binary], env=fenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = started + 10
        while server.first is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.0005)
        proc.kill()
        proc.wait()
        server.shutdown()
        server.server_close()
        if server.first is None:
            raise SystemExit(f"{binary} never asked the runtime API for work")
        times.append((server.first - started) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--init-from",
        help="time the functions' start from the binaries in this directory "
        "(e.g. target/release) instead of those the stack runs",
    )
    ap.add_argument(
        "--show-items", action="store_true", help="print the stored items of the last run, with sizes"
    )
    args = ap.parse_args()
    ready = json.loads(Path(args.ready_file).read_text())
    endpoint = ready["aws_endpoint"]
    sfn = aws(ready, "stepfunctions")
    start = ready["state_machine_arn"]  # Express: every run starts here
    standard = [a for a in ready["state_machines"].values() if a != start]

    def execution(machine, name):
        return machine.replace(":stateMachine:", ":execution:") + ":" + name

    def finished(arn, wait):
        """The execution's description once it ended (None if it never
        started and `wait` is False)."""
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                d = sfn.describe_execution(executionArn=arn)
                if d["status"] != "RUNNING":
                    return d
            except sfn.exceptions.ExecutionDoesNotExist:
                if not wait:
                    return None
            time.sleep(0.1)
        raise SystemExit(f"{arn} did not finish in 2 minutes")

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{upstream.server_address[1]}"

    definition = json.loads((Path(__file__).parent / "reference-workflow.json").read_text())
    store_workflow(ready, definition, "measure.py")

    def run_once(i):
        amount = [50, 500, 5000][i % 3]
        inp = {"base": target, "email": f"Customer{i}@Example.com", "amount": amount}
        status, body = api(ready, "POST", "/v1/workflows/reference/runs", {"input": inp})
        if status != 202:
            raise SystemExit(f"starting a run: {status} {body}")
        run_id = body["run_id"]
        fast = finished(execution(start, run_id), wait=True)
        handed = [finished(execution(m, run_id), wait=False) for m in standard]
        return run_id, fast, [d for d in handed if d]

    run_once(0)  # cold starts out of the way
    meter(endpoint, reset=True)
    runs = [run_once(i) for i in range(args.runs)]
    usage = meter(endpoint)
    n = len(runs)

    steps = trans = billed = 0
    express_s = 0.0
    for run_id, fast, handed in runs:
        status, view = api(ready, "GET", f"/v1/runs/{run_id}")
        if view["status"] != "COMPLETED":
            raise SystemExit(f"run {run_id} ended {view['status']}: {view.get('error')}")
        steps += sum(1 for s in view["steps"] if s["status"] in ("succeeded", "failed"))
        trans += transitions(sfn, fast["executionArn"])
        express_s += (fast["stopDate"] - fast["startDate"]).total_seconds()
        for d in handed:
            t = transitions(sfn, d["executionArn"])
            trans += t
            billed += t

    if args.show_items:
        ddb = aws(ready, "dynamodb")
        run_id = runs[-1][0]
        for page in ddb.get_paginator("scan").paginate(TableName=ready["table"]):
            for item in page["Items"]:
                if run_id in json.dumps(item):
                    text = json.dumps(item, separators=(",", ":"))
                    print(f"{len(text):6d} {text[:3000]}")
    c = usage["counts"]
    per = lambda v: v / n  # noqa: E731
    invocations = {k.split(".", 2)[2]: per(v) for k, v in c.items() if k.startswith("lambda.invocations.")}
    lambda_s = {k: per(v) / 1000 for k, v in usage["lambda_ms"].items()}
    # The API function's start request is served outside the emulator's
    # Lambda: one invocation per run, counted here at the plan's mean time.
    mean_s = sum(lambda_s.values()) / max(1, sum(invocations.values()))
    invocations["weft-api"] = invocations.get("weft-api", 0) + 1
    lambda_s["weft-api"] = lambda_s.get("weft-api", 0) + mean_s
    fig = {
        "runs": n,
        "executed_steps": per(steps),
        "state_transitions": per(trans),
        "billed_state_transitions": per(billed),
        "express_seconds": per(express_s),
        "transitions_per_step": trans / max(1, steps),
        "lambda_invocations": invocations,
        "lambda_seconds": lambda_s,
        "dynamodb_read_units": per(c.get("dynamodb.read_units", 0)),
        "dynamodb_write_units": per(c.get("dynamodb.write_units", 0)),
        "dynamodb_requests": per(c.get("dynamodb.requests", 0)),
        "s3_put_requests": per(c.get("s3.put_requests", 0)),
        "s3_get_requests": per(c.get("s3.get_requests", 0)),
        "sqs_requests": per(c.get("sqs.requests", 0)),
        "secretsmanager_requests": per(c.get("secretsmanager.requests", 0)),
    }
    cost = {
        "step_functions_express": PRICE["express_request"]
        + fig["express_seconds"] * EXPRESS_MEMORY_GB * PRICE["express_gb_second"],
        "step_functions_std": fig["billed_state_transitions"] * PRICE["transition"],
        "lambda_requests": sum(invocations.values()) * PRICE["lambda_request"],
        "lambda_duration": sum(lambda_s.values()) * MEMORY_GB * PRICE["lambda_gb_second"],
        "dynamodb": fig["dynamodb_read_units"] * PRICE["dynamodb_read_unit"]
        + fig["dynamodb_write_units"] * PRICE["dynamodb_write_unit"],
        "s3": fig["s3_put_requests"] * PRICE["s3_put"] + fig["s3_get_requests"] * PRICE["s3_get"],
        "sqs": fig["sqs_requests"] * PRICE["sqs_request"],
        "secrets_manager": fig["secretsmanager_requests"] * PRICE["secretsmanager_request"],
        "http_api": PRICE["http_api_request"],
    }
    per_million = {k: v * 1e6 for k, v in cost.items()}
    total = sum(per_million.values())
    fig["usd_per_million_runs"] = per_million
    fig["usd_per_million_runs_total"] = total
    fig["zip_bytes"] = zip_sizes()
    fig["init_ms"] = {
        name: init_ms(
            str(Path(args.init_from) / name) if args.init_from else path,
            ready["function_env"][name],
        )
        for name, path in sorted(ready["function_binaries"].items())
    }

    ok = lambda good: "ok" if good else "MISS"  # noqa: E731
    print(f"\nReference workflow on emulated AWS: {n} runs (after one warm-up)")
    print(f"  executed steps per run        {fig['executed_steps']:.1f}")
    print(
        f"  state transitions per run     {fig['state_transitions']:.1f}"
        f"  ({fig['transitions_per_step']:.2f} per executed step; target <= "
        f"{TARGET_TRANSITIONS_PER_STEP}: {ok(fig['transitions_per_step'] <= TARGET_TRANSITIONS_PER_STEP)})"
    )
    print(
        f"  on the Standard machine       {fig['billed_state_transitions']:.1f} transitions"
        f" (billed); Express {fig['express_seconds'] * 1000:.0f} ms"
    )
    for name in sorted(invocations):
        print(
            f"  lambda {name:<16} {invocations[name]:.1f} invocations, "
            f"{lambda_s.get(name, 0) * 1000:.0f} ms"
        )
    print(
        f"  dynamodb                      {fig['dynamodb_requests']:.1f} requests, "
        f"{fig['dynamodb_read_units']:.1f} read units, {fig['dynamodb_write_units']:.1f} write units"
    )
    by = collections.defaultdict(dict)
    for k, v in c.items():
        if k.startswith("dynamodb.by."):
            label, what = k[len("dynamodb.by."):].rsplit(".", 1)
            by[label][what] = per(v)
    for label, f in sorted(by.items(), key=lambda x: -x[1].get("write_units", 0) - x[1].get("read_units", 0)):
        print(
            f"    {label:<40} {f.get('requests', 0):5.1f} requests, "
            f"{f.get('read_units', 0):5.1f} read, {f.get('write_units', 0):5.1f} write units"
        )
    fig["dynamodb_by_request"] = by
    items = collections.defaultdict(dict)
    for k, v in c.items():
        if k.startswith("dynamodb.items."):
            kind, what = k[len("dynamodb.items."):].rsplit(".", 1)
            items[kind][what] = per(v)
    for kind, f in sorted(items.items(), key=lambda x: -x[1].get("write_units", 0)):
        print(
            f"    item {kind:<35} {f.get('writes', 0):5.1f} writes, "
            f"{f.get('write_units', 0):5.1f} write units"
        )
    print(
        f"  s3 / sqs / secrets manager    {fig['s3_put_requests'] + fig['s3_get_requests']:.1f}"
        f" / {fig['sqs_requests']:.1f} / {fig['secretsmanager_requests']:.1f} requests"
    )
    print("  list price per 1M runs (USD):")
    for k, v in per_million.items():
        print(f"    {k:<18} {v:9.2f}")
    print(
        f"    {'total':<18} {total:9.2f}  (target <= {TARGET_USD_PER_MILLION:.0f}: "
        f"{ok(total <= TARGET_USD_PER_MILLION)})"
    )
    built = f"from {args.init_from}" if args.init_from else "debug builds"
    print(f"  function start, process to first request for work ({built}; target <= {TARGET_INIT_MS} ms):")
    for name, ms in fig["init_ms"].items():
        print(f"    {name:<18} {ms:6.1f} ms  {ok(ms <= TARGET_INIT_MS)}")
    if fig["zip_bytes"]:
        print("  zipped arm64 bootstrap (target <= 5 MB):")
        for name, size in fig["zip_bytes"].items():
            print(f"    {name:<18} {size / 1e6:6.2f} MB  {ok(size <= TARGET_ZIP_BYTES)}")
    else:
        print("  zipped sizes: none built (cargo lambda build --release --arm64 --output-format zip)")
    print(
        "  Lambda durations are wall times of debug builds behind the emulator:"
        " an upper bound of release builds on Lambda."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2))
    upstream.shutdown()
    missed = []
    if c.get("dynamodb.unmetered", 0):
        missed.append(
            f"{c['dynamodb.unmetered']} DynamoDB requests the meter could not size"
            " (see the stack's output): the price would be too low"
        )
    if fig["transitions_per_step"] > TARGET_TRANSITIONS_PER_STEP:
        missed.append(
            f"{fig['transitions_per_step']:.2f} state transitions per executed step"
            f" (target <= {TARGET_TRANSITIONS_PER_STEP})"
        )
    if total > TARGET_USD_PER_MILLION:
        missed.append(f"${total:.2f} per 1M runs (target <= ${TARGET_USD_PER_MILLION:.0f})")
    missed += [
        f"{name} zipped is {size / 1e6:.2f} MB (target <= {TARGET_ZIP_BYTES / 1e6:.0f} MB)"
        for name, size in fig["zip_bytes"].items()
        if size > TARGET_ZIP_BYTES
    ]
    if missed:
        raise SystemExit("measure.py: targets missed: " + "; ".join(missed))


if __name__ == "__main__":
    main()
