//! `[high_availability]`: the lab examples parse and map onto the election core; each mistake an
//! operator can make is reported with its line and field, and nothing else.

use std::time::Duration;

use hafw_config::{Config, PassiveLinkState, virtual_mac};
use hafw_ha::{Ha2Transport, Mode, TimerProfile};

const HA: &str = r#"[high_availability]
group_id = 5
device_priority = 50
preemptive = true
timers = "aggressive"
[high_availability.ha1]
interface = "ha1"
address = "169.254.1.1/30"
peer = "169.254.1.2"
[high_availability.ha2]
interface = "ha2"
"#;

fn base() -> String {
    hafw_config::EXAMPLE.to_owned()
}

fn lines(text: &str) -> usize {
    text.lines().count()
}

#[test]
fn lab_examples_parse_and_map_onto_the_election_core() {
    for node in 0..2 {
        let text = Config::ha_example_text(node, &format!("fw{}", node + 1));
        let c = Config::parse(&text, "fw.toml").unwrap();
        assert_eq!(c.instance, format!("fw{}", node + 1));
        let ha = c.high_availability.as_ref().unwrap();
        let e = ha.election_config();
        assert_eq!(e.group_id, 1);
        assert_eq!(e.device_priority, [100, 200][node]);
        assert!(e.preemptive);
        assert!(e.heartbeat_backup && !e.ha1_backup);
        assert_eq!(e.timers, TimerProfile::Fast);
        assert_eq!(e.mode, Mode::ActivePassive);
        assert_eq!(e.ha2_transport, Ha2Transport::Ethernet);
        // Node ids derive from the HA1 address, so the peers differ.
        assert_eq!(
            e.node_id,
            u64::from(u32::from_be_bytes([169, 254, 1, node as u8 + 1]))
        );
        assert_eq!(ha.passive_link_state, PassiveLinkState::Auto);
        e.validate().unwrap();
        assert_eq!(c.virtual_mac_of("eth1"), Some([0x02, 0x68, 0x61, 1, 0, 1]));
        assert_eq!(c.virtual_mac_of("eth2"), Some([0x02, 0x68, 0x61, 1, 0, 2]));
        assert_eq!(c.interfaces[0].addresses().len(), 2);
    }
}

#[test]
fn no_ha_section_means_no_ha_and_no_virtual_macs() {
    let c = Config::example();
    assert!(c.high_availability.is_none());
    assert_eq!(c.virtual_mac_of("eth1"), None);
}

#[test]
fn virtual_mac_is_derived_or_overridden() {
    assert_eq!(virtual_mac(63, 0x0102), [0x02, 0x68, 0x61, 63, 1, 2]);
    let text = base().replacen(
        "zone = \"trust\"\n",
        "zone = \"trust\"\nvirtual_mac = \"02:00:00:00:00:aa\"\n",
        1,
    ) + HA;
    let c = Config::parse(&text, "fw.toml").unwrap();
    assert_eq!(c.virtual_mac_of("eth1"), Some([2, 0, 0, 0, 0, 0xaa]));
    assert_eq!(c.virtual_mac_of("eth2"), Some([0x02, 0x68, 0x61, 5, 0, 2]));
}

#[test]
fn advanced_timers_override_the_recommended_values() {
    let text = base()
        + &HA.replace("timers = \"aggressive\"", "timers = \"advanced\"")
        + "[high_availability.advanced_timers]\nheartbeat_interval_ms = 50\npromotion_hold_ms = 0\n";
    let c = Config::parse(&text, "fw.toml").unwrap();
    let TimerProfile::Advanced(t) = c.high_availability.unwrap().election_config().timers else {
        panic!("not advanced");
    };
    assert_eq!(t.heartbeat_interval, Duration::from_millis(50));
    assert_eq!(t.promotion_hold, Duration::ZERO);
    assert_eq!(t.hello_interval, Duration::from_millis(8000));
}

#[test]
fn ha2_ip_and_udp_transports_take_ipv4_addresses() {
    let text = base()
        + &HA.replace(
            "interface = \"ha2\"",
            "interface = \"ha2\"\ntransport = \"udp\"\naddress = \"169.254.2.1/30\"\npeer = \"169.254.2.2\"",
        )
        + "[high_availability.ha2_backup]\ninterface = \"ha2b\"\ntransport = \"ip\"\naddress = \"169.254.4.1/30\"\npeer = \"169.254.4.2\"\n";
    let c = Config::parse(&text, "fw.toml").unwrap();
    assert_eq!(
        c.high_availability.unwrap().election_config().ha2_transport,
        Ha2Transport::Udp
    );
}

