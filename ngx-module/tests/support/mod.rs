//! The shared integration-test support (`ci/testkit`), under the name every test file uses.

pub use inwasm_testkit::*;
