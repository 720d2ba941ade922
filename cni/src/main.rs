//! `spur`: Spur's CNI plugin executable, run by container runtimes, by
//! Multus and by other plugins that use it as their IPAM plugin.
//!
//! This file only does the process's I/O: it reads the environment and
//! stdin, hands them to [`spur_cni::run`], writes the outcome to stdout
//! (a one-line note to stderr on failure) and exits with its code. What
//! the plugin does lives in the library (`src/lib.rs`).

use std::io::{Read, Write};
use std::process::ExitCode;

use spur_core::cni::CniVersion;
use spur_core::cniproto::CniError;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().lock().read_to_end(&mut stdin) {
        Ok(_) => spur_cni::run(
            |k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()),
            &stdin,
        ),
        Err(e) => spur_cni::Outcome::failure(
            CniError::io(format!("cannot read the network config from stdin: {e}")),
            CniVersion::LATEST,
        ),
    };
    if let Some(e) = &outcome.error {
        // One short line, best effort: stdout is the contract.
        let _ = writeln!(
            std::io::stderr().lock(),
            "spur: error {}: {}",
            e.code,
            e.msg
        );
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_all(&outcome.stdout)
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::from(u8::try_from(outcome.exit_code).unwrap_or(1))
}
