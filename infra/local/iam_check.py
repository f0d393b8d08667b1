"""Checks that every AWS call is allowed by the IAM policy template.yaml gives.

The emulated AWS (moto) does not enforce IAM, so a permission missing from
template.yaml passes every local test and fails only on real AWS. This
script closes that gap at the level of actions (not resources):

- functions: each `aws call` JSON line the functions logged (`--log`) names
  the function and the call; the call's IAM actions must be allowed by that
  function's `Policies` in the template;
- state machines: each Task state of each state machine's definition (in Map
  and Parallel states too) needs an action its `Policies` must allow.

`Policies` may hold SAM policy templates, expanded with the SAM translator's
own data, and inline statements. An action is allowed when an Allow
statement's Action matches it (wildcards included) and no Deny statement's
does. Exits 1 when anything is missing, a logged function is not in the
template, a Task resource is unknown, or (with --require-calls) the log holds
no aws call at all.

    infra/local/.venv/bin/python infra/local/iam_check.py \\
        --template template.yaml --log target/emulated-aws.log --require-calls
"""

import argparse
import json
import re
import sys
from pathlib import Path

import samtranslator

from stack import ROOT, functions, template

# SDK operations whose IAM actions are named otherwise, or are several.
# A transaction's or batch's items are authorised one by one by their own
# actions; the log cannot show which kinds of item a call held, so all of
# them are required.
IAM_ACTIONS = {
    "s3:HeadObject": ["s3:GetObject"],
    "s3:ListObjectsV2": ["s3:ListBucket"],
    "dynamodb:TransactWriteItems": [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
    ],
    "dynamodb:TransactGetItems": ["dynamodb:GetItem"],
    "dynamodb:BatchWriteItem": [
        "dynamodb:BatchWriteItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
    ],
    "secretsmanager:BatchGetSecretValue": [
        "secretsmanager:BatchGetSecretValue",
        "secretsmanager:GetSecretValue",
    ],
}

# What a state machine's Task `Resource` needs.
TASK_RESOURCES = [
    (re.compile(r"arn:[\w-]+:states:::lambda:invoke(\.waitForTaskToken)?"),
     lambda m: "lambda:InvokeFunction"),
    (re.compile(r"arn:[\w-]+:states:::states:startExecution"),
     lambda m: "states:StartExecution"),
    (re.compile(r"arn:[\w-]+:states:::aws-sdk:([\w-]+):(\w+)"),
     lambda m: f"{m[1]}:{m[2][:1].upper()}{m[2][1:]}"),
]


def policy_templates():
    path = Path(samtranslator.__file__).parent / "policy_templates_data/policy_templates.json"
    return json.loads(path.read_text())["Templates"]


def statements(policies, templates):
    """The IAM statements a SAM `Policies` value stands for."""
    for p in policies if isinstance(policies, list) else [policies]:
        if isinstance(p, dict) and "Statement" in p:
            yield from p["Statement"]
        elif isinstance(p, dict) and len(p) == 1 and next(iter(p)) in templates:
            yield from templates[next(iter(p))]["Definition"]["Statement"]
        else:
            sys.exit(f"iam_check: cannot expand policy {p!r}; write its statements inline")


def action_patterns(stmts):
    """(allowed, denied): the statements' Action patterns as regexes."""
    out = {"Allow": [], "Deny": []}
    for s in stmts:
        actions = s.get("Action", [])
        for a in [actions] if isinstance(actions, str) else actions:
            regex = ".*".join(map(re.escape, a.split("*"))).replace(r"\?", ".")
            out[s["Effect"]].append(re.compile(regex, re.IGNORECASE))
    return out["Allow"], out["Deny"]


def allowed(action, patterns):
    allow, deny = patterns
    return any(p.fullmatch(action) for p in allow) and not any(p.fullmatch(action) for p in deny)


def logged_calls(log_path):
    """(function, call) of every `aws call` line in the log, in first-seen order."""
    calls = {}
    for line in Path(log_path).read_text(errors="replace").splitlines():
        start = line.find("{")  # after any prefix the log's writer adds
        try:
            event = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            continue
        fields = event.get("fields") if isinstance(event, dict) else None
        if isinstance(fields, dict) and fields.get("message") == "aws call":
            # str(): a line missing either shows as "None" and fails.
            calls[(str(fields.get("function")), str(fields.get("call")))] = None
    return list(calls)


def task_resources(definition):
    """(state name, Resource) of every Task, in Map and Parallel states too."""
    for name, state in definition.get("States", {}).items():
        if state.get("Type") == "Task":
            yield name, state["Resource"]
        for sub in [state.get("ItemProcessor"), state.get("Iterator"), *state.get("Branches", [])]:
            if sub:
                yield from task_resources(sub)


def task_action(resource):
    for regex, action in TASK_RESOURCES:
        if m := regex.fullmatch(resource):
            return action(m)
    return None


def check_functions(tpl, templates, calls):
    """Lines to print, and whether every call is allowed."""
    policies = {
        binary: action_patterns(statements(props.get("Policies", []), templates))
        for _, binary, props in functions(tpl)
    }
    lines, ok = [], True
    for function, call in calls:
        if function not in policies:
            lines.append(f"UNKNOWN  {function}  {call}  (no such function in the template)")
            ok = False
            continue
        missing = [a for a in IAM_ACTIONS.get(call, [call]) if not allowed(a, policies[function])]
        if missing and missing != [call]:
            lines.append(f"MISSING  {function}  {call}  (needs {', '.join(missing)})")
        else:
            lines.append(f"{'MISSING' if missing else 'ok':7}  {function}  {call}")
        ok = ok and not missing
    return lines, ok


def check_state_machines(tpl, templates, template_dir):
    lines, ok = [], True
    for lid, res in tpl["Resources"].items():
        if res["Type"] != "AWS::Serverless::StateMachine":
            continue
        props = res["Properties"]
        definition = props.get("Definition") or json.loads(
            (template_dir / props["DefinitionUri"]).read_text()
        )
        patterns = action_patterns(statements(props.get("Policies", []), templates))
        needs = {}
        for state, resource in task_resources(definition):
            if action := task_action(resource):
                needs.setdefault(action, []).append(state)
            else:
                lines.append(f"UNKNOWN  {lid}  {resource}  (state {state}: unknown Task resource)")
                ok = False
        for action, states in needs.items():
            good = allowed(action, patterns)
            lines.append(f"{'ok' if good else 'MISSING':7}  {lid}  {action}  (states {', '.join(states)})")
            ok = ok and good
    return lines, ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    ap.add_argument("--log", type=Path, required=True, help="the functions' log")
    ap.add_argument("--require-calls", action="store_true",
                    help="fail when the log holds no aws call")
    args = ap.parse_args(argv)

    tpl = template(args.template)
    templates = policy_templates()
    calls = logged_calls(args.log)
    fn_lines, fn_ok = check_functions(tpl, templates, calls)
    sm_lines, sm_ok = check_state_machines(tpl, templates, args.template.parent)
    print("\n".join(fn_lines + sm_lines))
    ok = fn_ok and sm_ok
    if args.require_calls and not calls:
        print(f"iam_check: {args.log} holds no aws call (is the calls' logging broken?)")
        ok = False
    print(f"iam_check: {'ok' if ok else 'FAILED'}: {len(calls)} function calls checked")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
