"""Organisation policy as code: whether a version may be promoted into an environment, decided by
the org-wide Rego policy (``policies/org.rego``) plus, optionally, the spec's own policy.

Both are evaluated in-process with regopy (the rego-cpp binding), each in its own interpreter, so
a spec's policy can add denials but never touch the organisation's rules. A policy answers with
a set ``deny`` in its package (``modelyard.org``, ``modelyard.spec``): strings, or objects
``{"rule": ..., "reason": ...}``. The promotion is allowed when both sets are empty.

It fails closed: a policy file that is missing, unreadable or does not compile, a rule that
errs while evaluating (built-in errors are errors, not silently undefined), or an answer of any
other shape raises ``PolicyError``; no path through here allows by default. The decision
carries the exact input document, its sha256 and each policy file's sha256, for the ledger.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from regopy import Bundle, Interpreter, LogLevel, RegoError
from regopy.rego_shared import (
    NodeKind,
    rego_bundle_query_entrypoint,
    rego_free_output,
    rego_node_get,
    rego_node_size,
    rego_node_type,
    rego_node_value,
    rego_output_node,
    rego_output_ok,
    rego_output_string,
)

from modelyard.names import check_model_name, check_version
from modelyard.settings import PROJECT_DIR

__all__ = [
    "ALERT_KINDS", "APPROVAL_DECISIONS", "DEFAULT_ORG_POLICY", "ENVIRONMENTS", "PACKAGES", "Alert",
    "Approval", "Denial", "Evaluation", "Policy", "PolicyDecision", "PolicyError", "PolicyProblem",
    "PromotionInput", "Signature", "decide", "evaluate", "evaluate_document", "load_policy",
]

DEFAULT_ORG_POLICY = PROJECT_DIR / "policies" / "org.rego"
# The package each kind of policy must declare; its `deny` set is what is read.
PACKAGES = {"org": "modelyard.org", "spec": "modelyard.spec"}
ENVIRONMENTS = ("dev", "staging", "production")
ALERT_KINDS = ("drift", "data", "performance", "service")
APPROVAL_DECISIONS = ("approve", "reject")
# The rule name given to a denial a policy writes as a plain string.
PLAIN_DENIAL_RULE = "deny"


# -- errors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyProblem:
    """One thing rego-cpp reported, with where in the policy file when it says so."""

    message: str
    line: int | None = None
    column: int | None = None


class PolicyError(RuntimeError):
    """A policy could not decide: missing, unreadable, not compiling, failing while evaluating,
    or answering in an unexpected shape. A promotion that meets one stops; it is never allowed."""

    def __init__(self, path: Path | str, what: str, problems: tuple[PolicyProblem, ...] = ()) -> None:
        self.path = str(path)
        self.problems = problems
        self.line = next((p.line for p in problems if p.line is not None), None)
        detail = "; ".join(
            f"{self.path}:{p.line}:{p.column}: {p.message}" if p.line is not None else p.message for p in problems
        )
        super().__init__(f"{what}: {detail}" if detail else what)


# -- the input ----------------------------------------------------------------------------------


def _text(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field_name}: {value!r} is not a non-empty string")
    return value


def _one_of(value: object, allowed: tuple[str, ...], field_name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{field_name}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _timestamp(value: object, field_name: str) -> str:
    try:
        datetime.fromisoformat(_text(value, field_name))
    except ValueError:
        raise ValueError(f"{field_name}: {value!r} is not an ISO 8601 time") from None
    return str(value)


def _number(value: object, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field_name}: {value!r} is not a finite number")
    return value


@dataclass(frozen=True)
class Approval:
    """A person's decision on a promotion: an authenticated identity, approve or reject, and why."""

    identity: str
    decision: str  # approve | reject
    comment: str
    time: str  # ISO 8601

    def __post_init__(self) -> None:
        _text(self.identity, "approval.identity")
        _one_of(self.decision, APPROVAL_DECISIONS, "approval.decision")
        if not isinstance(self.comment, str):
            raise ValueError(f"approval.comment: {self.comment!r} is not a string")
        _timestamp(self.time, "approval.time")


