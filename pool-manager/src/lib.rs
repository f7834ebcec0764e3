//! Pool manager.
