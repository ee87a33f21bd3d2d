//! `sensor`: see `sensor --help`. Everything lives in the library; this only maps the
//! outcome to an exit code (0 ok, 1 runtime failure, 2 usage or configuration error).
// The dependencies are the library's, where the lint applies; this target only calls it.
#![allow(unused_crate_dependencies)]

fn main() -> std::process::ExitCode {
    sensor::cli::main()
}
