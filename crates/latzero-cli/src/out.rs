//! Standard output for the commands. A closed stdout (the reader of a pipe gone, as in
//! `latzero mem watch P B | head -1`) ends the process quietly with status 141 (128 + SIGPIPE),
//! as a closed pipe ends a Unix tool: `println!` would panic with a backtrace, and a write that
//! ignored the error would keep a watch or a `reply` running with nobody to read it. The SIGPIPE
//! signal itself stays ignored (Rust's default), so that a write to a closed socket remains an
//! error the client handles rather than the end of the process.

use std::io::Write;

/// The exit status after stdout was closed: a shell's status for a process SIGPIPE ended.
pub const CLOSED_STDOUT: i32 = 141;

/// Writes `bytes` to stdout and flushes (each line reaches a pipe as it is printed); ends the
/// process if stdout is closed, or cannot be written at all.
pub fn bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        exit_for(&e);
    }
}

/// Formats and writes to stdout as [`bytes`] does.
pub fn fmt(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        exit_for(&e);
    }
}

fn exit_for(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(CLOSED_STDOUT);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// `println!` for the commands (see the module's docs).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the commands (see the module's docs).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::fmt(format_args!($($arg)*))
    };
}
