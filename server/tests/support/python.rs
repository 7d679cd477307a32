//! Python for the tests that drive something from it (the Python worker, the console's
//! browser driver): a virtual environment made from PyPI once per requirements file and
//! interpreter, kept under the target directory and reused by later runs.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use sha2::{Digest, Sha256};

/// Runs a setup command to completion; a failure panics with `hint` and the command's output.
pub fn run(command: &mut std::process::Command, hint: &str) -> String {
    let shown = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{hint}\n`{shown}` could not start: {e}"));
    assert!(
        out.status.success(),
        "{hint}\n`{shown}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The interpreter of a virtual environment named `name` with `requirements` installed
/// (`$PYTHON` picks the base interpreter). `who` says which test needs it, for the errors.
pub fn venv(name: &str, requirements: &Path, who: &str) -> PathBuf {
    let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let version = run(
        std::process::Command::new(&base).arg("--version"),
        &format!(
            "{who} needs python3 (CPython 3.11 with pip and venv): install it, or point \
             $PYTHON at one"
        ),
    );
    let wanted = std::fs::read(requirements)
        .unwrap_or_else(|e| panic!("read {}: {e}", requirements.display()));
    let key = Sha256::new()
        .chain_update(&wanted)
        .chain_update(version.trim())
        .finalize();
    let key: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{key}"));
    let python = venv.join("bin").join("python");
    if venv.join("ready").exists() {
        return python;
    }
    // Built beside it and renamed into place only when complete: an interrupted run never
    // leaves a half-installed environment that a later one would trust.
    let building = venv.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let started = Instant::now();
    run(
        std::process::Command::new(&base)
            .args(["-m", "venv"])
            .arg(&building),
        &format!(
            "`python3 -m venv` failed: {who} needs the venv module (on Debian and Ubuntu: \
             apt-get install python3-venv)"
        ),
    );
    run(
        std::process::Command::new(building.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(requirements),
        &format!("pip could not install {} from PyPI", requirements.display()),
    );
    std::fs::write(building.join("ready"), &wanted).expect("mark the environment ready");
    if let Err(e) = std::fs::rename(&building, &venv) {
        // Another run finished first: use its environment.
        let _ = std::fs::remove_dir_all(&building);
        assert!(
            venv.join("ready").exists(),
            "move the environment into place: {e}"
        );
    }
    eprintln!(
        "made the Python environment {} in {:?}",
        venv.display(),
        started.elapsed()
    );
    python
}
