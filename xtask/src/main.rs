//! `cargo xtask`: build, run, lab, test and bench entry points for hafw.
//!
//! xtask itself depends on nothing that needs the BPF toolchain, so `cargo xtask setup` works on a
//! fresh machine before bpf-linker exists.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything a fresh machine lacks (scripts/setup.sh).
    Setup,
    /// Build the controller and the XDP programs (release).
    Build,
    /// Build, then run `hafw run` with the given arguments (e.g. `-- --config hafw.toml`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The lab of network namespaces: `up` builds it and starts hafw on its built-in config,
    /// `down` removes it, `status` shows it.
    Lab {
        #[arg(value_parser = ["up", "down", "status"])]
        action: String,
    },
    /// Run the whole test suite (needs root: BPF and network namespaces).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt check and clippy with -D warnings on every crate, the BPF crate included.
    Clippy,
    /// Benchmarks: `fastpath`, `failover [PROFILE]`, `soak [MINUTES]`, `sync [ingest|lag|rate|bulk]`.
    /// Prints a table and writes bench/results/ (a part of `sync` only prints).
    Bench {
        #[arg(value_parser = ["fastpath", "failover", "soak", "sync"])]
        which: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<ExitStatus> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    Ok(status)
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = run(cmd)?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build_release() -> Result<PathBuf> {
    run_ok(cargo().args([
        "build",
        "--release",
        "-p",
        "hafw",
        "-p",
        "hafw-lab",
        "--bins",
    ]))?;
    Ok(root().join("target/release"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => run_ok(Command::new("bash").arg(root().join("scripts/setup.sh"))),
        Cmd::Build => build_release().map(|_| ()),
        Cmd::Run { args } => {
            let bin = build_release()?.join("hafw");
            run_ok(Command::new(bin).arg("run").args(args))
        }
        Cmd::Lab { action } => {
            let bin = build_release()?;
            run_ok(
                Command::new(bin.join("hafw-lab"))
                    .arg(action)
                    .env("HAFW_BIN", bin.join("hafw")),
            )
        }
        Cmd::Test { args } => {
            // Network-namespace tests share the machine's root resources (bpffs, /run): one test
            // thread per binary, binaries one after another (cargo's default).
            run_ok(
                cargo()
                    // The eBPF crate builds only for the BPF target (through hafw's build.rs).
                    .args(["test", "--workspace", "--exclude", "hafw-ebpf", "--release"])
                    .args(args)
                    .args(["--", "--test-threads=1"]),
            )
        }
        Cmd::Clippy => {
            run_ok(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run_ok(cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "hafw-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            // The BPF crate lints for its own target, exactly as aya-build compiles it.
            run_ok(
                Command::new("rustup")
                    .args([
                        "run",
                        "nightly",
                        "cargo",
                        "clippy",
                        "-p",
                        "hafw-ebpf",
                        "--release",
                    ])
                    .args([
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                        "--",
                        "-D",
                        "warnings",
                    ])
                    .env(
                        "CARGO_ENCODED_RUSTFLAGS",
                        "--cfg=bpf_target_arch=\"x86_64\"",
                    )
                    .current_dir(root().join("ebpf/hafw-ebpf")),
            )
        }
        Cmd::Bench { which, args } => {
            let bin = build_release()?;
            run_ok(
                Command::new(bin.join("hafw-bench"))
                    .arg(which)
                    .args(args)
                    .current_dir(root()),
            )
        }
    }
}
