//! The `hearth` binary: parse the command line and hand over to [`hearth::cli`].

/// mimalloc: the server allocates many small, short-lived values per request (ids, JSON
/// values, response parts); it serves them faster than the system allocator and returns
/// freed memory to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hearth::cli::main()
}