@dataclass(frozen=True)
class Signature:
    """Whether the version's signature verified, and by whom."""

    valid: bool
    signer: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.valid, bool):
            raise ValueError(f"signature.valid: {self.valid!r} is not a boolean")
        if self.signer is not None and not isinstance(self.signer, str):
            raise ValueError(f"signature.signer: {self.signer!r} is not a string or None")


@dataclass(frozen=True)
class Alert:
    """An alert still open on the model."""

    kind: str  # drift | data | performance | service
    opened_at: str  # ISO 8601

    def __post_init__(self) -> None:
        _one_of(self.kind, ALERT_KINDS, "alert.kind")
        _timestamp(self.opened_at, "alert.opened_at")


@dataclass(frozen=True)
class Evaluation:
    """The candidate's score on the spec's metric against the champion's (None: no champion)."""

    metric: str
    candidate: float
    champion: float | None
    higher_is_better: bool

    def __post_init__(self) -> None:
        _text(self.metric, "evaluation.metric")
        _number(self.candidate, "evaluation.candidate")
        if self.champion is not None:
            _number(self.champion, "evaluation.champion")
        if not isinstance(self.higher_is_better, bool):
            raise ValueError(f"evaluation.higher_is_better: {self.higher_is_better!r} is not a boolean")


@dataclass(frozen=True)
class PromotionInput:
    """What a policy decides on: one version of one model going into one environment."""

    model: str
    version: str
    environment: str  # dev | staging | production
    author: str  # who trained (or asked for the training of) the version
    signature: Signature
    approvals: tuple[Approval, ...] = ()
    open_alerts: tuple[Alert, ...] = ()
    evaluation: Evaluation | None = None  # None: no evaluation recorded (production denies)
    extra: dict[str, Any] = field(default_factory=dict)  # anything a spec policy needs beyond the above
    # Who asked for this promotion (None: automation). Four-eyes excludes them as it does the
    # author: otherwise one person could request a promotion and approve it.
    requested_by: str | None = None

    def __post_init__(self) -> None:
        check_model_name(self.model)
        object.__setattr__(self, "version", check_version(self.version))
        _one_of(self.environment, ENVIRONMENTS, "environment")
        _text(self.author, "author")
        if self.requested_by is not None:
            _text(self.requested_by, "requested_by")
        if not isinstance(self.signature, Signature):
            raise ValueError(f"signature: {self.signature!r} is not a Signature")
        object.__setattr__(self, "approvals", _items(self.approvals, Approval, "approvals"))
        object.__setattr__(self, "open_alerts", _items(self.open_alerts, Alert, "open_alerts"))
        if self.evaluation is not None and not isinstance(self.evaluation, Evaluation):
            raise ValueError(f"evaluation: {self.evaluation!r} is not an Evaluation or None")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra: {self.extra!r} is not a dict")
        self.to_json()  # extra must be JSON, with no NaN or infinity

    def as_dict(self) -> dict[str, Any]:
        """The input document a policy sees (``input`` in Rego)."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """The input document as compact, key-sorted JSON: what is evaluated and digested."""
        try:
            return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"extra: not JSON-serialisable ({error})") from None


def _items(values: object, kind: type, field_name: str) -> tuple:
    if not isinstance(values, list | tuple) or not all(isinstance(v, kind) for v in values):
        raise ValueError(f"{field_name}: must be a list of {kind.__name__}")
    return tuple(values)


# -- policies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """One Rego policy file, read once, digested and compiled from the same bytes."""

    role: str  # org | spec
    path: Path
    sha256: str
    _bundle: Bundle = field(repr=False, compare=False)
    # rego-cpp documents no thread safety for sharing a compiled bundle between interpreters.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def package(self) -> str:
        return PACKAGES[self.role]

    @property
    def entrypoint(self) -> str:
        return _entrypoint(self.role)

    def as_record(self) -> dict[str, str]:
        return {"role": self.role, "path": str(self.path), "sha256": self.sha256}


def load_policy(path: Path, role: str = "org") -> Policy:
    """The policy at ``path`` compiled, or PolicyError naming the file (and line) that stops it."""
    _one_of(role, tuple(PACKAGES), "role")
    path = Path(path)
    what = f"{role} policy {path}"
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(path, f"{what}: file not found; promotions stop until it is there") from None
    except OSError as error:
        raise PolicyError(path, f"{what}: cannot be read ({error.strerror or error})") from None
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyError(path, f"{what}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    compiler = Interpreter()
    compiler.log_level = LogLevel.NONE  # rego-cpp prints compile errors to stdout; they go into PolicyError
    try:
        compiler.add_module(path.name, text)
        bundle = compiler.build(None, [_entrypoint(role)])
    except RegoError as error:
        raise PolicyError(path, f"{what} does not compile", _compile_problems(str(error), source)) from None
    if not bundle.ok():
        raise PolicyError(path, f"{what} does not compile")
    return Policy(role=role, path=path, sha256=hashlib.sha256(source).hexdigest(), _bundle=bundle)


def _entrypoint(role: str) -> str:
    """The compiled query for a role's `deny`: ``modelyard/org/deny``."""
    return PACKAGES[role].replace(".", "/") + "/deny"


