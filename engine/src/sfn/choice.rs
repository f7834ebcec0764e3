//! Choice rule evaluation (RFC-0022): the first rule that matches the state's
//! input gives the next state, else `default`. A leaf condition reads
//! `variable` (a JSONPath) and applies exactly one typed comparison; `and`,
//! `or` and `not` compose conditions, nested to any depth (Step Functions'
//! choice rules; RFC-0022's types compose leaves only). Pure.
//!
//! As in Step Functions: `isPresent` asks whether `variable` matches at all,
//! `isNull` whether it matches a `null`; every other comparison is false when
//! `variable` matches nothing or a value of another JSON type.

use std::cmp::Ordering;

use serde_json::Value;

use super::paths::parse_path;
use super::spec::{ChoiceCondition, ChoiceRule, WorkflowState};

/// The step error of a Choice state whose rules all fail and that has no
/// `default`.
pub const NO_CHOICE_MATCHED: &str = "Fission.NoChoiceMatched";

/// The state a Choice state moves to for `input`: the first matching rule's
/// `next`, else `default`; None when neither (the engine fails the step with
/// [`NO_CHOICE_MATCHED`]).
pub fn eval_choice<'a>(state: &'a WorkflowState, input: &Value) -> Option<&'a str> {
    state
        .choices
        .iter()
        .find(|rule| eval_rule(rule, input))
        .map(|rule| rule.next.as_str())
        .or(state.default.as_deref())
}

/// Whether one rule matches `input`.
pub fn eval_rule(rule: &ChoiceRule, input: &Value) -> bool {
    eval_condition(&rule.condition(), input)
}

