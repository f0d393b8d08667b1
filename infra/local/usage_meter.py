"""Counts what a stack on emulated AWS asks of each service, the way AWS
bills it: DynamoDB read/write request units (from the sizes of the items
read, and of the items written as stored, with the writes of the global
secondary indexes holding them), S3, SQS and Secrets Manager requests, Step Functions API
calls, and Lambda invocations with their duration.

stack.py wraps moto's server with `Meter`; `GET /_weft/usage` answers the
counts since the last `POST /_weft/usage/reset`.
"""

import collections
import io
import json
import math
import threading
import time
import urllib.parse


def _raw_bytes(o):
    """A binary value (`B`, as moto stores it) as a string of its length:
    DynamoDB counts a binary attribute by its bytes."""
    if isinstance(o, (bytes, bytearray)):
        return "b" * len(o)
    raise TypeError(f"cannot size a {type(o).__name__}")


def _size(v):
    """An item's size, near enough: its JSON (DynamoDB counts attribute
    names and values; the type tags make this a slight overestimate)."""
    return len(json.dumps(v, separators=(",", ":"), default=_raw_bytes).encode()) if v else 0


def _wru(n):
    return max(1, math.ceil(n / 1024))


def _rru(n, consistent):
    units = max(1, math.ceil(n / 4096))
    return units if consistent else units / 2


