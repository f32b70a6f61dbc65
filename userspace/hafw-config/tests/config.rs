//! Config parsing errors name file, line and field; the compiled bit-vector classifier agrees
//! with a naive first-match scan of the rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hafw_config::{Config, compile};

const BASE: &str = r#"instance = "t"
[[interface]]
name = "eth1"
zone = "trust"
[[interface]]
name = "eth2"
zone = "untrust"
[[address]]
name = "clients"
prefixes = ["198.18.1.0/24"]
[[service]]
name = "web"
protocol = "tcp"
ports = ["80"]
"#;

fn err(extra: &str) -> String {
    Config::parse(&format!("{BASE}{extra}"), "fw.toml")
        .expect_err("must fail")
        .to_string()
}

#[test]
fn errors_name_file_line_and_field() {
    // BASE is 14 lines: the extra text starts on line 15.
    let table = [
        (
            "[[rule]]\nname = \"r\"\nfrom = [\"trust\"]\nto = [\"untrust\"]\nsource = [\"clinets\"]\ndestination = [\"any\"]\nservice = [\"web\"]\naction = \"allow\"\n",
            "fw.toml:19: rule \"r\" field `source`: unknown address object or prefix \"clinets\"",
        ),
        (
            "[[rule]]\nname = \"r\"\nfrom = [\"dmz\"]\nto = [\"untrust\"]\nsource = [\"any\"]\ndestination = [\"any\"]\nservice = [\"web\"]\naction = \"allow\"\n",
            "fw.toml:17: rule \"r\" field `from`: unknown zone \"dmz\"",
        ),
        (
            "[[rule]]\nname = \"r\"\nfrom = [\"trust\"]\nto = [\"untrust\"]\nsource = [\"any\"]\ndestination = [\"any\"]\nservice = [\"smtp\"]\naction = \"allow\"\n",
            "fw.toml:21: rule \"r\" field `service`: unknown service \"smtp\"",
        ),
        (
            "[[service]]\nname = \"bad\"\nprotocol = \"tcp\"\nports = [\"90-80\"]\n",
            "fw.toml:18: service \"bad\" field `ports`: \"90-80\" is not a port or range (0-65535, first <= last)",
        ),
        (
            "[[service]]\nname = \"bad\"\nprotocol = \"sctp\"\n",
            "fw.toml:17: service \"bad\" field `protocol`: \"sctp\" is not one of tcp, udp, icmp, any",
        ),
        (
            "[[address]]\nname = \"x\"\nprefixes = [\"198.18.1.0/33\"]\n",
            "fw.toml:17: address \"x\" field `prefixes`: \"198.18.1.0/33\" is not an IP prefix or address",
        ),
        (
            "[[address]]\nname = \"clients\"\nprefixes = [\"198.18.9.0/24\"]\n",
            "fw.toml:16: address \"clients\" is defined twice",
        ),
        (
            "[[rule]]\nname = \"r\"\nfrom = [\"trust\"]\nto = [\"untrust\"]\nsource = [\"any\"]\ndestination = [\"any\"]\nservice = [\"web\"]\naction = \"maybe\"\n",
            "fw.toml:22: unknown variant `maybe`, expected `allow` or `deny`",
        ),
        (
            "[[interface]]\nname = \"eth3\"\nzne = \"dmz\"\n",
            "fw.toml:17: unknown field `zne`, expected one of `name`, `zone`, `addresses`, `virtual_mac`",
        ),
    ];
    for (extra, want) in table {
        assert_eq!(err(extra), want);
    }
}

#[test]
fn the_session_table_size_is_bounded() {
    for (size, want) in [
        (1023, "1023 is below the minimum of 1024"),
        (67_108_865, "67108865 is above the maximum of 67108864"),
    ] {
        let e = Config::parse(&format!("session_table_size = {size}\n{BASE}"), "fw.toml")
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("session_table_size") && e.contains(want), "{e}");
    }
    for size in [1024, 67_108_864] {
        Config::parse(&format!("session_table_size = {size}\n{BASE}"), "fw.toml").unwrap();
    }
}

