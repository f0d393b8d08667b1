"""Weft's AWS stack on this machine, without Docker or an AWS account.

Starts moto's server (DynamoDB, S3, Secrets Manager, IAM, Lambda, Step
Functions with state-machine execution on), creates the stack's resources as
template.yaml declares them, and forwards every Lambda invocation moto makes
(the state machine's tasks, direct invokes) to `cargo lambda watch`, which
runs the real function binaries. Then creates a workspace through the admin
function and prints the API's base URL and key.

Run it with infra/local/up. Everything listens on 127.0.0.1 only.
"""

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = "weft-local"
# Function instances started per function (Lambda would scale them).
INSTANCES = {"weft-api": 4, "weft-plan": 6, "weft-step-http": 6, "weft-step-llm": 3, "weft-admin": 1, "weft-tick": 1, "weft-trigger": 1, "weft-deliver": 2}


def template(path=ROOT / "template.yaml"):
    """template.yaml, with CloudFormation's short tags read as plain data."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def tag(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return {suffix: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {suffix: loader.construct_sequence(node, deep=True)}
        return {suffix: loader.construct_mapping(node, deep=True)}

    Loader.add_multi_constructor("!", tag)
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


def functions(tpl):
    """(logical id, binary name, properties) of every function."""
    for lid, res in tpl["Resources"].items():
        if res["Type"] == "AWS::Serverless::Function":
            yield lid, res["Metadata"]["BuildProperties"]["Binary"], res["Properties"]


def start_runtime_relay(lambda_port):
    """A relay between the functions and `cargo lambda watch`'s runtime API.

    cargo lambda answers a function's posted result before it has read the
    result's body, and loses the body if the function's connection closes
    first: now and then a function's answer became a 500 (seen with answers
    of tens of KB). The relay reads each request whole and forwards it on
    connections it keeps open, so cargo lambda always reads the body.
    Returns the relay's port (127.0.0.1).
    """
    import http.client
    import http.server
    import queue
    import threading

    idle = queue.SimpleQueue()  # open connections to cargo lambda
    skip = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}

    class Relay(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def body(self):
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            n = int(self.headers.get("content-length") or 0)
            return self.rfile.read(n) if n else None

        def forward(self):
            data = self.body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            try:
                conn, reused = idle.get_nowait(), True
            except queue.Empty:
                conn, reused = http.client.HTTPConnection("127.0.0.1", lambda_port), False
            try:
                conn.request(self.command, self.path, body=data, headers=headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # An idle connection cargo lambda had closed: nothing was sent.
                conn = http.client.HTTPConnection("127.0.0.1", lambda_port)
                conn.request(self.command, self.path, body=data, headers=headers)
                resp = conn.getresponse()
            answer = resp.read()
            idle.put(conn)
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in skip and k.lower() != "date":
                    self.send_header(k, v)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def start_ticks(lam, every):
    """Invokes the tick function every `every` seconds with a scheduled
    event, as the stack's EventBridge rule does on AWS."""
    import threading

    def loop():
        while True:
            time.sleep(every)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            event = {"detail-type": "Scheduled Event", "source": "aws.events", "time": now, "detail": {}}
            try:
                out = lam.invoke(FunctionName="weft-tick", Payload=json.dumps(event).encode())
                answer = out["Payload"].read().decode()
                if out.get("FunctionError"):
                    print(f"stack.py: the tick failed: {answer}", file=sys.stderr, flush=True)
            except Exception as e:  # the stack goes on; the next tick tries again
                print(f"stack.py: invoking the tick: {e}", file=sys.stderr, flush=True)

    threading.Thread(target=loop, daemon=True).start()


