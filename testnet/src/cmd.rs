//! Running the system tools (`ip`, `nft`, `sysctl`) with errors that show the command line
//! and its stderr, and finding binaries.

use std::env;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// The command line as one string, for error messages.
pub(crate) fn show(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion with `input` on stdin; fails unless it exits 0.
pub(crate) fn run_with_input(cmd: &mut Command, input: &str) -> Result<Output> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", show(cmd)))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("cannot write to `{}`", show(cmd)))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot run `{}`", show(cmd)))?;
    check(cmd, out)
}

/// Runs `cmd` to completion; fails unless it exits 0.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", show(cmd)))?;
    check(cmd, out)
}

fn check(cmd: &Command, out: Output) -> Result<Output> {
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            stderr.trim().replace('\n', "; ")
        );
    }
    Ok(out)
}

/// `ip ARGS`, checked.
pub(crate) fn ip<S: AsRef<OsStr>>(args: &[S]) -> Result<Output> {
    run(Command::new(tool("ip")).args(args))
}

/// A command that runs `args` inside namespace `netns` (`ip netns exec`).
pub(crate) fn in_netns<S: AsRef<OsStr>>(netns: &str, args: &[S]) -> Command {
    let mut cmd = Command::new(tool("ip"));
    cmd.args(["netns", "exec", netns]).args(args);
    cmd
}

/// Names of all network namespaces on the machine (`ip netns list`).
pub(crate) fn list_netns() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// PIDs of the processes inside `netns` (`ip netns pids`).
pub(crate) fn netns_pids(netns: &str) -> Result<Vec<u32>> {
    let out = ip(&["netns", "pids", netns])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// A system tool by name: from `PATH`, else from the sbin directories (which a `sudo`
/// environment may leave out of `PATH`), else the bare name.
pub(crate) fn tool(name: &str) -> PathBuf {
    search_path(name)
        .or_else(|| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|p| is_executable(p))
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// One of the project's binaries (`overlayd`, `overlayctl`): the path in env `env_var` if
/// set; else next to the current executable or in its parent directory (the executable may
/// be `target/debug/testnet` or a test in `target/debug/deps/`); else from `PATH`.
pub(crate) fn project_binary(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(path) = env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Ok(exe) = env::current_exe() {
        let mut dir = exe.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join(name);
            if is_executable(&candidate) {
                return Some(candidate);
            }
            dir = d.parent();
        }
    }
    search_path(name)
}

/// Like [`project_binary`], but an error that says how to get the binary.
pub(crate) fn require_project_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    project_binary(name, env_var).with_context(|| {
        format!(
            "cannot find the `{name}` binary: build it with `cargo build -p {name}` or set {env_var}"
        )
    })
}
