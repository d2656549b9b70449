//! Free loopback ports for test services.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before. The kernel picks it (bind to port 0), so parallel test processes rarely
/// collide; services that fail to bind are restarted by their callers on a new port.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
        let port = listener
            .local_addr()
            .expect("local address of a bound socket")
            .port();
        let mut seen = HANDED_OUT.lock().expect("free port registry lock poisoned");
        if seen.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}
