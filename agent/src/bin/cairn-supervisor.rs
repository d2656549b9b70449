//! `cairn-supervisor CONFIG`: the per-container supervisor the agent starts (see
//! `cairn_agent::supervisor`). Not meant to be run by hand.

fn main() {
    let Some(config) = std::env::args_os().nth(1) else {
        eprintln!("usage: cairn-supervisor CONFIG");
        std::process::exit(2);
    };
    std::process::exit(cairn_agent::supervisor::run(std::path::Path::new(&config)));
}