def _stored(table_name, item_or_key, region):
    """The item as moto now stores it, and each global index's copy of it
    (None where the item is not in that index)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import DynamoType

    table = dynamodb_backends[DEFAULT_ACCOUNT_ID][region].get_table(table_name)
    hash_key = DynamoType(item_or_key[table.hash_key_attr])
    range_key = (
        DynamoType(item_or_key[table.range_key_attr]) if table.range_key_attr else None
    )
    item = table.get_item(hash_key, range_key)
    if item is None:
        return None, []
    attrs = item.to_json()["Attributes"]
    copies = [
        index.project(item).to_json()["Attributes"]
        if all(k in attrs for k in index.schema_key_attrs)
        else None
        for index in table.global_indexes
    ]
    return attrs, copies


def _written(op, req):
    """(table, item or key) of each item a write request puts or updates."""
    if op in ("PutItem", "UpdateItem"):
        yield req["TableName"], req.get("Item") or req.get("Key")
    elif op == "BatchWriteItem":
        for table, reqs in req.get("RequestItems", {}).items():
            for x in reqs:
                if "PutRequest" in x:
                    yield table, x["PutRequest"]["Item"]
    elif op == "TransactWriteItems":
        for x in req.get("TransactItems", []):
            for kind, body in x.items():
                if kind in ("Put", "Update"):
                    yield body["TableName"], body.get("Item") or body.get("Key")


def _ident(table_name, sent):
    return table_name + json.dumps(
        {k: sent.get(k) for k in ("pk", "sk")}, sort_keys=True
    )


def index_copies_before(op, req, region):
    """What the global indexes hold of each item a write request is about
    to write (taken before moto carries it out)."""
    before = {}
    for table, sent in _written(op, req):
        try:
            before[_ident(table, sent)] = _stored(table, sent, region)[1]
        except Exception:
            pass
    return before


def _write_units(table_name, sent, region, before):
    """A write's units: the item's size as stored (an update is billed by
    the whole item, not the changed attributes), plus a write of each global
    index whose copy of the item changed (an update that leaves the index
    key and projected attributes alone does not write the index)."""
    try:
        attrs, copies = _stored(table_name, sent, region)
    except Exception:  # a failed write, or a table moto does not have
        attrs, copies = None, []
    if attrs is None:
        return _wru(_size(sent))
    old = before.get(_ident(table_name, sent)) or [None] * len(copies)
    return _wru(_size(attrs)) + sum(
        _wru(_size(c)) for c, o in zip(copies, old) if c is not None and c != o
    )


def dynamodb_units(op, req, resp, region="us-east-1", before=None, by_item=None):
    """(read units, write units) of one DynamoDB request, after moto has
    carried it out (`before`: `index_copies_before` the request); the write
    units of each kind of item are added to `by_item` if given."""
    before = before or {}
    by_item = by_item if by_item is not None else collections.Counter()
    r = w = 0.0
    if op == "DeleteItem":
        w = _wru(_size(resp.get("Attributes")) or _size(req.get("Key")))
    elif op == "TransactWriteItems":
        for x in req.get("TransactItems", []):
            for kind, body in x.items():
                # Transactions cost twice; a condition check reads.
                if kind == "ConditionCheck":
                    r += 2 * _rru(_size(body.get("Key")), True)
                elif kind == "Delete":
                    w += 2 * _wru(_size(body.get("Key")))
                else:
                    sent = body.get("Item") or body.get("Key")
                    units = 2 * _write_units(body["TableName"], sent, region, before)
                    by_item[_kind(sent)] += units
                    w += units
    elif op in ("PutItem", "UpdateItem", "BatchWriteItem"):
        for table, sent in _written(op, req):
            units = _write_units(table, sent, region, before)
            by_item[_kind(sent)] += units
            w += units
        for reqs in req.get("RequestItems", {}).values():
            w += sum(_wru(_size(x["DeleteRequest"])) for x in reqs if "DeleteRequest" in x)
    elif op == "GetItem":
        r = _rru(_size(resp.get("Item")), req.get("ConsistentRead", False))
    elif op in ("Query", "Scan"):
        total = sum(_size(i) for i in resp.get("Items", []))
        r = _rru(total, req.get("ConsistentRead", False))
    elif op == "TransactGetItems":
        for x in resp.get("Responses", []):
            r += 2 * _rru(_size(x.get("Item")), True)
    return r, w


def _kind(sent):
    """What an item is, from its sort key: the part before the first `#`
    (RUN, STEP, LOG, ...), or the whole key when it has none."""
    sk = (sent or {}).get("sk", {})
    sk = sk.get("S", "") if isinstance(sk, dict) else str(sk)
    return sk.split("#", 1)[0] or "?"


def request_kind(op, req):
    """A label for a request in the breakdown: its operation and the kinds
    of item it touches."""
    if op in ("GetItem", "DeleteItem"):
        kinds = {_kind(req.get("Key"))}
    elif op == "TransactGetItems":
        kinds = {_kind(x.get("Get", {}).get("Key")) for x in req.get("TransactItems", [])}
    elif op in ("Query", "Scan"):
        kinds = {req.get("IndexName", "table")}
    else:
        kinds = {_kind(sent) for _, sent in _written(op, req)}
        for x in req.get("TransactItems", []):
            for kind, body in x.items():
                if kind in ("ConditionCheck", "Delete"):
                    kinds.add(_kind(body.get("Key")))
    return op + ":" + "+".join(sorted(kinds))


def _region(environ):
    # Authorization: ... Credential=AKID/DATE/REGION/SERVICE/aws4_request
    scope = environ.get("HTTP_AUTHORIZATION", "").split("Credential=", 1)[-1].split("/")
    return scope[2] if len(scope) > 2 else "us-east-1"


DYNAMODB = threading.Lock()


class Meter:
    """WSGI middleware around moto's server."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.counts = collections.Counter()
        self.lambda_ms = collections.Counter()

    def snapshot(self):
        with self.lock:
            return {"counts": dict(self.counts), "lambda_ms": dict(self.lambda_ms)}

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_weft/usage"):
            if environ["REQUEST_METHOD"] == "POST":
                with self.lock:
                    self.reset()
            body = json.dumps(self.snapshot()).encode()
            start_response("200 OK", [("content-type", "application/json")])
            return [body]

        # Read the body once and hand moto a copy (chunked bodies included).
        length = environ.get("CONTENT_LENGTH")
        if length:
            raw = environ["wsgi.input"].read(int(length))
        elif environ.get("wsgi.input_terminated"):
            raw = environ["wsgi.input"].read()
        else:
            raw = b""
        environ["wsgi.input"] = io.BytesIO(raw)
        status = {}

        def capture(st, headers, exc_info=None):
            status["code"] = st
            return start_response(st, headers, exc_info)

        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith("DynamoDB_"):
            return self.serve(environ, path, raw, capture, {})
        # moto serves requests on several threads, but its tables are plain
        # dicts (reading a missing key even adds one): a transaction copying
        # a table while another request touches it failed ("dictionary
        # changed size during iteration"), and the units counted here read
        # items around the request. DynamoDB serves each request atomically;
        # so does moto, one DynamoDB request at a time.
        with DYNAMODB:
            before = {}
            try:
                op = target.split(".", 1)[1]
                before = index_copies_before(op, json.loads(raw or b"{}"), _region(environ))
            except Exception as e:
                print(f"usage_meter: {e}", flush=True)
            return self.serve(environ, path, raw, capture, before)

    def serve(self, environ, path, raw, capture, before):
        started = time.monotonic()
        out = b"".join(self.app(environ, capture))
        elapsed_ms = (time.monotonic() - started) * 1000
        try:
            self.count(environ, path, raw, out, elapsed_ms, before)
        except Exception as e:  # metering must never break a request
            print(f"usage_meter: {e}", flush=True)
        return [out]

    def count(self, environ, path, raw, out, elapsed_ms, before):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        with self.lock:
            if target.startswith("DynamoDB_"):
                op = target.split(".", 1)[1]
                req = json.loads(raw or b"{}")
                resp = json.loads(out or b"{}")
                by_item = collections.Counter()
                try:
                    r, w = dynamodb_units(op, req, resp, _region(environ), before, by_item)
                except Exception as e:
                    # Counted, so a measurement that missed requests fails
                    # instead of reporting less than AWS would bill.
                    print(f"usage_meter: {op}: {e}", flush=True)
                    self.counts["dynamodb.unmetered"] += 1
                    r = w = 0.0
                for kind, units in by_item.items():
                    self.counts[f"dynamodb.items.{kind}.write_units"] += units
                    self.counts[f"dynamodb.items.{kind}.writes"] += 1
                self.counts["dynamodb.requests"] += 1
                self.counts["dynamodb.read_units"] += r
                self.counts["dynamodb.write_units"] += w
                label = request_kind(op, req)
                self.counts[f"dynamodb.by.{label}.requests"] += 1
                self.counts[f"dynamodb.by.{label}.read_units"] += r
                self.counts[f"dynamodb.by.{label}.write_units"] += w
            elif path.startswith("/2015-03-31/functions/") and path.endswith("/invocations"):
                # A name or an ARN (…:function:NAME).
                name = urllib.parse.unquote(path.split("/")[3]).rsplit(":function:", 1)[-1]
                self.counts[f"lambda.invocations.{name}"] += 1
                self.lambda_ms[name] += elapsed_ms
            elif target.startswith("AWSStepFunctions."):
                self.counts["stepfunctions.api." + target.split(".", 1)[1]] += 1
            elif target.startswith("secretsmanager."):
                self.counts["secretsmanager.requests"] += 1
            elif "/s3/aws4_request" in auth:
                kind = "get" if environ["REQUEST_METHOD"] in ("GET", "HEAD") else "put"
                self.counts[f"s3.{kind}_requests"] += 1
            elif "/sqs/aws4_request" in auth:
                # The local stand-in for Lambda's queue pollers signs as
                # `event-source-mapping`: on AWS those polls are a fixed
                # cost of the queue, not a cost of any run.
                poller = "Credential=event-source-mapping/" in auth
                self.counts["sqs.poller_requests" if poller else "sqs.requests"] += 1
