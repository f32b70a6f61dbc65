//! `hafw`: the controller (`hafw run`) and the operator CLI (`hafw show ...`, `hafw commit`).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use hafw::{
    control::{Request, request},
    dataplane::{self, PASS_PROGRAM, SINK_PROGRAM},
    view,
};

#[derive(Parser)]
#[command(
    name = "hafw",
    version,
    about = "High-availability firewall pair with an XDP fast path"
)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Target {
    /// Instance to talk to (the config's `instance`).
    #[arg(long, env = "HAFW_INSTANCE", default_value = "hafw", global = true)]
    instance: String,
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the dataplane and run the controller in the foreground.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show operational state.
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Operator requests.
    Request {
        #[command(subcommand)]
        what: RequestCmd,
    },
    /// HA1 keys: `hafw ha keygen`, `hafw ha export-key`.
    Ha {
        #[command(subcommand)]
        what: HaCmd,
    },
    /// Validate the candidate config and swap it in atomically.
    Commit {
        /// Candidate config file (default: the file `hafw run` was started with).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Check a config file without applying it.
    Validate { file: PathBuf },
    /// Attach a pass-through XDP program to an interface and pin its link (lab helper: XDP
    /// redirects into a veth are only delivered when the peer runs XDP).
    #[command(hide = true)]
    XdpPass {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        pin: PathBuf,
        /// Attach the sink instead: drops all but ARP (the forwarding benchmark's receiver).
        #[arg(long)]
        sink: bool,
    },
}

#[derive(Subcommand)]
enum Show {
    /// `show session all`
    Session {
        #[arg(value_parser = ["all"])]
        scope: String,
    },
    /// `show counter global`
    Counter {
        #[arg(value_parser = ["global"])]
        scope: String,
    },
    /// `show running-config`
    RunningConfig,
    /// `show interface`: attached data ports and their XDP mode.
    Interface,
    /// `show high-availability all|state-synchronization`
    HighAvailability {
        #[arg(value_parser = ["all", "state-synchronization"])]
        scope: String,
    },
}

#[derive(Subcommand)]
enum HaCmd {
    /// Create this node's HA1 key pair: the private key file (mode 0600) and the public key to
    /// import on the peer (`peer_key_file` in its `[high_availability.encryption]`).
    Keygen {
        /// Private key file to create (refuses to overwrite).
        #[arg(long)]
        key: PathBuf,
        /// Public key file to create for the peer.
        #[arg(long)]
        public: PathBuf,
    },
    /// Print the public key of a private key file, to import on the peer.
    ExportKey {
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum RequestCmd {
    /// `request high-availability state suspend|functional`
    HighAvailability {
        #[arg(value_parser = ["state"])]
        what: String,
        #[arg(value_parser = ["suspend", "functional"])]
        state: String,
    },
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let target = cli.target;
    match cli.command {
        Command::Run { config } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(hafw::controller::run(config))
        }
        Command::Show { what } => {
            let req = match what {
                Show::Session { .. } => Request::ShowSessions,
                Show::Counter { .. } => Request::ShowCounters,
                Show::RunningConfig => Request::ShowRunningConfig,
                Show::Interface => Request::ShowInterfaces,
                Show::HighAvailability { scope } if scope == "all" => Request::ShowHighAvailability,
                Show::HighAvailability { .. } => Request::ShowStateSync,
            };
            let data = request(&target.instance, &req)?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&data)?);
                return Ok(());
            }
            match req {
                Request::ShowSessions => {
                    let sessions: Vec<view::SessionView> = serde_json::from_value(data)?;
                    print!("{}", view::sessions_table(&sessions));
                }
                Request::ShowCounters => {
                    let map: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_value(data)?;
                    let fields: Vec<(String, u64)> = map
                        .into_iter()
                        .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
                        .collect();
                    print!("{}", view::counters_table(&fields));
                }
                Request::ShowHighAvailability => print!("{}", view::high_availability(&data)),
                Request::ShowStateSync => print!("{}", view::state_sync(&data)),
                _ => println!("{}", serde_json::to_string_pretty(&data)?),
            }
            Ok(())
        }
        Command::Request {
            what: RequestCmd::HighAvailability { state, .. },
        } => {
            let req = Request::RequestHighAvailabilityState {
                functional: state == "functional",
            };
            let data = request(&target.instance, &req)?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                print!("{}", view::high_availability(&data));
            }
            Ok(())
        }
        Command::Ha {
            what: HaCmd::Keygen { key, public },
        } => {
            use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
            let node = hafw_ha::secure::NodeKey::generate();
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key)
                .with_context(|| format!("creating {}", key.display()))?
                .write_all(node.to_text().as_bytes())?;
            std::fs::write(&public, node.public().to_text())
                .with_context(|| format!("writing {}", public.display()))?;
            println!(
                "HA1 key {} written to {}; public key for the peer in {}",
                node.public().fingerprint(),
                key.display(),
                public.display()
            );
            Ok(())
        }
        Command::Ha {
            what: HaCmd::ExportKey { key },
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let node = hafw_ha::secure::NodeKey::from_text(&text)?;
            print!("{}", node.public().to_text());
            Ok(())
        }
        Command::Commit { file } => {
            let file = file.map(|f| std::fs::canonicalize(&f).unwrap_or(f));
            let data = request(&target.instance, &Request::Commit { path: file })?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                println!("commit: {}", data["result"].as_str().unwrap_or("OK"));
            }
            Ok(())
        }
        Command::Validate { file } => {
            hafw::controller::load_config(&file)?;
            println!("{}: configuration is valid", file.display());
            Ok(())
        }
        Command::XdpPass { iface, pin, sink } => {
            xdp_pass(&iface, &pin, if sink { SINK_PROGRAM } else { PASS_PROGRAM })
        }
    }
}

fn xdp_pass(iface: &str, pin: &std::path::Path, program: &str) -> Result<()> {
    let mut ebpf = dataplane::load_alone(program)?;
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing"))?
        .try_into()?;
    let link_id = prog
        .attach(iface, aya::programs::XdpMode::Driver)
        .or_else(|_| prog.attach(iface, aya::programs::XdpMode::Skb))
        .with_context(|| format!("attaching {program} to {iface}"))?;
    let link = prog.take_link(link_id)?;
    let fd_link: aya::programs::links::FdLink =
        link.try_into().context("XDP link is not an fd link")?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(pin);
    fd_link
        .pin(pin)
        .with_context(|| format!("pinning link at {}", pin.display()))?;
    Ok(())
}
