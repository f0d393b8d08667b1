"""Where moto 5.2.5 behaves unlike AWS, and what this stack changes in it.

Every change to moto's behaviour is here, applied by `apply()`, which first
checks that the installed moto is the version these were written against
(a different version may have fixed or moved what they change: review them,
then update MOTO_VERSION and requirements.txt together).
"""

import importlib.metadata
import json
import threading
import urllib.error
import urllib.request

MOTO_VERSION = "5.2.5"


def apply(lambda_port, timeout):
    """Checks moto's version and patches it; returns the WSGI middleware to
    wrap moto's app in (`serial_dynamodb`)."""
    found = importlib.metadata.version("moto")
    if found != MOTO_VERSION:
        raise SystemExit(
            f"moto_patches.py was written for moto {MOTO_VERSION}, found {found}: "
            "review the patches, then update MOTO_VERSION and requirements.txt"
        )
    forward_invocations(lambda_port, timeout)
    mend_step_functions_integration()
    mend_stop_execution()
    return serial_dynamodb


def serial_dynamodb(app):
    """Runs DynamoDB requests one at a time, as one table's writes are
    atomic on AWS. moto copies a table without a lock, and writes the copy
    back when a transaction is cancelled: under parallel requests that was
    seen raising `dictionary changed size during iteration` (a 500) and
    resurrecting an item a refused transaction had written (a phantom run
    after concurrent identical Idempotency-Key requests)."""
    lock = threading.Lock()

    def wrapped(environ, start_response):
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return app(environ, start_response)
        with lock:
            # The answer is built inside the call; read it whole under the
            # lock too.
            return list(app(environ, start_response))

    return wrapped


def forward_invocations(lambda_port, timeout):
    """Makes moto's Lambda run functions on `cargo lambda watch`."""
    from moto.awslambda.models import LambdaFunction

    def invoke(self, body, request_headers, response_headers):
        url = (
            f"http://127.0.0.1:{lambda_port}/2015-03-31/functions/"
            f"{self.function_name}/invocations"
        )
        data = body.encode() if isinstance(body, str) else (body or b"{}")
        req = urllib.request.Request(url, data=data, method="POST")
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            # cargo lambda watch answers a function error with a 500; Lambda
            # answers 200 and says so in a header.
            payload = e.read()
            response_headers["x-amz-function-error"] = "Unhandled"
        except OSError as e:
            payload = json.dumps(
                {"errorType": "Lambda.ServiceException", "errorMessage": str(e)}
            ).encode()
            response_headers["x-amz-function-error"] = "Unhandled"
        return payload

    LambdaFunction.invoke = invoke


def mend_step_functions_integration():
    """moto's Step Functions -> Step Functions task (`states:startExecution`,
    the fast machine's hand-off) passes the state's parameter names
    (`StateMachineArn`) to boto3 as they are and hands back boto3's answer
    (`executionArn`, a datetime) as it is; AWS maps both ways. Do the same."""
    import datetime

    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
        StateTaskServiceSfn,
    )

    normalise_parameters = StateTaskServiceSfn._normalise_parameters

    def to_api(self, parameters, boto_service_name=None, service_action_name=None):
        normalise_parameters(self, parameters, boto_service_name, service_action_name)
        for k in list(parameters):
            parameters[k[:1].lower() + k[1:]] = parameters.pop(k)

    def from_api(self, response, boto_service_name=None, service_action_name=None):
        if isinstance(response, dict):
            for k in list(response):
                v = response.pop(k)
                response[k[:1].upper() + k[1:]] = (
                    v.isoformat() if isinstance(v, datetime.datetime) else v
                )

    StateTaskServiceSfn._normalise_parameters = to_api
    StateTaskServiceSfn._normalise_response = from_api


def mend_stop_execution():
    """moto keeps a stopped execution RUNNING while one of its tasks waits
    for a task token (and so still takes the token back); AWS ends it at
    once (ABORTED) and refuses its tokens from then on. Do the same."""
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.backend.execution import Execution

    stop = Execution.stop

    def stop_now(self, stop_date, error, cause):
        stop(self, stop_date, error, cause)
        self.exec_status = ExecutionStatus.ABORTED

    Execution.stop = stop_now
