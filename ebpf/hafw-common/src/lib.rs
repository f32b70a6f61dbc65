//! Types shared by the hafw XDP programs (`hafw-ebpf`) and the userspace controller (`hafw`).
//!
//! Every map key and value is a plain `#[repr(C)]` struct of integers with explicit, zeroed padding:
//! the kernel hashes keys byte by byte, so implicit padding would hash garbage and lookups would
//! miss, and bpf-linker drops the fields of data-carrying enums from BTF. Layout changes bump
//! [`LAYOUT_VERSION`], which is part of every pin path, because aya does not check the layout of a
//! reused pinned map.
#![no_std]

pub mod config;
pub mod counters;
pub mod ha2;
pub mod policy;
pub mod session;
pub mod table;

/// Version of the map layouts in this crate. Part of the pin path (`/sys/fs/bpf/hafw/<instance>/v<N>/`).
pub const LAYOUT_VERSION: u32 = 10;

/// Implements `aya::Pod` for map keys and values in userspace builds.
#[macro_export]
#[doc(hidden)]
macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, made of integers only, with explicit padding fields.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

/// Wire identities of HA traffic. Data ports drop these (HA-SPEC: "Data ports never accept HA1/HA2
/// traffic"), so nobody on a data network can inject sessions or talk to the HA1 control plane.
pub mod ha {
    /// HA2 over raw Ethernet.
    pub const HA2_ETHERTYPE: u16 = 0x7261;
    /// HA2 over IP.
    pub const HA2_IP_PROTO: u8 = 99;
    /// HA2 over UDP (destination port).
    pub const HA2_UDP_PORT: u16 = 29281;
    /// HA1 control connection (TCP, destination port).
    pub const HA1_TCP_PORT: u16 = 28769;
    /// HA1 heartbeats (UDP, destination port).
    pub const HA1_HEARTBEAT_UDP_PORT: u16 = 28771;
}
