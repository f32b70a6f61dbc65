//! A hafw pair running in the HA lab topology: the two controllers, their configs and logs, and
//! the cleanup of everything they leave (pins, state, sockets), shared by the tests, the
//! benchmarks and `cargo xtask lab`.

use std::path::PathBuf;

use anyhow::Result;

use crate::{HaPair, LabProcess, unique_prefix};

/// The lab pair's config for node `i` (0 = fw1), with instance `instance`, passed through `edit`.
pub type ConfigEdit<'a> = &'a dyn Fn(usize, String) -> String;

pub struct PairRun {
    pub topo: HaPair,
    pub instances: [String; 2],
    pub dir: PathBuf,
    pub procs: [Option<LabProcess>; 2],
    hafw: String,
}

impl PairRun {
    /// Builds the topology (with pass-through XDP on the switch ports the firewalls redirect
    /// into) and writes both configs; starts no controller.
    pub fn new(hafw: &str, edit: ConfigEdit) -> Result<PairRun> {
        let prefix = unique_prefix();
        let topo = HaPair::up(&prefix)?;
        for (ns, ifname) in topo.xdp_peer_ends() {
            let pin = format!("/sys/fs/bpf/hafw-lab/{prefix}/{}-{ifname}", ns.name);
            ns.exec_ok(&[hafw, "xdp-pass", "--iface", &ifname, "--pin", &pin])?;
        }
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let instances = [format!("{prefix}-1"), format!("{prefix}-2")];
        let run = PairRun {
            topo,
            instances,
            dir,
            procs: [None, None],
            hafw: hafw.to_owned(),
        };
        for i in 0..2 {
            let text = hafw_config::Config::ha_example_text(i, &run.instances[i]);
            std::fs::write(run.config(i), edit(i, text))?;
        }
        Ok(run)
    }

    /// Builds the pair, starts both controllers and waits up to `timeout` for fw1 active and
    /// fw2 passive.
    pub fn start_elected(
        hafw: &str,
        edit: ConfigEdit,
        timeout: std::time::Duration,
    ) -> Result<PairRun> {
        let mut run = PairRun::new(hafw, edit)?;
        run.start_node(0)?;
        run.start_node(1)?;
        let elected = crate::wait_until(timeout, std::time::Duration::from_millis(50), || {
            run.cli_state(0) == "active" && run.cli_state(1) == "passive"
        });
        if !elected {
            anyhow::bail!("the pair did not elect fw1 active:\n{}", run.logs());
        }
        Ok(run)
    }

    pub fn config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("fw{}.toml", i + 1))
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("fw{}.log", i + 1))
    }

    /// Starts `hafw run` on firewall `i`.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        self.start_node_with_env(i, &[])
    }

    /// Starts `hafw run` on firewall `i` with `env` (`NAME=value`) added to its environment.
    pub fn start_node_with_env(&mut self, i: usize, env: &[&str]) -> Result<()> {
        let config = self.config(i);
        let mut argv = vec!["env"];
        argv.extend_from_slice(env);
        argv.extend([
            self.hafw.as_str(),
            "run",
            "--config",
            config.to_str().unwrap_or_default(),
        ]);
        let proc = self.topo.fw[i].spawn(&argv, &self.log(i))?;
        self.procs[i] = Some(proc);
        Ok(())
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        (0..2)
            .map(|i| {
                let log = std::fs::read_to_string(self.log(i)).unwrap_or_default();
                format!("--- fw{} log ---\n{log}", i + 1)
            })
            .collect()
    }

    /// The node's HA state as its CLI reports it (`down` when it does not answer).
    pub fn cli_state(&self, i: usize) -> String {
        std::process::Command::new(&self.hafw)
            .args(["--instance", &self.instances[i], "--json"])
            .args(["show", "high-availability", "all"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["status"]["local"]["state"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "down".into())
    }
}

impl Drop for PairRun {
    fn drop(&mut self) {
        // LabProcess drops SIGKILL the controllers; their pins and state are ours to remove.
        self.procs = [None, None];
        for i in &self.instances {
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/hafw/{i}"));
            let _ = std::fs::remove_dir_all(format!("/run/hafw/{i}"));
            let _ = std::fs::remove_file(format!("/run/hafw/{i}.sock"));
        }
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/hafw-lab/{}", self.topo.prefix));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP echo server on `addr` inside namespace `ns`, one thread per connection, until the
/// returned flag is set.
pub fn tcp_echo(ns: &str, addr: String) -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::{
        io::{Read as _, Write as _},
        sync::atomic::Ordering,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = crate::in_netns(ns, move || std::net::TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    let s = stop.clone();
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut c, _)) => {
                    std::thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 || c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    });
    Ok(stop)
}
