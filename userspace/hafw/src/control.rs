//! The local control socket: newline-delimited JSON requests and responses over a Unix socket at
//! `/run/hafw/<instance>.sock`. The operator CLI (`hafw show ...`, `hafw commit`) is its client.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// Where an instance listens.
pub fn socket_path(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/hafw/{instance}.sock"))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    ShowSessions,
    ShowCounters,
    ShowRunningConfig,
    ShowInterfaces,
    /// Validate the candidate config (the file given, or the one `hafw run` started with) and
    /// swap it in atomically. On any error the running config stays as it was.
    Commit {
        path: Option<PathBuf>,
    },
    /// `show high-availability all`.
    ShowHighAvailability,
    /// `show high-availability state-synchronization`.
    ShowStateSync,
    /// `request high-availability state suspend|functional`.
    RequestHighAvailabilityState {
        functional: bool,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Response {
    Ok { data: serde_json::Value },
    Error { message: String },
}

/// Sends one request to a running instance and returns its data, or its error as an `Err`.
pub fn request(instance: &str, req: &Request) -> Result<serde_json::Value> {
    let path = socket_path(instance);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {} (is `hafw run` up for instance {instance}?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    match serde_json::from_str::<Response>(&reply).context("malformed reply from hafw")? {
        Response::Ok { data } => Ok(data),
        Response::Error { message } => bail!("{message}"),
    }
}
