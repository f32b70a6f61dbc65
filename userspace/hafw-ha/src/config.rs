//! HA settings of one node: identity, election parameters and timers, and their validation.
//!
//! The timer profiles follow the PAN-OS HA reference values (HA-SPEC "Identity and election");
//! `Fast` is hafw's own profile for fast, honest failure detection on a dedicated HA1 link.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest value accepted for any single timer, and for the peer-dead time derived from the
/// heartbeat.
///
/// PAN-OS caps its HA timers at one hour (preemption hold 60 min); longer values are typos, and the
/// cap keeps every `Timestamp + Duration` far from saturation.
pub const MAX_TIMER: Duration = Duration::from_secs(3600);

/// Largest `max_flaps` accepted (PAN-OS range 0-16).
pub const MAX_FLAPS_LIMIT: u32 = 16;

/// Smallest heartbeat loss threshold accepted: with 1, any single late heartbeat declares the peer
/// dead.
pub const MIN_HEARTBEAT_LOSS_THRESHOLD: u32 = 2;

/// HA mode; both peers must run the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Active/passive with HA2 state sync.
    ActivePassive,
    /// HA lite: one interface carries HA1 and HA2, only config is synced, failover is stateless.
    Lite,
}

impl Mode {
    /// The name used in configuration and `show` output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ActivePassive => "active-passive",
            Self::Lite => "lite",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// HA2 transport; in `active-passive` mode both peers must use the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ha2Transport {
    /// Raw frames, ethertype 0x7261.
    Ethernet,
    /// IP protocol 99.
    Ip,
    /// UDP port 29281.
    Udp,
}

impl Ha2Transport {
    /// The name used in configuration and `show` output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ethernet => "ethernet",
            Self::Ip => "ip",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Ha2Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every HA timer, resolved from a [`TimerProfile`]. Durations serialize as whole milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    /// How long a passive node waits, after declaring the peer dead, before it becomes active.
    #[serde(rename = "promotion_hold_ms", with = "duration_ms")]
    pub promotion_hold: Duration,
    /// Interval between hellos on HA1 (identity, config compatibility, state).
    #[serde(rename = "hello_interval_ms", with = "duration_ms")]
    pub hello_interval: Duration,
    /// Interval between heartbeats, sent on every HA link (HA1, HA1 backup, heartbeat backup).
    #[serde(rename = "heartbeat_interval_ms", with = "duration_ms")]
    pub heartbeat_interval: Duration,
    /// Missed heartbeat intervals after which the peer is declared dead (see
    /// [`Timers::peer_dead`]).
    pub heartbeat_loss_threshold: u32,
    /// How long a preempted active node keeps the role after the better peer became available.
    #[serde(rename = "preemption_hold_ms", with = "duration_ms")]
    pub preemption_hold: Duration,
    /// How long a node stays functional after a link/path monitor reports a failure.
    #[serde(rename = "monitor_fail_hold_up_ms", with = "duration_ms")]
    pub monitor_fail_hold_up: Duration,
    /// Extra time, after the monitor-fail hold-up, that only the active node waits before leaving
    /// active.
    #[serde(rename = "additional_master_hold_up_ms", with = "duration_ms")]
    pub additional_master_hold_up: Duration,
    /// Flaps (see [`crate::FLAP_WINDOW`]) after which the node suspends itself; 0 means no limit.
    pub max_flaps: u32,
    /// How long a booting node looks for its peer before it becomes active alone.
    ///
    /// Profiles use `max(2 * peer_dead, hello_interval)`: two peer-dead times let a heartbeat
    /// through even if the first few are lost while HA1 comes up, and one hello interval
    /// guarantees that a peer which missed our boot hello still gets one regular hello to us
    /// before we give up on it.
    #[serde(rename = "initial_wait_ms", with = "duration_ms")]
    pub initial_wait: Duration,
}

impl Timers {
    /// PAN-OS `recommended` values.
    pub const fn recommended() -> Self {
        Self::profile(2000, 8000, 2000, 500, 3)
    }

    /// PAN-OS `aggressive` values.
    pub const fn aggressive() -> Self {
        Self::profile(500, 8000, 1000, 500, 3)
    }

    /// hafw's fast profile: 5 ms heartbeats, peer dead after 15 ms, no promotion hold. The HA
    /// shell runs at a real-time priority, so such heartbeats hold even on a loaded host (see the
    /// soak benchmark).
    pub const fn fast() -> Self {
        let mut timers = Self::profile(0, 1000, 5, 0, 3);
        timers.preemption_hold = Duration::from_secs(10);
        timers
    }

