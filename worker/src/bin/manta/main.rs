//! The `manta` binary: the node CLI (`start`, `status`, `stop`) plus
//! `microbenchmark`, which drives the user API. It is also its own worker
//! binary (the microbenchmark's tasks and actors run in it).

mod alloc;
mod microbenchmark;

#[global_allocator]
static ALLOCATOR: alloc::SplitAllocator = alloc::SplitAllocator;

fn main() -> std::process::ExitCode {
    manta::serve_if_worker();
    if std::env::var_os(microbenchmark::ECHO_SERVER_ENV).is_some() {
        microbenchmark::echo_server();
        return std::process::ExitCode::SUCCESS;
    }
    manta_node::cli::main(microbenchmark::run)
}
