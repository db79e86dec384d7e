//! Wiring only: parse flags, set up logging and signals, dispatch, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use sidecap::cli::{Cli, Command};
use sidecap::exit::{self, ExitStatus};
use sidecap::process::{self, Shutdown};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let filter = match sidecap::logging::filter(cli.log_level.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sidecap: error: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match &cli.command {
        // The exec preStop hook also logs to the container's main stdout (see upload::logging).
        Command::Upload(a) => sidecap::upload::logging::init(cli.log_format, filter, a.log_to_pid1),
        _ => sidecap::logging::init(cli.log_format, filter),
    }
    let shutdown = Shutdown::new();
    if let Err(e) = process::install_signal_handlers(
        &shutdown,
        Box::new(|| {
            sidecap::term::try_clear();
            std::process::exit(exit::FORCED as i32)
        }),
    ) {
        print_error(&format!(
            "sidecap: error: cannot install signal handlers: {e}"
        ));
        return ExitCode::from(exit::RUNTIME);
    }
    let code = match cli.command {
        Command::Capture(args) if args.list_interfaces => {
            report(sidecap::capture::interfaces::print())
        }
        Command::Capture(mut args) => {
            args.log_format = cli.log_format;
            report(sidecap::capture::run(&args, shutdown))
        }
        Command::Uploader(args) => report(sidecap::upload::run_uploader(&args, shutdown)),
        Command::Upload(args) => report(sidecap::upload::run_upload(&args, shutdown)),
        Command::Snapshot(args) => report(sidecap::upload::snapshot::run(&args, shutdown)),
        Command::Repair(args) => report(sidecap::repair::run(&args)),
    };
    ExitCode::from(code)
}

/// Prints an error with its cause chain once and returns its exit code.
fn report<E: ExitStatus>(r: Result<(), E>) -> u8 {
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            print_error(&format!("sidecap: error: {}", exit::with_causes(&e)));
            e.exit_code()
        }
    }
}

/// One line on stderr, in the log's format: a tracing event (a JSON object in JSON mode, which
/// log collectors behind `kubectl logs` parse; copied to the container's stdout by the preStop
/// hook's tee), or, when the log filter drops errors (`--log-level off`), the plain line, so the
/// reason for a non-zero exit is never silent. Never both: that printed every error twice.
fn print_error(msg: &str) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}
