//! The resident memory of a process as Linux reports it in `/proc/<pid>/status` (read with the
//! `procfs` crate): `VmRSS` now and `VmHWM`, its peak so far. The bench's HTTP client runs in the
//! same process as the service, so both count in it.

use procfs::process::Process;

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// `VmRSS`: resident now.
    pub now_kib: u64,
    /// `VmHWM`: the peak since the process started.
    pub peak_kib: u64,
}

/// Reads this process's resident memory; `None` where `/proc` does not say (not Linux).
pub fn read() -> Option<Resident> {
    resident(Process::myself().ok()?)
}

/// Reads another process's resident memory (a service the bench started).
pub fn read_pid(pid: u32) -> Option<Resident> {
    resident(Process::new(i32::try_from(pid).ok()?).ok()?)
}

fn resident(process: Process) -> Option<Resident> {
    let status = process.status().ok()?;
    Some(Resident {
        now_kib: status.vmrss?,
        peak_kib: status.vmhwm?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size_and_a_peak_at_least_as_large() {
        let resident = read().expect("/proc/self/status");
        assert!(resident.peak_kib >= resident.now_kib && resident.now_kib > 0);
        assert_eq!(
            read_pid(std::process::id()).map(|r| r.peak_kib > 0),
            Some(true)
        );
    }
}