# -- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Denial:
    """One reason a promotion is refused, and which policy's rule gave it."""

    policy: str  # org | spec
    rule: str
    reason: str


@dataclass(frozen=True)
class PolicyDecision:
    """Whether a promotion may go ahead, why not, and exactly what was decided on."""

    allowed: bool
    denials: tuple[Denial, ...]
    policies: tuple[dict[str, str], ...]  # role, path, sha256 of each policy evaluated
    input: dict[str, Any]  # the exact document evaluated
    input_sha256: str  # sha256 of its canonical JSON (PromotionInput.to_json)
    seconds: float

    def as_record(self) -> dict[str, Any]:
        """The decision as a JSON-ready ledger record payload."""
        return {
            "allowed": self.allowed,
            "denials": [asdict(d) for d in self.denials],
            "policies": [dict(p) for p in self.policies],
            "input": self.input,
            "input_sha256": self.input_sha256,
            "seconds": self.seconds,
        }


def evaluate(request: PromotionInput, org: Policy, spec: Policy | None = None) -> PolicyDecision:
    """The decision of ``org`` (and ``spec``, when the spec has one) on ``request``."""
    return _decide(request.to_json(), org, spec)


def evaluate_document(document: Mapping[str, Any], org: Policy, spec: Policy | None = None) -> PolicyDecision:
    """The decision on an input document as recorded (``PolicyDecision.input``): how an audit
    checks that a recorded decision follows from its input and the policies of those digests."""
    try:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"document: not JSON-serialisable ({error})") from None
    return _decide(text, org, spec)


def decide(request: PromotionInput, org_path: Path = DEFAULT_ORG_POLICY, spec_path: Path | None = None) -> PolicyDecision:
    """Load the org policy (and the spec's) and decide on ``request``: what a promotion calls."""
    org = load_policy(org_path, "org")
    spec = load_policy(spec_path, "spec") if spec_path is not None else None
    return evaluate(request, org, spec)


def _decide(document: str, org: Policy, spec: Policy | None) -> PolicyDecision:
    if org.role != "org" or (spec is not None and spec.role != "spec"):
        raise ValueError("org must be an org policy and spec a spec policy (load_policy's role)")
    started = time.perf_counter()
    policies = (org,) if spec is None else (org, spec)
    denials = tuple(sorted(
        (denial for policy in policies for denial in _deny(policy, document)),
        key=lambda d: (d.policy != "org", d.rule, d.reason),
    ))
    return PolicyDecision(
        allowed=not denials,
        denials=denials,
        policies=tuple(p.as_record() for p in policies),
        input=json.loads(document),
        input_sha256=hashlib.sha256(document.encode()).hexdigest(),
        seconds=time.perf_counter() - started,
    )


