//! What the load generator reads off the server it measures (Linux `/proc`; absent
//! elsewhere): memory, descriptors, the store's files, and the bytes written per step.

/// What a soak watches on the server between steps (Linux `/proc`; absent elsewhere).
pub(super) fn server_report(pid: Option<u32>, data: Option<&std::path::Path>) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(pid) = pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        parts.push(format!(
            "RSS {:.1} MiB, {fds} open descriptors",
            rss_kib / 1024.0
        ));
    }
    if let Some(d) = data {
        let mib =
            |f: &str| std::fs::metadata(d.join(f)).map_or(0.0, |m| m.len() as f64 / 1_048_576.0);
        parts.push(format!(
            "WAL {:.0} MiB, database {:.0} MiB",
            mib("spendgate.db-wal"),
            mib("spendgate.db")
        ));
    }
    (!parts.is_empty()).then(|| format!("  server: {}", parts.join("; ")))
}

/// Bytes the process has caused to be written to storage (Linux `/proc/PID/io`,
/// `write_bytes`: WAL frames, checkpoint copies, anything else it wrote), if readable.
pub(super) fn server_write_bytes(pid: u32) -> Option<u64> {
    write_bytes_of(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

fn write_bytes_of(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The step's writes per authorization: the cost the durable path pays in I/O (a decision
/// stores ≈ 250 B; what SQLite writes for it — whole pages, twice — is far more).
pub(super) fn write_report(bytes: u64, authorizations: usize) -> String {
    format!(
        "  server wrote {:.1} MiB to storage in the step: {:.0} B per authorization (captures and reversals included)",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / authorizations.max(1) as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_bytes_are_read_from_the_io_accounting_line_not_its_cancelled_twin() {
        let io = "rchar: 2012\nwchar: 900\nsyscr: 7\nsyscw: 3\nread_bytes: 4096\n\
                  write_bytes: 1261568\ncancelled_write_bytes: 8192\n";
        assert_eq!(write_bytes_of(io), Some(1_261_568));
        assert_eq!(write_bytes_of("rchar: 1\n"), None);
    }

    #[test]
    fn this_process_s_own_write_accounting_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(server_write_bytes(std::process::id()).is_some());
        }
    }

    #[test]
    fn the_write_report_divides_by_the_authorizations_of_the_step() {
        let line = write_report(10 * 1_048_576, 1024);
        assert!(line.contains("10.0 MiB"), "{line}");
        assert!(line.contains("10240 B per authorization"), "{line}");
        // A step with no answers does not divide by zero.
        assert!(write_report(5, 0).contains("5 B per authorization"));
    }
}
