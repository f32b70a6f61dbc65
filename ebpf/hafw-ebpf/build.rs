//! Rebuild when bpf-linker changes: the crate has an undeclared dependency on that binary.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
