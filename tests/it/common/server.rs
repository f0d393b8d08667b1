//! `weft dev` as a process of its own, for tests of what only a whole
//! process shows: restarts after `kill -9`, its environment.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The API key every server started here is given.
pub const KEY: &str = "weft_7bW2Kf4JfWaAT5G7qbgej9vu2kOTsYlzolIWUBiU";

pub struct Server {
    child: Child,
    pub base: String,
}

pub fn start(dir: &std::path::Path) -> Server {
    start_with(dir, &[])
}

pub fn start_with(dir: &std::path::Path, args: &[&str]) -> Server {
    start_with_env(dir, args, &[])
}

/// Starts `weft dev` on a free port with its data in `dir`, loopback
/// allowed to steps, and `env` added to its environment (only its own).
pub fn start_with_env(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command
        .args(["dev", "--port", "0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("WEFT_DEV_API_KEY", KEY)
        .env("WEFT_EGRESS_ALLOW", "127.0.0.0/8")
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start weft dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a banner line").expect("readable");
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the banner names the URL")
        .to_owned();
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

impl Server {
    pub fn kill_9(mut self) {
        // Child::kill sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
