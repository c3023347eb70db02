"""The catalog of names is the one the wiring speaks: prefect.yaml's triggers and the
automations match only catalog events and start flows that exist with the parameters they take,
and no two ledger actions or events share a value."""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from uuid import uuid4

import pytest
import yaml

from modelyard import catalog
from modelyard.catalog import ALERT_ACTIONS, ALERT_EVENTS, CHAMPION, Action, Event

PROJECT = Path(__file__).resolve().parents[2]
EVENTS = {event.value for event in Event}


def deployments() -> list[dict]:
    return yaml.safe_load((PROJECT / "prefect.yaml").read_text())["deployments"]


def flow_of(entrypoint: str) -> tuple[str, set[str]] | None:
    """The flow name and parameters of ``path.py:function``, read from the source (None if the
    file or function is missing, or the function is not a ``@flow``)."""
    path, _, function = entrypoint.partition(":")
    source = PROJECT / path
    if not source.is_file():
        return None
    for node in ast.parse(source.read_text()).body:
        if not isinstance(node, ast.FunctionDef) or node.name != function:
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            target = call.func if call else decorator
            if getattr(target, "id", getattr(target, "attr", None)) != "flow":
                continue
            names = [k.value.value for k in (call.keywords if call else []) if k.arg == "name"]
            parameters = {a.arg for a in node.args.args + node.args.kwonlyargs}
            return (names[0] if names else function.replace("_", "-")), parameters
    return None


def trigger_problems(declared: list[dict]) -> list[str]:
    """Everything in the deployments' triggers that does not match the catalog or the code."""
    problems = []
    for deployment in declared:
        name = deployment["name"]
        flow = flow_of(deployment["entrypoint"])
        if flow is None:
            problems.append(f"{name}: no flow at {deployment['entrypoint']}")
        for trigger in deployment.get("triggers", []):
            problems += [f"{name}: expects {event!r}, not a catalog Event"
                         for event in trigger.get("expect", []) if event not in EVENTS]
            alias = trigger.get("match", {}).get("mlflow.alias")
            if alias is not None and alias != CHAMPION:
                problems.append(f"{name}: matches alias {alias!r}, not {CHAMPION!r}")
            if flow is not None:
                problems += [f"{name}: passes {parameter!r}, which flow {flow[0]} does not take"
                             for parameter in trigger.get("parameters", {}) if parameter not in flow[1]]
    return problems


def deployment_name_problems(declared: list[dict]) -> list[str]:
    """Every ``*_DEPLOYMENT`` of the catalog (``flow/deployment``) must be declared in prefect.yaml."""
    known = set()
    for deployment in declared:
        flow = flow_of(deployment["entrypoint"])
        if flow is not None:
            known.add(f"{flow[0]}/{deployment['name']}")
    wanted = {name: value for name, value in vars(catalog).items() if name.endswith("_DEPLOYMENT")}
    return [f"{name} = {value!r} is not a deployment of prefect.yaml" for name, value in wanted.items()
            if value not in known]


def test_prefect_yaml_triggers_match_catalog_events_and_existing_flows():
    assert trigger_problems(deployments()) == []


def test_catalog_deployment_names_are_declared_in_prefect_yaml():
    assert deployment_name_problems(deployments()) == []


def test_the_automatic_rollback_trigger_says_so():
    rollback = next(d for d in deployments() if d["name"] == "rollback")
    assert [t["parameters"].get("automatic") for t in rollback["triggers"]] == [True]


@pytest.mark.parametrize("typo", ["event", "entrypoint", "parameter", "alias"])
def test_a_typo_in_prefect_yaml_is_caught(typo: str):
    declared = copy.deepcopy(deployments())
    with_triggers = [d for d in declared if d.get("triggers")]
    deployment = next(d for d in with_triggers if typo != "alias" or "mlflow.alias" in d["triggers"][0]["match"])
    trigger = deployment["triggers"][0]
    if typo == "event":
        trigger["expect"][0] += "d"
    elif typo == "entrypoint":
        deployment["entrypoint"] += "_"
    elif typo == "parameter":
        trigger["parameters"]["modell"] = trigger["parameters"].pop("model")
    else:
        trigger["match"]["mlflow.alias"] = "champoin"
    assert len(trigger_problems(declared)) >= 1


def test_a_catalog_deployment_missing_from_prefect_yaml_is_caught():
    declared = [d for d in deployments() if d["name"] != "monitor"]
    assert deployment_name_problems(declared) == [f"MONITOR_DEPLOYMENT = {catalog.MONITOR_DEPLOYMENT!r} "
                                                  f"is not a deployment of prefect.yaml"]


def test_the_notification_automation_expects_every_alert_and_only_catalog_events():
    from modelyard.automations import notification_automation

    expected = notification_automation(uuid4()).trigger.expect
    assert expected <= EVENTS
    assert expected == {event.value for event in ALERT_EVENTS}


@pytest.mark.parametrize("enum", [Action, Event])
def test_no_two_names_share_a_value(enum):
    # A repeated value makes the second name a silent alias of the first: count the names.
    values = [member.value for member in enum.__members__.values()]
    assert len(values) == len(set(values)), sorted(v for v in values if values.count(v) > 1)


def test_every_alert_event_has_its_own_ledger_action():
    assert set(ALERT_ACTIONS) == set(ALERT_EVENTS)
    assert len(set(ALERT_ACTIONS.values())) == len(ALERT_ACTIONS)