    /// Shared shape of the named profiles (heartbeat loss threshold 3, monitor-fail hold-up 0).
    const fn profile(
        promotion_hold_ms: u64,
        hello_ms: u64,
        heartbeat_ms: u64,
        additional_master_hold_up_ms: u64,
        max_flaps: u32,
    ) -> Self {
        let heartbeat_interval = Duration::from_millis(heartbeat_ms);
        let hello_interval = Duration::from_millis(hello_ms);
        let heartbeat_loss_threshold = 3;
        Self {
            promotion_hold: Duration::from_millis(promotion_hold_ms),
            hello_interval,
            heartbeat_interval,
            heartbeat_loss_threshold,
            preemption_hold: Duration::from_secs(60),
            monitor_fail_hold_up: Duration::ZERO,
            additional_master_hold_up: Duration::from_millis(additional_master_hold_up_ms),
            max_flaps,
            initial_wait: default_initial_wait(
                heartbeat_interval,
                heartbeat_loss_threshold,
                hello_interval,
            ),
        }
    }

    /// Silence after the last message from the peer before it is declared dead:
    /// `heartbeat_interval * heartbeat_loss_threshold`.
    pub const fn peer_dead(&self) -> Duration {
        self.heartbeat_interval
            .saturating_mul(self.heartbeat_loss_threshold)
    }

    /// How long after last hearing its peer a passive node takes over: peer-dead time plus
    /// promotion hold. Sent in hellos, so that the peer's lease ends before it (see
    /// [`crate::Core::lease`]).
    pub fn takeover_after(&self) -> Duration {
        self.peer_dead() + self.promotion_hold
    }

    /// After a stall (see [`crate::Event::Stalled`]), how long an active node holds forwarding
    /// while the peer's current state arrives: two heartbeat intervals, room for one lost
    /// heartbeat.
    pub fn stall_hold(&self) -> Duration {
        self.heartbeat_interval * 2
    }

    /// Checks every timer; see [`ConfigError`] for the rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hello_interval.is_zero() {
            return Err(ConfigError::ZeroHelloInterval);
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::ZeroHeartbeatInterval);
        }
        if self.heartbeat_loss_threshold < MIN_HEARTBEAT_LOSS_THRESHOLD {
            return Err(ConfigError::HeartbeatLossThresholdTooLow {
                threshold: self.heartbeat_loss_threshold,
            });
        }
        let named = [
            ("promotion hold", self.promotion_hold),
            ("hello interval", self.hello_interval),
            ("heartbeat interval", self.heartbeat_interval),
            ("peer-dead time", self.peer_dead()),
            ("preemption hold", self.preemption_hold),
            ("monitor-fail hold-up", self.monitor_fail_hold_up),
            ("additional master hold-up", self.additional_master_hold_up),
            ("initial wait", self.initial_wait),
        ];
        if let Some((timer, value)) = named.into_iter().find(|(_, value)| *value > MAX_TIMER) {
            return Err(ConfigError::TimerTooLong { timer, value });
        }
        if self.initial_wait < self.peer_dead() {
            return Err(ConfigError::InitialWaitTooShort {
                initial_wait: self.initial_wait,
                peer_dead: self.peer_dead(),
            });
        }
        if self.max_flaps > MAX_FLAPS_LIMIT {
            return Err(ConfigError::MaxFlapsOutOfRange {
                max_flaps: self.max_flaps,
            });
        }
        Ok(())
    }
}

/// `max(2 * heartbeat * threshold, hello)`; see [`Timers::initial_wait`].
pub const fn default_initial_wait(
    heartbeat_interval: Duration,
    heartbeat_loss_threshold: u32,
    hello_interval: Duration,
) -> Duration {
    let twice_dead = heartbeat_interval
        .saturating_mul(heartbeat_loss_threshold)
        .saturating_mul(2);
    if twice_dead.as_nanos() > hello_interval.as_nanos() {
        twice_dead
    } else {
        hello_interval
    }
}

/// Named timer sets, as in PAN-OS, plus hafw's `fast`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimerProfile {
    /// [`Timers::recommended`].
    Recommended,
    /// [`Timers::aggressive`].
    Aggressive,
    /// [`Timers::fast`].
    Fast,
    /// Every timer set by hand.
    Advanced(Timers),
}

