//! Host ports held by processes Berth did not start. The server hands out ports from the node's
//! range; something else on the machine may already listen on one. The agent finds out by
//! binding, tells the server, and looks again with each heartbeat until the port is free.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::sync::{Arc, Mutex};

use crate::lock;

/// Those of `ports` another process listens on. Binding the wildcard address conflicts with a
/// listener on any address of the family; the socket gets SO_REUSEADDR, so a port left in
/// TIME_WAIT by an ended instance does not count.
pub fn held(ports: &[u16]) -> Vec<u16> {
    ports.iter().copied().filter(|&p| is_held(p)).collect()
}

fn is_held(port: u16) -> bool {
    let in_use = |r: std::io::Result<TcpListener>| matches!(r, Err(e) if e.kind() == ErrorKind::AddrInUse);
    // A machine without IPv6 fails the second bind for another reason: that says nothing.
    in_use(TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))) || in_use(TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))
}

/// The ports this agent found held, shared by every supervisor and the heartbeat.
#[derive(Debug, Clone, Default)]
pub struct TakenPorts(Arc<Mutex<BTreeSet<u16>>>);

impl TakenPorts {
    pub fn add(&self, ports: &[u16]) {
        lock(&self.0).extend(ports.iter().copied());
    }

    /// Drops the ports that are free again and returns those still held.
    pub fn recheck(&self) -> Vec<u16> {
        let known: Vec<u16> = lock(&self.0).iter().copied().collect();
        let still = held(&known);
        let mut set = lock(&self.0);
        // A supervisor may have added one meanwhile: keep it.
        set.retain(|p| still.contains(p) || !known.contains(p));
        set.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_on_loopback_holds_its_port_until_closed() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let free_port = free.local_addr().unwrap().port();
        drop(free);
        assert_eq!(held(&[port, free_port]), vec![port]);
        let taken = TakenPorts::default();
        taken.add(&[port, free_port]);
        assert_eq!(taken.recheck(), vec![port]);
        drop(listener);
        assert_eq!(taken.recheck(), Vec::<u16>::new());
    }
}
