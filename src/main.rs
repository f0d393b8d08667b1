//! The `weft` command: runs Weft embedded (`weft dev`) and checks workflow
//! files (`weft validate`).

mod cli;

/// mimalloc rather than the system allocator: under many tenants' large
/// outputs it gives memory back after a peak and fragments less (see
/// BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
