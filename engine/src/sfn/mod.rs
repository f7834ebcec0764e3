//! Fission's own workflow format (RFC-0022 `Workflow`, `fission.io/v1`): a Step
//! Functions style state machine. This module is the pure foundation: the spec's
//! serde types ([`spec`]), its validation with line and column ([`mod@validate`]),
//! JSONPath shaping of a state's input and output ([`paths`]) and Choice rule
//! evaluation ([`choice`]). No I/O; nothing here is on the request path yet.
//!
//! The JSONPath dialect is pinned: RFC 9535, as `serde_json_path` 0.7.2
//! implements it (with the standard functions `length`, `count`, `match`,
//! `search`, `value`). Fission pins `ojg/jp`; the two agree on the paths
//! RFC-0022's examples use (`$`, `$.a.b`, `$.a[0]`, `$['a']`).

pub mod choice;
pub mod paths;
mod positions;
pub mod run;
pub mod spec;
pub mod validate;

#[cfg(test)]
mod props;

pub use choice::{eval_choice, eval_condition, eval_rule, NO_CHOICE_MATCHED};
pub use paths::{
    apply_input_path, apply_output_path, apply_result_path, parse_path, select, shape_output,
    write_at, ShapeError, INVALID_PATH,
};
pub use spec::{
    parse_workflow, CatchRoute, ChoiceCondition, ChoiceRule, FunctionReference, ParsedWorkflow,
    Quantity, ResultPath, RetentionPolicy, RetryPolicy, StateType, Workflow, WorkflowBranch,
    WorkflowMetadata, WorkflowSpec, WorkflowState,
};
pub use validate::{
    ignored_namespace, missing_functions, parse_and_validate, validate, ERROR_CODES,
};
