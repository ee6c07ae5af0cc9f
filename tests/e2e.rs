//! Runs the end-to-end suite in `tests/e2e/` (pytest, the official `openai` SDK and raw
//! HTTP against the real `llmux` binary and `llmux mock`) as part of `cargo test`.
//! The Python packages it needs are pinned in `tests/e2e/requirements.txt`.

use std::process::Command;

#[test]
fn end_to_end_suite_with_the_openai_sdk() {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import openai, pytest"])
        .status()
        .expect("python3 must be installed to run the end-to-end suite");
    assert!(
        probe.success(),
        "the end-to-end suite needs its Python packages: pip install -r tests/e2e/requirements.txt"
    );
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e"])
        .current_dir(root)
        .env("LLMUX_BIN", env!("CARGO_BIN_EXE_llmux"))
        .status()
        .expect("could not run pytest");
    assert!(
        status.success(),
        "end-to-end suite failed (see pytest output above)"
    );
}
