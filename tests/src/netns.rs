//! Network namespaces, commands and processes inside them.

use std::{
    fs::File,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A prefix no other live lab uses: `hl<pid>x<n>`.
pub fn unique_prefix() -> String {
    format!(
        "hl{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace this process created; deleted on drop.
pub struct Netns {
    pub name: String,
    persist: bool,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run_ok(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_owned(),
            persist: false,
        };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Keep the namespace after drop (`cargo xtask lab up`).
    pub fn persist(&mut self) {
        self.persist = true;
    }

    /// A command inside the namespace. `nsenter --net` keeps the root mount namespace, so pinned
    /// BPF objects under /sys/fs/bpf stay visible (`ip netns exec` would remount /sys).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .args(argv);
        c
    }

    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.command(argv)
            .output()
            .with_context(|| format!("running {argv:?} in {}", self.name))
    }

    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let out = self.exec(argv)?;
        if !out.status.success() {
            bail!(
                "{argv:?} in {} failed: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The MAC address of `ifname` in this namespace, as `ip` prints it (`aa:bb:cc:dd:ee:ff`).
    pub fn mac(&self, ifname: &str) -> Result<String> {
        let out = self.exec_ok(&["ip", "-br", "link", "show", ifname])?;
        out.split_whitespace()
            .nth(2)
            .map(str::to_owned)
            .with_context(|| format!("no MAC for {ifname} in {}", self.name))
    }

    /// Starts a long-running process inside the namespace, output to `log`.
    pub fn spawn(&self, argv: &[&str], log: &Path) -> Result<LabProcess> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = self
            .command(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {argv:?} in {}", self.name))?;
        Ok(LabProcess { child: Some(child) })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.persist {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

/// A process this lab started. Dropping it kills it (SIGKILL, that PID only) and reaps it.
pub struct LabProcess {
    child: Option<Child>,
}

impl LabProcess {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends a signal to this process only.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).context("kill")?;
        Ok(())
    }

    /// Leaves the process running after drop (`cargo xtask lab up`).
    pub fn detach(mut self) -> u32 {
        let pid = self.pid();
        self.child = None;
        pid
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // nsenter execs the target, so this PID is the target process itself.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `f` on a fresh thread that has joined the namespace: sockets it creates live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// Polls `f` every `interval` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, interval: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

fn run_ok(c: &mut Command) -> Result<()> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Removes namespaces named `<prefix>-*` (for `lab down` and for leftovers of crashed runs).
pub fn destroy(prefix: &str) -> Result<usize> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let mut n = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&format!("{prefix}-")) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            n += 1;
        }
    }
    Ok(n)
}