def start_queue_pollers(tpl, names, lam, sqs):
    """Feeds each function its SQS events as Lambda's event source mapping
    does (moto's own invokes once, at send time, and ignores partial batch
    failures): receives up to the batch size with the queue's visibility
    timeout, invokes the function, and deletes what it did not report
    failed. A failed message is received again once its visibility timeout
    passes, and goes to the dead-letter queue after maxReceiveCount."""
    import threading

    def loop(binary, lid, url, arn, batch):
        while True:
            try:
                got = sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=batch,
                    WaitTimeSeconds=1,
                    AttributeNames=["All"],
                ).get("Messages", [])
                if not got:
                    continue
                records = [
                    {
                        "messageId": m["MessageId"],
                        "receiptHandle": m["ReceiptHandle"],
                        "body": m["Body"],
                        "md5OfBody": m["MD5OfBody"],
                        "attributes": m.get("Attributes", {}),
                        "messageAttributes": {},
                        "eventSource": "aws:sqs",
                        "eventSourceARN": arn,
                        "awsRegion": REGION,
                    }
                    for m in got
                ]
                out = lam.invoke(FunctionName=binary, Payload=json.dumps({"Records": records}).encode())
                answer = json.loads(out["Payload"].read() or b"{}")
                if out.get("FunctionError"):
                    print(f"stack.py: {binary} failed a batch: {answer}", file=sys.stderr, flush=True)
                    continue
                failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures") or []}
                done = [m for m in got if m["MessageId"] not in failed]
                if done:
                    sqs.delete_message_batch(
                        QueueUrl=url,
                        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                    )
            except Exception as e:  # the poller goes on, as Lambda's does
                print(f"stack.py: polling {lid} for {binary}: {e}", file=sys.stderr, flush=True)
                time.sleep(1)

    for _, binary, props in functions(tpl):
        for ev in props.get("Events", {}).values():
            if ev["Type"] != "SQS":
                continue
            lid = ev["Properties"]["Queue"]["GetAtt"].split(".")[0]
            args = (binary, lid, names["queues"][lid], names["queue_arns"][lid], ev["Properties"].get("BatchSize", 10))
            threading.Thread(target=loop, args=args, daemon=True).start()


def tiny_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n# run by cargo lambda watch instead\n")
    return buf.getvalue()


def stack_sub(text):
    """A template `!Sub` string with this stack's name (other ${...} left)."""
    return text.replace("${AWS::StackName}", STACK)


