//! Uploader integration tests (issue 3).
