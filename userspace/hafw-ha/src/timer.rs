//! Timers as data: one enum naming every timer and a table of optional deadlines indexed by it
//! (the shape of quinn-proto's `connection/timer.rs`). The core arms and stops entries; the shell
//! only ever sees the earliest deadline through [`crate::Core::poll_timeout`].

use serde::Serialize;

use crate::time::Timestamp;

/// Every timer of the core.
///
/// The declaration order is the firing order for equal deadlines: liveness first, so that every
/// hold timer sees whether the peer is alive, and the periodic messages last, so that they carry
/// the state the other timers produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timer {
    /// Peer declared dead: last message heard + peer-dead time.
    PeerDead,
    /// Initial wait: a booting node alone past it becomes active.
    Initial,
    /// Monitor-fail hold-up after a monitor failure.
    MonitorFailHoldUp,
    /// Additional master hold-up, after the monitor-fail hold-up, on the active node only.
    AdditionalMasterHoldUp,
    /// Promotion hold: a passive node with a dead peer becomes active when it fires.
    PromotionHold,
    /// Preemption hold: an active node with a better preemptive peer yields when it fires.
    PreemptionHold,
    /// Stall hold: an active node that stalled forwards nothing until it fires (or the peer shows
    /// it took over meanwhile).
    StallHold,
    /// Next periodic hello.
    Hello,
    /// Next periodic heartbeat.
    Heartbeat,
}

impl Timer {
    /// Every timer, in firing order.
    pub const ALL: [Self; 9] = [
        Self::PeerDead,
        Self::Initial,
        Self::MonitorFailHoldUp,
        Self::AdditionalMasterHoldUp,
        Self::PromotionHold,
        Self::PreemptionHold,
        Self::StallHold,
        Self::Hello,
        Self::Heartbeat,
    ];

    const fn index(self) -> usize {
        self as usize
    }
}

/// Deadline of each [`Timer`], `None` when stopped.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable([Option<Timestamp>; Timer::ALL.len()]);

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Timestamp) {
        self.0[timer.index()] = Some(at);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.0[timer.index()] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Timestamp> {
        self.0[timer.index()]
    }

    pub(crate) fn is_armed(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    /// Armed timers with their deadlines, in firing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Timer, Timestamp)> + '_ {
        Timer::ALL
            .into_iter()
            .filter_map(|timer| self.get(timer).map(|at| (timer, at)))
    }

    /// The earliest deadline.
    pub(crate) fn next_timeout(&self) -> Option<Timestamp> {
        self.iter().map(|(_, at)| at).min()
    }

    /// The timer to fire next at `now`: the earliest expired deadline, ties in declaration order.
    pub(crate) fn next_expired(&self, now: Timestamp) -> Option<Timer> {
        self.iter()
            .filter(|&(_, at)| at <= now)
            .min_by_key(|&(timer, at)| (at, timer.index()))
            .map(|(timer, _)| timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_fires_first_ties_in_declaration_order() {
        let mut table = TimerTable::default();
        assert_eq!(table.next_timeout(), None);
        table.set(Timer::Heartbeat, Timestamp::from_millis(5));
        table.set(Timer::PromotionHold, Timestamp::from_millis(5));
        table.set(Timer::Hello, Timestamp::from_millis(3));
        table.set(Timer::Initial, Timestamp::from_millis(9));
        assert_eq!(table.next_timeout(), Some(Timestamp::from_millis(3)));
        assert_eq!(table.next_expired(Timestamp::from_millis(2)), None);
        assert_eq!(
            table.next_expired(Timestamp::from_millis(6)),
            Some(Timer::Hello)
        );
        table.stop(Timer::Hello);
        assert_eq!(
            table.next_expired(Timestamp::from_millis(6)),
            Some(Timer::PromotionHold)
        );
        assert!(table.is_armed(Timer::Initial));
    }
}
