//! Writing to stdout and stderr without panicking. `println!` panics when its stream is
//! closed (`switchyard dev 2>&1 | tee log` after Ctrl-C killed `tee`, `switchyard list | head`),
//! which in `dev` would skip the drain. These write, and remember the first failure instead:
//! a closed pipe is the reader's choice and is not reported; anything else (a full disk) makes
//! the command exit 1 at the end.

use std::{
    fmt,
    io::{ErrorKind, Write},
    sync::Mutex,
};

/// Like `println!`, to stdout.
macro_rules! outln {
    () => {
        $crate::say::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::say::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Like `print!`, to stdout.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::say::out(format_args!($($arg)*))
    };
}

/// Like `eprintln!`, to stderr.
macro_rules! errln {
    () => {
        $crate::say::err(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::say::err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Like `eprint!`, to stderr.
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::say::err(format_args!($($arg)*))
    };
}

/// The first failure to write stdout that was not a closed pipe.
static FAILED: Mutex<Option<String>> = Mutex::new(None);

pub fn out(args: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        note(err);
    }
}

pub fn err(args: fmt::Arguments<'_>) {
    // Nowhere left to tell of a failure to write stderr.
    let _ = std::io::stderr().lock().write_fmt(args);
}

fn note(err: std::io::Error) {
    if err.kind() == ErrorKind::BrokenPipe {
        return;
    }
    if let Ok(mut failed) = FAILED.lock() {
        failed.get_or_insert_with(|| err.to_string());
    }
}

/// Why writing stdout failed, if it did (a closed pipe aside).
pub fn failure() -> Option<String> {
    FAILED.lock().ok().and_then(|failed| failed.clone())
}
