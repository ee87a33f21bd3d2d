//! Rebuild the kernel object when the bpf-linker binary changes (cargo cannot see it
//! otherwise). `scripts/bootstrap.sh` installs it.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found ({err}); run scripts/bootstrap.sh first")
        }
    }
}
