//! `switchyard-worker`: serves the built-in kinds. Not served yet: the coordinator does not
//! dispatch work until the workers issue lands, so this binary says so and exits.

fn main() -> std::process::ExitCode {
    eprintln!(
        "switchyard-worker: the coordinator does not dispatch work yet (WorkerService.Connect \
         answers UNIMPLEMENTED); nothing to run"
    );
    std::process::ExitCode::from(2)
}
