"""Tests of iam_check.py, run as CI runs it: a process per check.

    infra/local/.venv/bin/python -m unittest infra/local/test_iam_check.py
"""

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REAL_TEMPLATE = HERE.parents[1] / "template.yaml"


def call(function, action):
    return json.dumps(
        {"level": "DEBUG", "fields": {"message": "aws call", "call": action, "function": function},
         "target": "aws_calls"}
    )


def function(binary, *policies):
    return {
        "Type": "AWS::Serverless::Function",
        "Metadata": {"BuildProperties": {"Binary": binary}},
        "Properties": {"Policies": list(policies)},
    }


def allow(*actions, effect="Allow"):
    return {"Statement": [{"Effect": effect, "Action": list(actions), "Resource": "*"}]}


class IamCheck(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)

    def write_template(self, resources, definitions=()):
        """A template of `resources` (JSON is YAML), state machine
        definitions beside it."""
        for name, definition in definitions:
            (self.dir / name).write_text(json.dumps(definition))
        path = self.dir / "template.yaml"
        path.write_text(json.dumps({"Resources": resources}))
        return path

    def check(self, template, log_lines, *flags):
        log = self.dir / "emulated-aws.log"
        log.write_text("\n".join(log_lines) + "\n")
        out = subprocess.run(
            [sys.executable, str(HERE / "iam_check.py"), "--template", str(template),
             "--log", str(log), *flags],
            capture_output=True, text=True,
        )
        self.assertEqual(out.stderr, "")
        return out.returncode, out.stdout

    def test_allowed_call_passes(self):
        rc, out = self.check(REAL_TEMPLATE, [
            "   Compiling weft v0.1.0",
            '{"level":"INFO","fields":{"message":"listening"}}',
            call("weft-api", "dynamodb:PutItem"),
            call("weft-plan", "dynamodb:TransactWriteItems"),
            call("weft-plan", "s3:HeadObject"),
        ], "--require-calls")
        self.assertEqual(rc, 0, out)
        self.assertIn("ok       weft-api  dynamodb:PutItem", out)
        self.assertIn("ok       weft-plan  s3:HeadObject", out)

    def test_a_write_the_policy_only_reads_is_missing(self):
        # What weft-api once had: S3ReadPolicy, yet it stores large run
        # records in S3.
        tpl = self.write_template({
            "Api": function(
                "weft-api",
                {"DynamoDBCrudPolicy": {"TableName": "t"}},
                {"S3ReadPolicy": {"BucketName": "b"}},
            ),
        })
        rc, out = self.check(tpl, [
            call("weft-api", "dynamodb:PutItem"), call("weft-api", "s3:PutObject"),
        ])
        self.assertEqual(rc, 1, out)
        self.assertIn("MISSING  weft-api  s3:PutObject", out)
        # The real template allows it.
        rc, out = self.check(REAL_TEMPLATE, [call("weft-api", "s3:PutObject")])
        self.assertEqual(rc, 0, out)

    def test_function_not_in_template_fails(self):
        rc, out = self.check(REAL_TEMPLATE, [call("weft-nope", "dynamodb:GetItem")])
        self.assertEqual(rc, 1, out)
        self.assertIn("UNKNOWN  weft-nope", out)

    def test_wildcards_match_and_only_allow_grants(self):
        tpl = self.write_template({
            "Fn": function(
                "fn",
                allow("s3:Get*", "states:*"),
                allow("secretsmanager:GetSecretValue", effect="Deny"),
            ),
            "Admin": function("admin", allow("*")),
        })
        rc, out = self.check(tpl, [
            call("fn", "s3:GetObject"),
            call("fn", "s3:HeadObject"),
            call("fn", "states:StartExecution"),
            call("fn", "s3:PutObject"),
            call("fn", "secretsmanager:GetSecretValue"),
            call("admin", "secretsmanager:GetSecretValue"),
        ])
        self.assertEqual(rc, 1, out)
        for line in [
            "ok       fn  s3:GetObject",
            "ok       fn  s3:HeadObject",
            "ok       fn  states:StartExecution",
            "MISSING  fn  s3:PutObject",
            "MISSING  fn  secretsmanager:GetSecretValue",
            "ok       admin  secretsmanager:GetSecretValue",
        ]:
            self.assertIn(line, out)

    def test_transaction_needs_every_item_action(self):
        tpl = self.write_template({
            "Fn": function("fn", allow("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")),
        })
        rc, out = self.check(tpl, [call("fn", "dynamodb:TransactWriteItems")])
        self.assertEqual(rc, 1, out)
        self.assertIn("MISSING  fn  dynamodb:TransactWriteItems  (needs dynamodb:ConditionCheckItem)", out)

    def machine(self, *policies):
        """A state machine whose Map and Parallel states hold its Tasks."""
        definition = {"StartAt": "Each", "States": {
            "Each": {"Type": "Map", "ItemProcessor": {"StartAt": "Put", "States": {
                "Put": {"Type": "Task", "Resource": "arn:aws:states:::aws-sdk:dynamodb:putItem", "End": True},
            }}, "Next": "Both"},
            "Both": {"Type": "Parallel", "End": True, "Branches": [{"StartAt": "Call", "States": {
                "Call": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken", "End": True},
            }}]},
        }}
        return self.write_template(
            {"Machine": {"Type": "AWS::Serverless::StateMachine",
                         "Properties": {"DefinitionUri": "m.asl.json", "Policies": list(policies)}}},
            [("m.asl.json", definition)],
        )

    def test_state_machine_task_missing_from_policy_fails(self):
        rc, out = self.check(self.machine({"LambdaInvokePolicy": {"FunctionName": "f"}}), [])
        self.assertEqual(rc, 1, out)
        self.assertIn("MISSING  Machine  dynamodb:PutItem  (states Put)", out)
        self.assertIn("ok       Machine  lambda:InvokeFunction  (states Call)", out)

    def test_state_machine_policy_templates_expand(self):
        rc, out = self.check(self.machine(
            {"LambdaInvokePolicy": {"FunctionName": "f"}}, {"DynamoDBCrudPolicy": {"TableName": "t"}},
        ), [])
        self.assertEqual(rc, 0, out)
        self.assertIn("ok       Machine  dynamodb:PutItem  (states Put)", out)

    def test_unknown_task_resource_fails(self):
        tpl = self.write_template(
            {"Machine": {"Type": "AWS::Serverless::StateMachine",
                         "Properties": {"DefinitionUri": "m.asl.json", "Policies": [allow("*")]}}},
            [("m.asl.json", {"StartAt": "T", "States": {
                "T": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage", "End": True}}})],
        )
        rc, out = self.check(tpl, [])
        self.assertEqual(rc, 1, out)
        self.assertIn("UNKNOWN  Machine  arn:aws:states:::sqs:sendMessage", out)

    def test_log_without_calls_fails_only_when_calls_are_required(self):
        lines = ["just text", '{"level":"INFO","fields":{"message":"started"}}']
        rc, out = self.check(REAL_TEMPLATE, lines, "--require-calls")
        self.assertEqual(rc, 1, out)
        self.assertIn("holds no aws call", out)
        rc, out = self.check(REAL_TEMPLATE, lines)
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    unittest.main()
