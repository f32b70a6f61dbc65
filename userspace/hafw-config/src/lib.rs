//! hafw configuration: the TOML model, validation with errors that name file, line and field, and
//! the policy compiler that turns ordered rules into the bit-vector tables the XDP program reads
//! (see `hafw_common::policy`).
//!
//! Nothing here touches the system: [`Config::parse`] and [`compile`] are pure, so a commit can
//! validate everything before the dataplane sees a single byte.

mod compile;
mod ha;
mod model;

pub use compile::{CompiledPolicy, LpmEntry, compile};
pub use ha::{
    AdvancedTimers, Encryption, Ha2Link, HaLink, HaSettings, KeepaliveAction, PassiveLinkState,
    TimerName, parse_mac, virtual_mac,
};
pub use model::{
    Action, Address, Config, ConfigError, EXAMPLE, ErrorKind, HA_EXAMPLES, Interface,
    PolicyDefaults, Rule, Service, Timeouts,
};
