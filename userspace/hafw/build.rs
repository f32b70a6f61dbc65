//! Builds the XDP programs (`ebpf/hafw-ebpf`) for the BPF target with the nightly toolchain and
//! puts the object in OUT_DIR, where `include_bytes_aligned!` picks it up.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/hafw-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "hafw-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
