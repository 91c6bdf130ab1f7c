//! CPU time of processes on this machine, read from `/proc` (the `procfs` crate): the service
//! child's, and the real back ends' (the processes listening on the broker's and the store's
//! loopback ports). The rooms section divides each one's CPU time over a run by the sends acked
//! in it, which says which process pays what for a send as the rooms grow. Every back end runs on
//! loopback here, so its process is on this machine; one the bench cannot see (another user's,
//! without the right to read its descriptors) is simply not reported.

use std::net::IpAddr;

use procfs::process::{FDTarget, Process};

/// A process whose CPU time is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pid: i32,
}

impl Cpu {
    /// The process `pid` (a child the bench started).
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self {
            pid: i32::try_from(pid).ok()?,
        })
    }

    /// The process listening on loopback port `port` of this machine, if the bench can see it.
    pub fn listening_on(port: u16) -> Option<Self> {
        let listening = |entries: procfs::ProcResult<Vec<procfs::net::TcpNetEntry>>| {
            entries.into_iter().flatten().filter(|e| {
                e.state == procfs::net::TcpState::Listen && e.local_address.port() == port
            })
        };
        let sockets: Vec<u64> = listening(procfs::net::tcp())
            .chain(listening(procfs::net::tcp6()))
            .map(|e| e.inode)
            .collect();
        if sockets.is_empty() {
            return None;
        }
        procfs::process::all_processes()
            .ok()?
            .flatten()
            .find(|process| {
                process.fd().is_ok_and(|fds| {
                    fds.flatten().any(
                        |fd| matches!(fd.target, FDTarget::Socket(inode) if sockets.contains(&inode)),
                    )
                })
            })
            .map(|process| Self { pid: process.pid })
    }

    /// The process serving the first node of an AMQP URL list, when that node is on loopback.
    pub fn broker(amqp_urls: &str) -> Option<Self> {
        Self::serving(crate::broker::rmq::first_node_address(amqp_urls)?)
    }

    /// The process serving the first host of a MongoDB URL, when that host is on loopback.
    pub fn store(mongo_url: &str) -> Option<Self> {
        Self::serving(crate::store::mongo::first_server_address(mongo_url)?)
    }

    /// The process listening at `(host, port)`, when the host is on loopback.
    fn serving((host, port): (String, u16)) -> Option<Self> {
        loopback(&host).then(|| Self::listening_on(port))?
    }

    /// CPU seconds (user and system, every thread) the process has used so far; `None` once it
    /// is gone.
    pub fn seconds(&self) -> Option<f64> {
        let stat = Process::new(self.pid).ok()?.stat().ok()?;
        Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
    }
}

/// Whether `host` names this machine's loopback interface.
fn loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            assert!(loopback(host), "{host}");
        }
        for host in ["10.0.0.1", "example.com", "0.0.0.0"] {
            assert!(!loopback(host), "{host}");
        }
    }

    #[test]
    fn a_busy_process_has_used_more_cpu_time() {
        let me = Cpu::of(std::process::id()).expect("a pid");
        let before = me.seconds().expect("this process's stat");
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(me.seconds().expect("still here") > before);
    }

    #[test]
    fn the_process_listening_on_a_port_is_found_and_none_once_it_closes() {
        let me = Cpu::of(std::process::id()).expect("a pid");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        assert_eq!(Cpu::listening_on(port), Some(me));
        drop(listener);
        assert_eq!(Cpu::listening_on(port), None);
    }
}
