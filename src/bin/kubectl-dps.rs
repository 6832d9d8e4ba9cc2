//! `kubectl dps`: the kubectl plugin (see [`dps_operator::plugin`]).

fn main() -> std::process::ExitCode {
    dps_operator::plugin::main()
}
