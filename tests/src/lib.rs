//! The network-namespace lab for hafw: uniquely named namespaces removed on drop (even on panic),
//! veth links between them, commands and processes inside them, sockets created inside them, and
//! the topologies the tests, the benchmarks and `cargo xtask lab` share.
//!
//! Rules kept here for every caller: addresses only from 198.18.0.0/15 (and 2001:2::/48) and
//! 169.254.0.0/16; every wait is bounded; only processes this code started are killed.

pub mod netns;
pub mod pair;
pub mod topology;

pub use netns::{LabProcess, Netns, destroy, in_netns, unique_prefix, wait_until};
pub use pair::{ConfigEdit, PairRun, tcp_echo};
pub use topology::{HaPair, SingleFirewall};