impl TimerProfile {
    /// The timers this profile stands for.
    pub const fn timers(&self) -> Timers {
        match self {
            Self::Recommended => Timers::recommended(),
            Self::Aggressive => Timers::aggressive(),
            Self::Fast => Timers::fast(),
            Self::Advanced(timers) => *timers,
        }
    }

    /// The profile's name in configuration and `show` output.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Recommended => "recommended",
            Self::Aggressive => "aggressive",
            Self::Fast => "fast",
            Self::Advanced(_) => "advanced",
        }
    }
}

/// HA settings of one node. Build one with [`Config::new`] and adjust the fields;
/// [`crate::Core::new`] validates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// HA group id, 1-63; must match the peer's. It also names the virtual MACs.
    pub group_id: u8,
    /// Identifies this node to its peer and breaks election ties: on equal device priority the
    /// lower node id wins. Use something unique and stable, such as the HA1 interface MAC
    /// address as an integer. Both peers having the same node id is a pairing error
    /// ([`crate::Mismatch::SameNodeId`]).
    pub node_id: u64,
    /// Device priority, 0-255; the lower number wins the election.
    pub device_priority: u8,
    /// Take the active role back from a worse peer (only when the peer is preemptive too).
    pub preemptive: bool,
    /// HA mode; must match the peer's.
    pub mode: Mode,
    /// HA2 transport; must match the peer's in `active-passive` mode (unused in `lite`).
    pub ha2_transport: Ha2Transport,
    /// An HA1 backup link is configured (hellos and heartbeats).
    pub ha1_backup: bool,
    /// A heartbeat backup over the management interface is configured (heartbeats only).
    pub heartbeat_backup: bool,
    /// Timer profile.
    pub timers: TimerProfile,
}

impl Config {
    /// Defaults for everything but identity: priority 100, not preemptive, active-passive over
    /// ethernet, no backup links, `recommended` timers.
    pub const fn new(group_id: u8, node_id: u64) -> Self {
        Self {
            group_id,
            node_id,
            device_priority: 100,
            preemptive: false,
            mode: Mode::ActivePassive,
            ha2_transport: Ha2Transport::Ethernet,
            ha1_backup: false,
            heartbeat_backup: false,
            timers: TimerProfile::Recommended,
        }
    }

    /// Checks the group id and the timers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=63).contains(&self.group_id) {
            return Err(ConfigError::GroupIdOutOfRange {
                group_id: self.group_id,
            });
        }
        self.timers.timers().validate()
    }
}

/// Why a [`Config`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The group id must be 1-63: it is encoded in the virtual MAC addresses.
    #[error("group id {group_id} out of range 1-63")]
    GroupIdOutOfRange {
        /// The configured value.
        group_id: u8,
    },
    /// A zero hello interval would send hellos in a busy loop.
    #[error("hello interval must not be zero")]
    ZeroHelloInterval,
    /// A zero heartbeat interval would send heartbeats in a busy loop and declare the peer dead at
    /// once.
    #[error("heartbeat interval must not be zero")]
    ZeroHeartbeatInterval,
    /// The peer must be allowed to miss at least one heartbeat before it is declared dead.
    #[error(
        "heartbeat loss threshold {threshold} is below the minimum {MIN_HEARTBEAT_LOSS_THRESHOLD}"
    )]
    HeartbeatLossThresholdTooLow {
        /// The configured value.
        threshold: u32,
    },
    /// A timer longer than [`MAX_TIMER`] is almost certainly a unit mistake.
    #[error("{timer} of {value:?} is longer than the maximum {MAX_TIMER:?}")]
    TimerTooLong {
        /// Which timer.
        timer: &'static str,
        /// The configured (or, for the peer-dead time, derived) value.
        value: Duration,
    },
    /// A booting node must listen at least one peer-dead time, or it would go active beside a live
    /// peer.
    #[error("initial wait {initial_wait:?} is shorter than the peer-dead time {peer_dead:?}")]
    InitialWaitTooShort {
        /// The configured initial wait.
        initial_wait: Duration,
        /// heartbeat interval * heartbeat loss threshold.
        peer_dead: Duration,
    },
    /// `max_flaps` must be 0 (no limit) to [`MAX_FLAPS_LIMIT`].
    #[error("max flaps {max_flaps} out of range 0-{MAX_FLAPS_LIMIT}")]
    MaxFlapsOutOfRange {
        /// The configured value.
        max_flaps: u32,
    },
}

