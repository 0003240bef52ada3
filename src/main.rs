//! The `hearth` binary: parse the command line and hand over to [`hearth::cli`].

fn main() -> std::process::ExitCode {
    hearth::cli::main()
}