#[test]
fn the_shipped_example_parses_and_compiles() {
    let c = Config::example();
    let p = compile(&c).unwrap();
    assert_eq!(p.zones, ["trust", "untrust"]);
    assert_eq!(p.rule_count, 4);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_policy(rng: &mut Rng, rules: usize) -> String {
    let zones = ["a", "b", "c"];
    let mut s = String::from("instance = \"r\"\n");
    for (i, z) in zones.iter().enumerate() {
        s += &format!("[[interface]]\nname = \"if{i}\"\nzone = \"{z}\"\n");
    }
    let protos = ["tcp", "udp", "icmp", "any"];
    for i in 0..20 {
        let proto = protos[rng.below(4) as usize];
        let hi = if proto == "icmp" { 255 } else { 2000 };
        let lo = rng.below(hi);
        let ports = if rng.below(4) == 0 {
            String::new()
        } else {
            format!("ports = [\"{lo}-{}\"]\n", (lo + rng.below(200)).min(hi))
        };
        s += &format!("[[service]]\nname = \"s{i}\"\nprotocol = \"{proto}\"\n{ports}");
    }
    let pick_prefix = |rng: &mut Rng| -> String {
        match rng.below(6) {
            0 => "any".into(),
            1 => format!("2001:2:{:x}::/{}", rng.below(4), 32 + rng.below(3) * 16),
            _ => format!(
                "198.18.{}.0/{}",
                rng.below(4),
                [16, 22, 24, 28][rng.below(4) as usize]
            ),
        }
    };
    for i in 0..rules {
        let z = |rng: &mut Rng| {
            if rng.below(5) == 0 {
                "any".to_string()
            } else {
                zones[rng.below(3) as usize].to_string()
            }
        };
        let svc = if rng.below(8) == 0 {
            "any".to_string()
        } else {
            format!("s{}", rng.below(20))
        };
        let action = if rng.below(3) == 0 { "deny" } else { "allow" };
        s += &format!(
            "[[rule]]\nname = \"r{i}\"\nfrom = [\"{}\"]\nto = [\"{}\"]\nsource = [\"{}\", \"{}\"]\ndestination = [\"{}\"]\nservice = [\"{svc}\"]\naction = \"{action}\"\n",
            z(rng),
            z(rng),
            pick_prefix(rng),
            pick_prefix(rng),
            pick_prefix(rng)
        );
    }
    s
}

#[test]
fn compiled_classifier_agrees_with_first_match_scan() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let zones = ["a", "b", "c"];
    for (case, rules) in [5usize, 60, 300, 1000].into_iter().enumerate() {
        let text = random_policy(&mut rng, rules);
        let config = Config::parse(&text, "random.toml").unwrap();
        let compiled = compile(&config).unwrap();
        for _ in 0..3000 {
            let (f, t) = (rng.below(3) as u32, rng.below(3) as u32);
            let addr = |rng: &mut Rng, v6: bool| -> IpAddr {
                if v6 {
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        2,
                        rng.below(5) as u16,
                        0,
                        0,
                        0,
                        0,
                        rng.below(9) as u16,
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::new(
                        198,
                        18,
                        rng.below(5) as u8,
                        rng.below(256) as u8,
                    ))
                }
            };
            let v6 = rng.below(3) == 0;
            let (src, dst) = (addr(&mut rng, v6), addr(&mut rng, v6));
            let proto = [6u8, 17, 1, 58, 47][rng.below(5) as usize];
            let port = rng.below(2300) as u16;
            let (got, action) = compiled.classify(f, t, src, dst, proto, port);
            let want = config
                .first_match(zones[f as usize], zones[t as usize], src, dst, proto, port)
                .unwrap_or(if f == t { rules } else { rules + 1 });
            assert_eq!(
                got, want,
                "case {case}: {f}->{t} {src}->{dst} proto {proto} port {port}"
            );
            assert_eq!(
                action.rule_id as usize,
                if got < rules {
                    got + 1
                } else {
                    action.rule_id as usize
                }
            );
        }
    }
}
