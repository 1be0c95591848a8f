//! Integration tests live in `api/`; see `tests/README.md`.