/// Whether one condition holds for `input`: `and`, `or` or `not` over the
/// conditions it holds, else its comparison. A comparison without a
/// `variable`, with one that does not parse, or without an operator is false
/// (validation refuses them before a run can see one).
pub fn eval_condition(c: &ChoiceCondition, input: &Value) -> bool {
    if !c.and.is_empty() {
        return c.and.iter().all(|c| eval_condition(c, input));
    }
    if !c.or.is_empty() {
        return c.or.iter().any(|c| eval_condition(c, input));
    }
    if let Some(c) = &c.not {
        return !eval_condition(c, input);
    }
    let Some(path) = c.variable.as_deref().and_then(|v| parse_path(v).ok()) else {
        return false;
    };
    let nodes = path.query(input);
    let found = nodes.first();
    if let Some(want) = c.is_present {
        return found.is_some() == want;
    }
    if let Some(want) = c.is_null {
        return matches!(found, Some(Value::Null)) == want;
    }
    let Some(v) = found else {
        return false;
    };
    if let Some(s) = &c.string_equals {
        return v.as_str() == Some(s.as_str());
    }
    if let Some(b) = c.boolean_equals {
        return v.as_bool() == Some(b);
    }
    let cmp = |q: &super::spec::Quantity| v.as_f64().and_then(|n| n.partial_cmp(&q.value));
    if let Some(q) = &c.numeric_equals {
        return cmp(q) == Some(Ordering::Equal);
    }
    if let Some(q) = &c.numeric_greater_than {
        return cmp(q) == Some(Ordering::Greater);
    }
    if let Some(q) = &c.numeric_less_than {
        return cmp(q) == Some(Ordering::Less);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(v: Value) -> ChoiceCondition {
        serde_json::from_value(v).unwrap()
    }

    fn holds(c: Value, input: Value) -> bool {
        eval_condition(&cond(c), &input)
    }

    #[test]
    fn string_equals() {
        let c = json!({"variable": "$.s", "stringEquals": "a"});
        assert!(holds(c.clone(), json!({"s": "a"})));
        assert!(!holds(c.clone(), json!({"s": "b"})));
        assert!(!holds(c.clone(), json!({"s": 1})));
        assert!(!holds(c, json!({})));
    }

    #[test]
    fn numeric_comparisons_take_numbers_and_quantities() {
        let input = json!({"n": 5, "f": 0.5, "s": "5"});
        assert!(holds(
            json!({"variable": "$.n", "numericEquals": 5}),
            input.clone()
        ));
        assert!(holds(
            json!({"variable": "$.n", "numericEquals": "5"}),
            input.clone()
        ));
        assert!(holds(
            json!({"variable": "$.f", "numericEquals": "500m"}),
            input.clone()
        ));
        assert!(holds(
            json!({"variable": "$.n", "numericGreaterThan": 4}),
            input.clone()
        ));
        assert!(!holds(
            json!({"variable": "$.n", "numericGreaterThan": 5}),
            input.clone()
        ));
        assert!(holds(
            json!({"variable": "$.n", "numericLessThan": "1e1"}),
            input.clone()
        ));
        assert!(!holds(
            json!({"variable": "$.n", "numericLessThan": 5}),
            input.clone()
        ));
        assert!(holds(
            json!({"variable": "$.n", "numericLessThan": "1k"}),
            input.clone()
        ));
        // A string that looks like a number is not a number.
        assert!(!holds(
            json!({"variable": "$.s", "numericEquals": 5}),
            input.clone()
        ));
        assert!(!holds(
            json!({"variable": "$.zz", "numericLessThan": 5}),
            input
        ));
    }

    #[test]
    fn boolean_equals() {
        assert!(holds(
            json!({"variable": "$.b", "booleanEquals": true}),
            json!({"b": true})
        ));
        assert!(!holds(
            json!({"variable": "$.b", "booleanEquals": true}),
            json!({"b": false})
        ));
        assert!(!holds(
            json!({"variable": "$.b", "booleanEquals": false}),
            json!({"b": "false"})
        ));
    }

    #[test]
    fn is_present_and_is_null() {
        let input = json!({"a": null, "b": 1});
        assert!(holds(
            json!({"variable": "$.a", "isPresent": true}),
            input.clone()
        ));
        assert!(holds(
            json!({"variable": "$.zz", "isPresent": false}),
            input.clone()
        ));
        assert!(!holds(
            json!({"variable": "$.zz", "isPresent": true}),
            input.clone()
        ));
        assert!(holds(
            json!({"variable": "$.a", "isNull": true}),
            input.clone()
        ));
        assert!(!holds(
            json!({"variable": "$.b", "isNull": true}),
            input.clone()
        ));
        assert!(holds(
            json!({"variable": "$.b", "isNull": false}),
            input.clone()
        ));
        // Missing is not null.
        assert!(!holds(
            json!({"variable": "$.zz", "isNull": true}),
            input.clone()
        ));
        assert!(holds(json!({"variable": "$.zz", "isNull": false}), input));
    }

    fn state(v: Value) -> WorkflowState {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn and_or_not_compose_leaf_conditions() {
        let s = state(json!({"type": "Choice", "choices": [
            {"next": "both", "and": [
                {"variable": "$.a", "booleanEquals": true},
                {"variable": "$.n", "numericGreaterThan": 1}]},
            {"next": "either", "or": [
                {"variable": "$.a", "booleanEquals": true},
                {"variable": "$.n", "numericGreaterThan": 1}]},
            {"next": "not-x", "not": {"variable": "$.s", "stringEquals": "x"}}
        ], "default": "fallback"}));
        assert_eq!(eval_choice(&s, &json!({"a": true, "n": 2})), Some("both"));
        assert_eq!(eval_choice(&s, &json!({"a": true, "n": 0})), Some("either"));
        assert_eq!(
            eval_choice(&s, &json!({"a": false, "n": 0, "s": "y"})),
            Some("not-x")
        );
        assert_eq!(
            eval_choice(&s, &json!({"a": false, "n": 0, "s": "x"})),
            Some("fallback")
        );
    }

    /// Compositions nest, as Step Functions' rules do: `a and (b or not c)`.
    #[test]
    fn and_or_not_nest() {
        let s = state(json!({"type": "Choice", "choices": [
            {"next": "yes", "and": [
                {"variable": "$.a", "booleanEquals": true},
                {"or": [
                    {"variable": "$.n", "numericGreaterThan": 1},
                    {"not": {"and": [
                        {"variable": "$.s", "stringEquals": "x"},
                        {"variable": "$.t", "isPresent": true}]}}]}]}
        ], "default": "no"}));
        let choose = |v: Value| eval_choice(&s, &v);
        assert_eq!(
            choose(json!({"a": true, "n": 2, "s": "x", "t": 1})),
            Some("yes")
        );
        assert_eq!(
            choose(json!({"a": true, "n": 0, "s": "y", "t": 1})),
            Some("yes")
        );
        assert_eq!(choose(json!({"a": true, "n": 0, "s": "x"})), Some("yes"));
        assert_eq!(
            choose(json!({"a": true, "n": 0, "s": "x", "t": 1})),
            Some("no")
        );
        assert_eq!(choose(json!({"a": false, "n": 2})), Some("no"));
    }

    #[test]
    fn first_matching_rule_wins_and_no_default_gives_none() {
        let s = state(json!({"type": "Choice", "choices": [
            {"next": "one", "variable": "$.n", "numericGreaterThan": 0},
            {"next": "two", "variable": "$.n", "numericGreaterThan": 1}
        ]}));
        assert_eq!(eval_choice(&s, &json!({"n": 5})), Some("one"));
        assert_eq!(eval_choice(&s, &json!({"n": -1})), None);
    }

    #[test]
    fn malformed_conditions_are_false() {
        assert!(!holds(
            json!({"variable": "not a path", "isPresent": false}),
            json!({})
        ));
        assert!(!holds(json!({"variable": "$.a"}), json!({"a": 1})));
        assert!(!holds(json!({"stringEquals": "a"}), json!("a")));
    }
}
