//! The process's resident memory as Linux reports it in `/proc/self/status`: `VmRSS` now and
//! `VmHWM`, its peak so far. The bench's HTTP client runs in the same process as the service, so
//! both count in it.

/// Resident memory of this process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// `VmRSS`: resident now.
    pub now_kib: u64,
    /// `VmHWM`: the peak since the process started.
    pub peak_kib: u64,
}

/// Reads this process's resident memory; `None` where `/proc/self/status` is not there (not
/// Linux) or has no such lines.
pub fn read() -> Option<Resident> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status(&status)
}

/// Reads another process's resident memory (a service the bench started).
pub fn read_pid(pid: u32) -> Option<Resident> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&status)
}

/// Picks `VmRSS` and `VmHWM` out of the text of a `/proc/<pid>/status` file.
pub fn parse_status(status: &str) -> Option<Resident> {
    let kib = |key: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(Resident {
        now_kib: kib("VmRSS")?,
        peak_kib: kib("VmHWM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peak_and_current_resident_memory() {
        let status = "Name:\tmess-chat\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\n\
                      VmRSS:\t   40000 kB\nThreads:\t5\n";
        assert_eq!(
            parse_status(status),
            Some(Resident {
                now_kib: 40000,
                peak_kib: 51234
            })
        );
    }

    #[test]
    fn a_status_without_memory_lines_gives_nothing() {
        assert_eq!(parse_status("Name:\tx\nVmHWMx:\t1 kB\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_size_on_linux() {
        if cfg!(target_os = "linux") {
            let resident = read().expect("/proc/self/status");
            assert!(resident.peak_kib >= resident.now_kib && resident.now_kib > 0);
        }
    }
}
