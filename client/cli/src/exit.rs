//! Exit codes, decided here and nowhere else, and how an error is told to a person.
//!
//! Scripts branch on the code, so it follows the job's outcome wherever a command waits for
//! one (`submit --wait`, `wait`, `watch`, `batch --watch`), and says what kind of trouble it
//! was otherwise. The README's table and `--help` are built from (or checked against)
//! [`Exit::ALL`].

use std::process::ExitCode;

use switchyard_client::{Error as ClientError, JobState};

/// What `switchyard` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked; a job or group it waited for succeeded.
    Success,
    /// Any other error: refused by the coordinator for a reason not listed here (already
    /// exists, failed precondition, permission denied, …) or a local one (reading a file).
    Error,
    /// Invalid argument or usage: a bad flag or coordinator address, a request the
    /// coordinator refused as `INVALID_ARGUMENT`, a payload over 1 MiB. Clap uses 2 too.
    Usage,
    /// The job (or group) ended `FAILED`.
    Failed,
    /// The job (or group) ended `CANCELLED`.
    Cancelled,
    /// The job ended `DEADLINE_EXCEEDED`, or `--timeout` passed before it finished.
    DeadlineExceeded,
    /// No such job or group (`NOT_FOUND`).
    NotFound,
    /// The coordinator is unreachable, overloaded or shutting down, or a quota refused the
    /// submit (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`): retry later.
    Unavailable,
    /// Ctrl-C while watching or during `bulk` (128 + SIGINT, as a shell reports it).
    Interrupted,
}

impl Exit {
    /// Every code, in the order the README and `--help` list them.
    pub const ALL: [Exit; 9] = [
        Exit::Success,
        Exit::Error,
        Exit::Usage,
        Exit::Failed,
        Exit::Cancelled,
        Exit::DeadlineExceeded,
        Exit::NotFound,
        Exit::Unavailable,
        Exit::Interrupted,
    ];

    pub const fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::Failed => 3,
            Exit::Cancelled => 4,
            Exit::DeadlineExceeded => 5,
            Exit::NotFound => 6,
            Exit::Unavailable => 7,
            Exit::Interrupted => 130,
        }
    }

    /// One line for the table in `--help` and the README.
    pub const fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "succeeded (the job or group waited for, or the command)",
            Exit::Error => {
                "any other error (already exists, failed precondition, permission denied, a file that cannot be read, …)"
            }
            Exit::Usage => {
                "invalid argument or usage (a bad flag or address, INVALID_ARGUMENT, a payload over 1 MiB)"
            }
            Exit::Failed => "the job or group ended FAILED",
            Exit::Cancelled => "the job or group ended CANCELLED",
            Exit::DeadlineExceeded => "the job ended DEADLINE_EXCEEDED, or --timeout passed first",
            Exit::NotFound => "no such job or group",
            Exit::Unavailable => {
                "the coordinator is unreachable, overloaded or shutting down, or a quota refused the submit: retry later"
            }
            Exit::Interrupted => "interrupted by Ctrl-C while watching, or during a bulk action",
        }
    }

    /// The code for a job (or group) that has ended in `state`.
    pub fn of_state(state: JobState) -> Exit {
        match state {
            JobState::Succeeded => Exit::Success,
            JobState::Failed => Exit::Failed,
            JobState::Cancelled => Exit::Cancelled,
            JobState::DeadlineExceeded => Exit::DeadlineExceeded,
            // Not an outcome: `wait` and `Run` only answer with a terminal job.
            JobState::Unspecified | JobState::Queued | JobState::Running => Exit::Error,
        }
    }

    /// The code for an error: by the first error in the chain that says what kind it is.
    pub fn of_error(err: &anyhow::Error) -> Exit {
        for cause in err.chain() {
            if cause.downcast_ref::<Usage>().is_some() {
                return Exit::Usage;
            }
            if let Some(err) = cause.downcast_ref::<ClientError>() {
                return Exit::of_client_error(err);
            }
        }
        Exit::Error
    }

    fn of_client_error(err: &ClientError) -> Exit {
        match err {
            ClientError::InvalidUrl { .. }
            | ClientError::TlsWithoutCa { .. }
            | ClientError::InvalidArgument(_)
            | ClientError::MessageTooLarge(_) => Exit::Usage,
            ClientError::NotFound(_) => Exit::NotFound,
            ClientError::Connect { .. }
            | ClientError::Unavailable(_)
            | ClientError::ResourceExhausted(_) => Exit::Unavailable,
            ClientError::DeadlineExceeded(_) => Exit::DeadlineExceeded,
            ClientError::AlreadyExists(_)
            | ClientError::FailedPrecondition(_)
            | ClientError::Unauthenticated(_)
            | ClientError::PermissionDenied(_)
            | ClientError::Unimplemented(_)
            | ClientError::Rpc(_) => Exit::Error,
        }
    }

    /// `Exit codes:` and the table, for `--help`.
    pub fn help() -> String {
        let mut text = String::from("Exit codes:\n");
        for exit in Exit::ALL {
            text.push_str(&format!("  {:>3}  {}\n", exit.code(), exit.meaning()));
        }
        text.push_str(
            "\n`get`, `list` and the other commands exit 0 when they showed what was asked, whatever\n\
             the state of the job they show; `wait`, `submit --wait`, `watch` and `batch --watch`\n\
             follow the outcome.",
        );
        text
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// A usage error the CLI finds itself (before anything is sent): exits [`Exit::Usage`].
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The error as one line for a person: what happened, and what to do where there is an
/// obvious next step. The chain is joined with `: `, down to the first SDK error, whose own
/// message already carries its cause (the transport error under it would only repeat it).
pub fn report(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            parts.push(client_report(client));
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

fn client_report(err: &ClientError) -> String {
    match err {
        ClientError::Connect { url, reason, .. } => format!(
            "cannot reach the coordinator at {url} ({reason}); start one with `switchyard dev`, \
             or point --coordinator (or SWITCHYARD_COORDINATOR) at a running one"
        ),
        ClientError::TlsWithoutCa { url } => format!(
            "{url} uses https: pass --ca-cert FILE, the CA certificate that signed the \
             coordinator's certificate (system roots are not used)"
        ),
        ClientError::InvalidUrl { url, reason } => {
            format!("--coordinator {url:?} is not a coordinator address: {reason}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Exit::ALL.len());
    }

    /// The README's table is this one: a code added or renumbered here fails until the README
    /// says so too.
    #[test]
    fn the_readme_lists_every_code() {
        let readme = include_str!("../../../README.md");
        for exit in Exit::ALL {
            let row = format!("| {} | {} |", exit.code(), exit.meaning());
            assert!(readme.contains(&row), "README lacks the row {row:?}");
        }
    }

    #[test]
    fn outcomes_and_errors() {
        assert_eq!(Exit::of_state(JobState::Failed), Exit::Failed);
        assert_eq!(Exit::of_state(JobState::Succeeded), Exit::Success);
        let err = anyhow::Error::new(ClientError::NotFound("job x: not found".into()))
            .context("getting x");
        assert_eq!(Exit::of_error(&err), Exit::NotFound);
        assert_eq!(report(&err), "getting x: job x: not found");
        let usage = anyhow::Error::new(Usage("bad".into()));
        assert_eq!(Exit::of_error(&usage), Exit::Usage);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("disk")), Exit::Error);
    }
}
