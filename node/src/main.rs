//! The `manta` binary: argument parsing only; everything else lives in the library.

fn main() -> std::process::ExitCode {
    manta_node::cli::main()
}
