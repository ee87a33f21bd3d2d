//! `sensor`: see `sensor --help`. Everything lives in the library; this only maps the
//! outcome to an exit code (0 ok, 1 runtime failure, 2 usage or configuration error).
fn main() -> std::process::ExitCode {
    sensor::cli::main()
}
