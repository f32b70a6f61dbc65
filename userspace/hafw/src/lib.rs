//! hafw: the userspace controller of the hafw firewall pair.
//!
//! - [`dataplane`]: loads the XDP object, owns its maps, attaches data ports, commits policy.
//! - [`session_tables`]: the IPv4 and IPv6 session tables behind one interface.
//! - [`aging`]: which sessions have expired (pure; driven by an injected clock).
//! - [`view`]: sessions and counters as operators see them (tables and JSON).
//! - [`control`]: the local control socket's protocol and client.
//! - [`controller`]: the tokio shell that runs it all (`hafw run`).
//! - [`sync`]: HA2 session sync, the active node's sender and the passive node's markers.
//! - [`ha`]: the HA1 shell around the election core: HA1 links, virtual MACs and floating IPs.
//! - [`testkit`]: BPF_PROG_TEST_RUN fixture shared by the tests and `hafw-bench`.
pub mod aging;
pub mod control;
pub mod controller;
pub mod dataplane;
pub mod ha;
pub mod session_tables;
pub mod sync;
pub mod testkit;
pub mod view;

/// Software version, compared with the HA peer's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
