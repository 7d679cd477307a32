//! The Switchyard worker SDK: connects to a coordinator over `WorkerService.Connect` and runs
//! handlers by kind. The dispatch stream arrives with the workers issue; this crate holds its
//! place in the workspace.