def create_resources(tpl, endpoint):
    """The stack's resources, named as the functions' environment says."""
    import boto3

    kw = dict(
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    res = tpl["Resources"]
    names = {
        "table": f"{STACK}-table",
        "bucket": f"{STACK}-payloads",
    }

    t = res["Table"]["Properties"]
    ddb = boto3.client("dynamodb", **kw)
    ddb.create_table(
        TableName=names["table"],
        BillingMode=t["BillingMode"],
        AttributeDefinitions=t["AttributeDefinitions"],
        KeySchema=t["KeySchema"],
        GlobalSecondaryIndexes=t["GlobalSecondaryIndexes"],
        SSESpecification={"Enabled": t["SSESpecification"]["SSEEnabled"]},
    )
    ddb.update_time_to_live(
        TableName=names["table"],
        TimeToLiveSpecification={
            "AttributeName": t["TimeToLiveSpecification"]["AttributeName"],
            "Enabled": True,
        },
    )
    s3 = boto3.client("s3", **kw)
    s3.create_bucket(Bucket=names["bucket"])

    # Queues, each after its dead-letter queue.
    sqs = boto3.client("sqs", **kw)
    queues = {lid: r["Properties"] for lid, r in res.items() if r["Type"] == "AWS::SQS::Queue"}
    names["queues"], arns_of = {}, {}
    while len(names["queues"]) < len(queues):
        for lid, q in queues.items():
            redrive = q.get("RedrivePolicy")
            dlq = redrive and redrive["deadLetterTargetArn"]["GetAtt"].split(".")[0]
            if lid in names["queues"] or (dlq and dlq not in arns_of):
                continue
            attrs = {
                k: str(q[k]) for k in ("VisibilityTimeout", "MessageRetentionPeriod") if k in q
            }
            if redrive:
                attrs["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": arns_of[dlq], "maxReceiveCount": redrive["maxReceiveCount"]}
                )
            url = sqs.create_queue(QueueName=f"{STACK}-{lid}", Attributes=attrs)["QueueUrl"]
            names["queues"][lid] = url
            arns_of[lid] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
    names["queue_arns"] = arns_of

    iam = boto3.client("iam", **kw)
    role = iam.create_role(
        RoleName=f"{STACK}-role",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {
                            "Service": ["lambda.amazonaws.com", "states.amazonaws.com"]
                        },
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]

    lam = boto3.client("lambda", **kw)
    arns = {}
    code = tiny_zip()
    for lid, binary, props in functions(tpl):
        arns[lid] = lam.create_function(
            FunctionName=binary,
            Runtime=tpl["Globals"]["Function"]["Runtime"],
            Role=role,
            Handler="bootstrap",
            Code={"ZipFile": code},
            Timeout=props.get("Timeout", tpl["Globals"]["Function"]["Timeout"]),
            Architectures=tpl["Globals"]["Function"]["Architectures"],
        )["FunctionArn"]

    # The state machines, each after those its definition names (the fast
    # one hands runs off to dag-driver).
    sfn = boto3.client("stepfunctions", **kw)
    machines = {}  # logical id -> arn
    pending = {
        lid: r["Properties"]
        for lid, r in res.items()
        if r["Type"] == "AWS::Serverless::StateMachine"
    }
    while pending:
        ready = [
            lid
            for lid, sm in pending.items()
            if all(
                "GetAtt" in v or v.get("Ref") in machines
                for v in sm.get("DefinitionSubstitutions", {}).values()
            )
        ]
        if not ready:
            sys.exit(f"stack.py: cannot order the state machines {sorted(pending)}")
        for lid in ready:
            sm = pending.pop(lid)
            definition = (ROOT / sm["DefinitionUri"]).read_text()
            for name, value in sm.get("DefinitionSubstitutions", {}).items():
                arn = arns[value["GetAtt"].split(".")[0]] if "GetAtt" in value else machines[value["Ref"]]
                definition = definition.replace("${" + name + "}", arn)
            machines[lid] = sfn.create_state_machine(
                name=stack_sub(sm["Name"]["Sub"]),
                definition=definition,
                roleArn=role,
                type=sm["Type"],
            )["stateMachineArn"]
    # The machine runs start on: the one the API function's environment names.
    start = stack_sub(res["ApiFunction"]["Properties"]["Environment"]["Variables"]["WEFT_STATE_MACHINE_ARN"]["Sub"])
    by_name = {arn.rsplit(":", 1)[1]: arn for arn in machines.values()}
    names["state_machine_arn"] = by_name[start.rsplit(":", 1)[1]]
    names["state_machines"] = by_name
    names["functions"] = arns
    return names