/// Serde helper: a `Duration` as whole milliseconds, the unit every HA timer is configured in.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn profiles_match_the_reference_values() {
        let r = Timers::recommended();
        assert_eq!(
            (r.promotion_hold, r.hello_interval, r.heartbeat_interval),
            (ms(2000), ms(8000), ms(2000))
        );
        assert_eq!(
            (r.preemption_hold, r.monitor_fail_hold_up),
            (ms(60_000), ms(0))
        );
        assert_eq!((r.additional_master_hold_up, r.max_flaps), (ms(500), 3));
        assert_eq!((r.peer_dead(), r.initial_wait), (ms(6000), ms(12_000)));

        let a = Timers::aggressive();
        assert_eq!(
            (a.promotion_hold, a.hello_interval, a.heartbeat_interval),
            (ms(500), ms(8000), ms(1000))
        );
        assert_eq!(
            (a.preemption_hold, a.additional_master_hold_up),
            (ms(60_000), ms(500))
        );
        assert_eq!((a.peer_dead(), a.initial_wait), (ms(3000), ms(8000)));

        let f = Timers::fast();
        assert_eq!(
            (f.promotion_hold, f.hello_interval, f.heartbeat_interval),
            (ms(0), ms(1000), ms(5))
        );
        assert_eq!(
            (f.preemption_hold, f.additional_master_hold_up),
            (ms(10_000), ms(0))
        );
        assert_eq!(
            (f.peer_dead(), f.initial_wait, f.max_flaps),
            (ms(15), ms(1000), 3)
        );

        for profile in [
            TimerProfile::Recommended,
            TimerProfile::Aggressive,
            TimerProfile::Fast,
        ] {
            assert_eq!(profile.timers().validate(), Ok(()), "{}", profile.name());
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let check = |edit: &dyn Fn(&mut Config)| {
            let mut config = Config::new(1, 1);
            config.timers = TimerProfile::Advanced(Timers::fast());
            edit(&mut config);
            config.validate()
        };
        let timers = |edit: fn(&mut Timers)| {
            move |config: &mut Config| {
                let mut t = config.timers.timers();
                edit(&mut t);
                config.timers = TimerProfile::Advanced(t);
            }
        };

        assert_eq!(check(&|_| ()), Ok(()));
        assert_eq!(
            check(&|c| c.group_id = 0),
            Err(ConfigError::GroupIdOutOfRange { group_id: 0 })
        );
        assert_eq!(
            check(&|c| c.group_id = 64),
            Err(ConfigError::GroupIdOutOfRange { group_id: 64 })
        );
        assert_eq!(check(&|c| c.group_id = 63), Ok(()));
        assert_eq!(
            check(&timers(|t| t.heartbeat_interval = Duration::ZERO)),
            Err(ConfigError::ZeroHeartbeatInterval)
        );
        assert_eq!(
            check(&timers(|t| t.hello_interval = Duration::ZERO)),
            Err(ConfigError::ZeroHelloInterval)
        );
        assert_eq!(
            check(&timers(|t| t.heartbeat_loss_threshold = 1)),
            Err(ConfigError::HeartbeatLossThresholdTooLow { threshold: 1 })
        );
        assert_eq!(
            check(&timers(|t| t.preemption_hold = Duration::from_secs(3601))),
            Err(ConfigError::TimerTooLong {
                timer: "preemption hold",
                value: Duration::from_secs(3601)
            })
        );
        assert_eq!(
            check(&timers(|t| t.heartbeat_loss_threshold = u32::MAX)),
            Err(ConfigError::TimerTooLong {
                timer: "peer-dead time",
                value: ms(5).saturating_mul(u32::MAX)
            })
        );
        assert_eq!(
            check(&timers(|t| t.initial_wait = ms(14))),
            Err(ConfigError::InitialWaitTooShort {
                initial_wait: ms(14),
                peer_dead: ms(15)
            })
        );
        assert_eq!(
            check(&timers(|t| t.max_flaps = 17)),
            Err(ConfigError::MaxFlapsOutOfRange { max_flaps: 17 })
        );
        assert_eq!(check(&timers(|t| t.max_flaps = 0)), Ok(()));
        assert_eq!(
            ConfigError::GroupIdOutOfRange { group_id: 0 }.to_string(),
            "group id 0 out of range 1-63"
        );
    }

    #[test]
    fn default_initial_wait_is_at_least_one_hello() {
        assert_eq!(default_initial_wait(ms(10), 3, ms(1000)), ms(1000));
        assert_eq!(default_initial_wait(ms(2000), 3, ms(8000)), ms(12_000));
    }
}
