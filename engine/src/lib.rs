//! Workflow engine.
