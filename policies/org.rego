# The organisation's promotion policy: it applies to every promotion into every environment,
# on top of the spec's own policy. modelyard.policy evaluates it in-process (regopy, rego-cpp)
# over a PromotionInput and reads one thing from it: the set `deny`, each denial an object
# {"rule": ..., "reason": ...}. An empty set allows the promotion.
#
# Written to fail closed: a rule fires when compliance cannot be shown, so a missing or mistyped
# input field denies instead of silently passing (`not x` over an undefined `x` is true). Values
# that only go into a reason come from defaults, so a missing field cannot make a denial vanish.
package modelyard.org

import rego.v1

environments := {"dev", "staging", "production"}

# Alerts that say the model or its data has moved away from what it was validated on.
blocking_alert_kinds := {"drift", "data"}

# The input fields this policy reads, and their JSON types.
input_types := {
	"environment": "string",
	"author": "string",
	"approvals": "array",
	"signature": "object",
	"open_alerts": "array",
}

# -- every environment --------------------------------------------------------------------------

deny contains {"rule": "input", "reason": sprintf("input.%s is missing or not a JSON %s", [field, want])} if {
	some field, want in input_types
	not type_name(object.get(input, field, null)) == want
}

deny contains {"rule": "environment", "reason": sprintf("unknown environment %v (known: dev, staging, production)", [environment])} if {
	not environment in environments
}

deny contains {"rule": "signature", "reason": sprintf("the version has no valid signature (signer: %v)", [signer])} if {
	not signature_valid
}

signature_valid if input.signature.valid == true

# -- production ---------------------------------------------------------------------------------

production if input.environment == "production"

# Four-eyes: someone other than the author (who trained or asked for the training of the
# version) and other than whoever requested this promotion (input.requested_by, null for
# automation) approved it.
deny contains {"rule": "four_eyes", "reason": four_eyes_reason} if {
	production
	not approved_by_another
}

approved_by_another if {
	author_known
	some approval in input.approvals
	approval.decision == "approve"
	is_string(approval.identity)
	trim_space(approval.identity) != ""
	not same_identity(approval.identity, input.author)
	not same_identity(approval.identity, object.get(input, "requested_by", null))
}

author_known if {
	is_string(input.author)
	trim_space(input.author) != ""
}

self_approved if {
	some approval in input.approvals
	approval.decision == "approve"
	same_identity(approval.identity, input.author)
}

requester_approved if {
	some approval in input.approvals
	approval.decision == "approve"
	same_identity(approval.identity, input.requested_by)
}

# Identities compare without case or surrounding space: "Alice" cannot approve "alice"'s change.
same_identity(a, b) if {
	is_string(a)
	is_string(b)
	lower(trim_space(a)) == lower(trim_space(b))
}

four_eyes_reason := "the author is unknown, so four-eyes cannot be checked" if {
	not author_known
} else := sprintf("%s approved their own change; production needs an approval by someone other than the author", [author]) if {
	self_approved
} else := sprintf("%s approved the promotion they requested; production needs an approval by someone other than the requester", [input.requested_by]) if {
	requester_approved
} else := sprintf("production needs an approval by someone other than the author (%s); there is none", [author])

deny contains {"rule": "open_alerts", "reason": sprintf("an open %v alert (opened %v) blocks production", [alert.kind, opened_at(alert)])} if {
	production
	some alert in input.open_alerts
	alert.kind in blocking_alert_kinds
}

opened_at(alert) := alert.opened_at if is_string(alert.opened_at) else := "at an unknown time"

# The candidate is no worse than the champion on the spec's metric; no champion, nothing to beat.
deny contains {"rule": "evaluation", "reason": "no evaluation of the candidate is recorded (a number is needed)"} if {
	production
	not is_number(input.evaluation.candidate)
}

deny contains {"rule": "evaluation", "reason": sprintf("the champion's %s is neither a number nor null", [metric])} if {
	production
	is_number(input.evaluation.candidate)
	not champion_known
	not no_champion
}

deny contains {"rule": "evaluation", "reason": "evaluation.higher_is_better is not a boolean"} if {
	production
	is_number(input.evaluation.candidate)
	not is_boolean(input.evaluation.higher_is_better)
}

deny contains {"rule": "evaluation", "reason": sprintf("%s %v is worse than the champion's %v (%s is better)", [metric, input.evaluation.candidate, input.evaluation.champion, better])} if {
	production
	worse_than_champion
}

champion_known if is_number(input.evaluation.champion)

no_champion if input.evaluation.champion == null

worse_than_champion if {
	is_number(input.evaluation.candidate)
	champion_known
	input.evaluation.higher_is_better == true
	input.evaluation.candidate < input.evaluation.champion
}

worse_than_champion if {
	is_number(input.evaluation.candidate)
	champion_known
	input.evaluation.higher_is_better == false
	input.evaluation.candidate > input.evaluation.champion
}

better := "higher" if input.evaluation.higher_is_better == true else := "lower"

# -- what reasons show --------------------------------------------------------------------------

default environment := null

environment := input.environment

default author := "<unknown>"

author := input.author if is_string(input.author)

default signer := "none"

signer := input.signature.signer if is_string(input.signature.signer)

default metric := "metric"

metric := input.evaluation.metric if is_string(input.evaluation.metric)
