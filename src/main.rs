//! The `weft` command: runs Weft embedded (`weft dev`) and checks workflow
//! files (`weft validate`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
