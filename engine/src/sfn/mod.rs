//! Fission's own workflow format (RFC-0022 `Workflow`, `fission.io/v1`): a Step
//! Functions style state machine. This module is the pure foundation: the spec's
//! serde types ([`spec`]), its validation with line and column ([`validate`]),
//! JSONPath shaping of a state's input and output ([`paths`]) and Choice rule
//! evaluation ([`choice`]). No I/O; nothing here is on the request path yet.

pub mod choice;
pub mod paths;
mod positions;
pub mod spec;
pub mod validate;

pub use choice::{eval_choice, eval_condition, eval_rule};
pub use paths::{
    apply_input_path, apply_output_path, apply_result_path, parse_path, select, shape_output,
    write_at, ShapeError,
};
pub use spec::{
    parse_workflow, CatchRoute, ChoiceCondition, ChoiceRule, FunctionReference, ParsedWorkflow,
    Quantity, ResultPath, RetentionPolicy, RetryPolicy, StateType, Workflow, WorkflowBranch,
    WorkflowMetadata, WorkflowSpec, WorkflowState,
};
pub use validate::{parse_and_validate, validate, ERROR_CODES};
