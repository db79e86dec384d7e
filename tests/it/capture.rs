//! Capture integration tests (issue 2).