def function_env(tpl, names, endpoint, egress_allow):
    """The functions' environment: what template.yaml sets, with this
    stack's values, plus what points the SDK at the emulator."""
    binary_of = {lid: binary for lid, binary, _ in functions(tpl)}
    step_functions = ",".join(
        f"{ty}={binary_of[lid]}"
        for ty, lid in (("http", "HttpStepFunction"), ("llm", "LlmStepFunction"))
    )
    values = {
        "WEFT_TABLE": names["table"],
        "WEFT_BUCKET": names["bucket"],
        "WEFT_SECRET_PREFIX": f"weft/{STACK}/",
        # Each AWS call as a debug line, for infra/local/iam_check.py.
        "WEFT_LOG": os.environ.get("WEFT_LOG", "info,aws_calls=debug"),
        "WEFT_STATE_MACHINE_ARN": names["state_machine_arn"],
        "WEFT_DRIVER_ARN": names["state_machines"][f"{STACK}-dag-driver"],
        "WEFT_STEP_FUNCTIONS": step_functions,
        "WEFT_HOOK_QUEUE_URL": names["queues"]["HookQueue"],
        "WEFT_DELIVERY_QUEUE_URL": names["queues"]["DeliveryQueue"],
        "WEFT_METRICS_NAMESPACE": f"Weft/{STACK}",
        # The suites poll from many tasks at once: limits they do not meet
        # (the deployment's default is template.yaml's RateLimits; keys
        # with their own lower rate are what tests reach).
        "WEFT_RATE_LIMITS": os.environ.get(
            "WEFT_STACK_RATE_LIMITS", "workspace=100000/100000,key=100000/100000"
        ),
    }
    wanted = set(tpl["Globals"]["Function"]["Environment"]["Variables"])
    for _, _, props in functions(tpl):
        wanted |= set(props.get("Environment", {}).get("Variables", {}))
    missing = wanted - set(values)
    if missing:
        sys.exit(f"stack.py: no local value for {sorted(missing)} (template.yaml changed)")
    env = {k: values[k] for k in sorted(wanted)}
    env.update(
        {
            "WEFT_AWS_ENDPOINT": endpoint,
            "WEFT_EGRESS_ALLOW": egress_allow,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    )
    return env


def wait_for_port(port, what, proc=None, seconds=900):
    import socket

    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"stack.py: {what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"stack.py: {what} did not open port {port}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=4566, help="moto's port")
    ap.add_argument("--lambda-port", type=int, default=9000, help="cargo lambda watch's port")
    ap.add_argument("--ready-file", help="where to write the API URL and key as JSON")
    ap.add_argument(
        "--egress-allow",
        default=os.environ.get("WEFT_EGRESS_ALLOW", ""),
        help="internal ranges http steps may reach (e.g. 127.0.0.0/8)",
    )
    ap.add_argument(
        "--tick-every",
        type=float,
        default=0,
        help="invoke the tick function every this many seconds, as the EventBridge rule does on AWS "
        "(moto's rules never fire); 0: never (the checks invoke it themselves, at the times they choose)",
    )
    args = ap.parse_args()
    if args.ready_file:
        Path(args.ready_file).unlink(missing_ok=True)
    # One line per emulated AWS request is noise here.
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    endpoint = f"http://127.0.0.1:{args.port}"
    # moto's state machines call Lambda through the server itself.
    os.environ["MOTO_PORT"] = str(args.port)
    from moto.core.config import default_user_config
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    import moto_patches
    from usage_meter import Meter

    class MeteredServer(ThreadedMotoServer):
        """moto's server with every request metered (GET /_weft/usage)."""

        def _server_entry(self):
            app = Meter(serial(DomainDispatcherApplication(create_backend_app)))
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    serial = moto_patches.apply(args.lambda_port, timeout=960)
    server = MeteredServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()

    tpl = template()
    names = create_resources(tpl, endpoint)
    env = function_env(tpl, names, endpoint, args.egress_allow)

    binaries = [b for _, b, _ in functions(tpl)]
    print(f"stack.py: building {', '.join(binaries)}", file=sys.stderr, flush=True)
    build = ["cargo", "build", "--locked"] + [a for b in binaries for a in ("-p", b)]
    subprocess.run(build, cwd=ROOT, check=True)
    cargo_lambda = Path(sys.executable).parent / "cargo-lambda"
    # cargo lambda watch serves the Lambda APIs (invoke, runtime, function
    # URLs); the functions are the binaries just built, several instances
    # each so parallel steps run in parallel, as on Lambda.
    watch = subprocess.Popen(
        [
            str(cargo_lambda), "lambda", "watch", "--only-lambda-apis",
            "--invoke-address", "127.0.0.1",
            "--invoke-port", str(args.lambda_port),
        ],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    children = [watch]

    def stop(signum=None, _frame=None, status=0):
        """Stops every process; exits with `status` (0 when asked to stop by
        a signal, non-zero when the stack itself failed)."""
        for p in reversed(children):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in children:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        server.stop()
        sys.exit(status)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    wait_for_port(args.lambda_port, "cargo lambda watch", watch)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    relay_port = start_runtime_relay(args.lambda_port)
    envs = {}
    for binary in binaries:
        fenv = dict(os.environ)
        fenv.update(env)
        fenv.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": binary,
                "AWS_LAMBDA_FUNCTION_VERSION": "1",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
                "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{relay_port}/.rt/{binary}",
            }
        )
        for _ in range(INSTANCES.get(binary, 2)):
            children.append(
                subprocess.Popen([str(target / binary)], env=fenv, start_new_session=True)
            )
            envs[binary] = fenv

    import boto3

    lam = boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=__import__("botocore.config").config.Config(read_timeout=900),
    )
    request = {"action": "create_workspace", "name": "Local"}
    if os.environ.get("WEFT_DEV_API_KEY"):
        request["api_key"] = os.environ["WEFT_DEV_API_KEY"]
    out = lam.invoke(FunctionName="weft-admin", Payload=json.dumps(request).encode())
    answer = json.loads(out["Payload"].read())
    if out.get("FunctionError"):
        print(f"stack.py: creating the workspace failed: {answer}", file=sys.stderr)
        stop(status=1)
    # A second workspace, for the tests that check one cannot see another.
    out = lam.invoke(
        FunctionName="weft-admin",
        Payload=json.dumps({"action": "create_workspace", "name": "Other"}).encode(),
    )
    other = json.loads(out["Payload"].read())
    if out.get("FunctionError"):
        print(f"stack.py: creating the second workspace failed: {other}", file=sys.stderr)
        stop(status=1)
    api = f"http://127.0.0.1:{args.lambda_port}/lambda-url/weft-api"
    ready = {
        "api_url": api,
        "api_key": answer["api_key"],
        "other_api_key": other["api_key"],
        "workspace_id": answer["workspace_id"],
        "aws_endpoint": endpoint,
        "lambda_port": args.lambda_port,
        "state_machine_arn": names["state_machine_arn"],
        "state_machines": names["state_machines"],
        "table": names["table"],
        "queues": names["queues"],
        # What starting another instance of a function takes (measure.py
        # times each function's start with it).
        "function_env": {
            b: {k: v for k, v in envs[b].items() if k in env or k.startswith("AWS_LAMBDA_FUNCTION")}
            for b in envs
        },
        "function_binaries": {b: str(target / b) for b in envs},
    }
    if args.ready_file:
        Path(args.ready_file).write_text(json.dumps(ready))
    print(
        f"\nWeft on emulated AWS is up (Ctrl-C stops it).\n"
        f"  export WEFT_URL={api}\n"
        f"  export WEFT_KEY={answer['api_key']}\n"
        f"  curl -H \"authorization: Bearer $WEFT_KEY\" $WEFT_URL/v1/health\n",
        flush=True,
    )
    if args.tick_every > 0:
        start_ticks(lam, args.tick_every)
    start_queue_pollers(
        tpl,
        names,
        lam,
        boto3.client(
            "sqs",
            endpoint_url=endpoint,
            region_name=REGION,
            # Named so the usage meter leaves its polls out (usage_meter.py).
            aws_access_key_id="event-source-mapping",
            aws_secret_access_key="testing",
        ),
    )
    # A function instance that exits is replaced, as Lambda replaces one
    # that crashed; one that keeps exiting fails the stack. cargo lambda
    # watch exiting fails it at once.
    restarts = {}
    while True:
        for i, p in enumerate(children):
            if p.poll() is None:
                continue
            name = Path(p.args[0]).name
            print(f"stack.py: {name} exited with {p.returncode}", file=sys.stderr, flush=True)
            if p is watch:
                stop(status=1)
            now = time.monotonic()
            recent = [t for t in restarts.get(name, []) if now - t < 60] + [now]
            restarts[name] = recent
            if len(recent) > 10:
                print(f"stack.py: {name} exited 10 times in a minute", file=sys.stderr)
                stop(status=1)
            children[i] = subprocess.Popen(
                [str(p.args[0])], env=envs[name], start_new_session=True
            )
        time.sleep(0.5)


if __name__ == "__main__":
    main()