def _deny(policy: Policy, document: str) -> list[Denial]:
    """``policy``'s denials for the input ``document``, or PolicyError."""
    what = f"{policy.role} policy {policy.path}"
    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE
    interpreter.strict_built_in_errors = True  # a failing built-in is an error, not a rule that quietly does not fire
    # regopy's own Output cannot report an error that rego-cpp writes as text (it fails parsing
    # it as JSON), so the query goes through regopy's C-API layer and its output is read here.
    with policy._lock:
        try:
            # A JSON term, not regopy.Input: Input puts strings into the output unescaped (a '"' breaks it).
            interpreter.set_input_term(document)
            output = rego_bundle_query_entrypoint(interpreter._impl, policy._bundle._impl, policy.entrypoint)
        except RegoError as error:
            raise PolicyError(policy.path, f"{what} failed while evaluating", (PolicyProblem(str(error).strip()),)) from None
        try:
            text = rego_output_string(output)
            answer = _json(text) if rego_output_ok(output) else None
            if answer is None and text != "undefined":
                problems = _runtime_problems(rego_output_node(output)) or (PolicyProblem(text.strip()),)
                raise PolicyError(policy.path, f"{what} failed while evaluating", problems)
        finally:
            rego_free_output(output)
    if text == "undefined":
        raise PolicyError(policy.path, f"{what} defines no `deny` in package {policy.package} "
                                       f"(the file must declare `package {policy.package}`)")
    expressions = answer.get("expressions") if isinstance(answer, dict) else None
    if not isinstance(expressions, list) or len(expressions) != 1:
        raise PolicyError(policy.path, f"{what}: unexpected answer from rego-cpp: {text[:200]}")
    return _denials(policy, expressions[0])


def _denials(policy: Policy, deny: object) -> list[Denial]:
    """The ``deny`` set read as denials; any other shape is a PolicyError."""
    shape = f"{policy.role} policy {policy.path}: `deny` must be a set of strings or {{\"rule\", \"reason\"}} objects"
    if not isinstance(deny, list):
        raise PolicyError(policy.path, f"{shape}, not {_preview(deny)}")
    denials = []
    for item in deny:
        if isinstance(item, str) and item.strip():
            denials.append(Denial(policy.role, PLAIN_DENIAL_RULE, item))
        elif (isinstance(item, dict) and set(item) == {"rule", "reason"}
              and all(isinstance(v, str) and v.strip() for v in item.values())):
            denials.append(Denial(policy.role, item["rule"], item["reason"]))
        else:
            raise PolicyError(policy.path, f"{shape}; one is {_preview(item)}")
    return denials


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # rego-cpp writes some errors as text into an "ok" output


def _preview(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


# -- rego-cpp's error reports -------------------------------------------------------------------

# A compile error reads `(error 8:org.rego|54|1 (errormsg 27:Invalid arithmetic operator) ...)`:
# length-prefixed file name and message, byte offset and length into the source.
_ERROR = re.compile(rb"\(error (\d+):")
_LOCATION = re.compile(rb"\|(\d+)\|(\d+)")
_MESSAGE = re.compile(rb"\(errormsg (\d+):")


def _compile_problems(report: str, source: bytes) -> tuple[PolicyProblem, ...]:
    """The problems in rego-cpp's compile report, with line and column in ``source``."""
    raw = report.encode("utf-8")
    problems = []
    for error in _ERROR.finditer(raw):
        after_name = error.end() + int(error.group(1))
        location = _LOCATION.match(raw, after_name)
        message = _MESSAGE.search(raw, after_name)
        if message is None:
            continue
        start = message.end()
        text = raw[start:start + int(message.group(1))].decode("utf-8", errors="replace")
        line = column = None
        if location is not None and int(error.group(1)) > 0:
            offset = min(int(location.group(1)), len(source))
            line_start = source.rfind(b"\n", 0, offset) + 1
            line = source.count(b"\n", 0, offset) + 1
            column = len(source[line_start:offset].decode("utf-8", errors="replace")) + 1
        problems.append(PolicyProblem(text, line, column))
    return tuple(problems) or (PolicyProblem(report.strip()[:500]),)


def _runtime_problems(node: int) -> tuple[PolicyProblem, ...]:
    """The messages (and error codes) in an evaluation's error node."""
    problems = []

    def kind(impl: int) -> NodeKind | None:
        try:
            return rego_node_type(impl)
        except ValueError:  # a node kind this regopy does not name
            return None

    def walk(impl: int) -> None:
        if kind(impl) == NodeKind.Error:
            message = code = ""
            for i in range(rego_node_size(impl)):
                child = rego_node_get(impl, i)
                if kind(child) == NodeKind.ErrorMessage:
                    message = rego_node_value(child)
                elif kind(child) == NodeKind.ErrorCode:
                    code = rego_node_value(child)
            problems.append(PolicyProblem(f"{message} ({code})" if code else message))
            return
        for i in range(rego_node_size(impl)):
            walk(rego_node_get(impl, i))

    walk(node)
    return tuple(problems)
