//! Fission Workflows' built-in functions, evaluated in-process.

/// Names of the built-ins.
pub const BUILTINS: &[&str] = &[
    "noop",
    "compose",
    "if",
    "switch",
    "foreach",
    "repeat",
    "while",
    "sleep",
    "fail",
    "javascript",
    "http",
];

pub fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name)
}