#[test]
fn mistakes_name_their_line_and_field() {
    let at = lines(&base()); // HA starts on the next line
    let cases: Vec<(String, String)> = vec![
        (
            HA.replace("group_id = 5", "group_id = 64"),
            format!(
                "fw.toml:{}: field `group_id`: 64 is out of range 1-63",
                at + 2
            ),
        ),
        (
            HA.replace("device_priority = 50", "device_priority = 256"),
            format!(
                "fw.toml:{}: field `device_priority`: 256 is out of range 0-255",
                at + 3
            ),
        ),
        (
            HA.replace("peer = \"169.254.1.2\"", "peer = \"169.254.9.2\""),
            format!(
                "fw.toml:{}: field `peer`: high_availability.ha1: peer 169.254.9.2 is outside 169.254.1.1/30; set `gateway` to reach another subnet",
                at + 6
            ),
        ),
        (
            HA.replace("peer = \"169.254.1.2\"", "peer = \"169.254.1.1\""),
            format!(
                "fw.toml:{}: field `peer`: high_availability.ha1: peer 169.254.1.1 is this node's own address",
                at + 6
            ),
        ),
        (
            HA.replace(
                "address = \"169.254.1.1/30\"",
                "address = \"169.254.1.1/33\"",
            ),
            format!(
                "fw.toml:{}: high_availability.ha1 field `address`: \"169.254.1.1/33\" is not an IP prefix or address",
                at + 6
            ),
        ),
        (
            HA.replace("interface = \"ha1\"", "interface = \"eth1\""),
            format!(
                "fw.toml:{}: field `interface`: high_availability.ha1: eth1 is a data port; HA links need their own interface",
                at + 6
            ),
        ),
        (
            HA.replace("interface = \"ha2\"", "interface = \"ha1\""),
            format!(
                "fw.toml:{}: field `interface`: high_availability.ha2: must use another interface than ha1 (or mode = \"lite\")",
                at + 10
            ),
        ),
        (
            HA.replace(
                "interface = \"ha2\"",
                "interface = \"ha2\"\ntransport = \"udp\"",
            ),
            format!(
                "fw.toml:{}: field `transport`: high_availability.ha2: transport udp needs `address` and `peer`",
                at + 10
            ),
        ),
        (
            HA.replace(
                "interface = \"ha2\"",
                "interface = \"ha2\"\ntransport = \"udp\"\naddress = \"fd00::1/64\"\npeer = \"fd00::2\"",
            ),
            format!(
                "fw.toml:{}: field `address`: high_availability.ha2: transport udp carries IPv4 only; address fd00::1 is IPv6",
                at + 10
            ),
        ),
        (
            HA.replace(
                "interface = \"ha2\"",
                "interface = \"ha2\"\ntransport = \"ip\"\naddress = \"169.254.2.1/30\"\npeer = \"fd00::2\"",
            ),
            format!(
                "fw.toml:{}: field `peer`: high_availability.ha2: transport ip carries IPv4 only; peer fd00::2 is IPv6",
                at + 10
            ),
        ),
        (
            format!(
                "{HA}[high_availability.ha2_backup]\ninterface = \"ha2b\"\ntransport = \"udp\"\naddress = \"fd00::1/64\"\npeer = \"fd00::2\"\n"
            ),
            format!(
                "fw.toml:{}: field `address`: high_availability.ha2_backup: transport udp carries IPv4 only; address fd00::1 is IPv6",
                at + 12
            ),
        ),
        (
            HA.replace("timers = \"aggressive\"", "timers = \"advanced\""),
            format!(
                "fw.toml:{}: field `timers`: \"advanced\" needs a [high_availability.advanced_timers] table",
                at + 5
            ),
        ),
        (
            HA.replace("timers = \"aggressive\"", "timers = \"slow\""),
            format!(
                "fw.toml:{}: unknown variant `slow`, expected one of `recommended`, `aggressive`, `fast`, `advanced`",
                at + 5
            ),
        ),
        (
            HA.replace("preemptive = true", "preemptive = true\npriority = 3"),
            format!("fw.toml:{}: unknown field `priority`", at + 5),
        ),
        (
            format!("{HA}[high_availability.advanced_timers]\nheartbeat_interval_ms = 10\n"),
            format!(
                "fw.toml:{}: field `advanced_timers`: only allowed with timers = \"advanced\"",
                at + 12
            ),
        ),
    ];
    for (ha, want) in cases {
        let got = Config::parse(&(base() + &ha), "fw.toml")
            .expect_err(&want)
            .to_string();
        assert!(got.starts_with(&want), "got:  {got}\nwant: {want}");
    }
    // A port address that is not a prefix.
    let text = base().replacen("\"198.18.1.1/24\"", "\"198.18.1.300/24\"", 1);
    let got = Config::parse(&text, "fw.toml").unwrap_err().to_string();
    assert!(
        got.contains("interface \"eth1\" field `addresses`: \"198.18.1.300/24\""),
        "{got}"
    );
}
