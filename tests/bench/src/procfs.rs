//! The gateway's (and the broker's) CPU time and resident memory, read from /proc (Linux only),
//! and the machine's load average and busy share of its cores, recorded with every result
//! because the machine is shared.

use std::sync::OnceLock;

/// A process whose usage is sampled.
#[derive(Clone, Copy, Debug)]
pub struct Process {
    pid: u32,
}

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// VmRSS, bytes.
    pub rss: u64,
}

impl Process {
    /// The process `pid`; fails if /proc does not show it.
    pub fn new(pid: u32) -> anyhow::Result<Process> {
        let p = Process { pid };
        p.sample().map_err(|e| anyhow::anyhow!("cannot read /proc/{pid} ({e}): is the pid right?"))?;
        Ok(p)
    }

    /// The process itself (a gateway started in-process, as the tests do: its figures then
    /// include the generator).
    pub fn current() -> Process {
        Process { pid: std::process::id() }
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads CPU time and RSS now.
    pub fn sample(&self) -> std::io::Result<Sample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may contain spaces) start at the state, field 3.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // utime is field 14, stime 15: indexes 11 and 12 counted from the state (field 3).
        let cpu_s = (ticks(11) + ticks(12)) as f64 / clock_ticks() as f64;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        Ok(Sample { cpu_s, rss })
    }
}

impl Process {
    /// Open file descriptors now (the entries of /proc/PID/fd: sockets, files, epoll, pipes).
    pub fn fds(&self) -> std::io::Result<u64> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count() as u64)
    }
}

/// Clock ticks per second for /proc/PID/stat (`getconf CLK_TCK`, 100 if that fails).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// The process that has a UDP socket bound to `port` (from /proc/net/udp{,6} and the fds of
/// every process this user may read); None if there is none or several.
pub fn udp_port_owner(port: u16) -> Option<u32> {
    socket_owner(&socket_inodes(&["/proc/net/udp", "/proc/net/udp6"], port, None))
}

/// The process that listens on TCP `port` (a socket in state LISTEN in /proc/net/tcp{,6}), such
/// as the MQTT broker; None if there is none or several.
pub fn tcp_listener_owner(port: u16) -> Option<u32> {
    // State 0A is TCP_LISTEN.
    socket_owner(&socket_inodes(&["/proc/net/tcp", "/proc/net/tcp6"], port, Some("0A")))
}

/// `socket:[INODE]` of the sockets in `tables` whose local port is `port` (and whose state,
/// column 4, is `state` if given).
fn socket_inodes(tables: &[&str], port: u16, state: Option<&str>) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in tables {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port =
                f.get(1).and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && state.is_none_or(|s| f.get(3) == Some(&s))
                && let Some(inode) = f.get(9)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    inodes
}

/// The one process that holds any of `inodes` open; None if none or several do.
fn socket_owner(inodes: &[String]) -> Option<u32> {
    if inodes.is_empty() {
        return None;
    }
    let mut owners = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str())) {
                owners.push(pid);
                break;
            }
        }
    }
    match owners.as_slice() {
        [pid] => Some(*pid),
        _ => None,
    }
}

/// The TCP port of a broker URL: `mqtt://host[:port][/…]` (1883 by default) or
/// `mqtts://host[:port]` (8883); None if it is neither.
pub fn mqtt_url_port(url: &str) -> Option<u16> {
    let (rest, default) = if let Some(r) = url.strip_prefix("mqtt://") {
        (r, 1883)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (r, 8883)
    } else {
        return None;
    };
    let authority = rest.split('/').next().unwrap_or("");
    // `[::1]:1883`, `127.0.0.1:1883`, `localhost`.
    let after_host = authority.rsplit_once(']').map_or(authority, |(_, r)| r);
    match after_host.rsplit_once(':') {
        Some((_, port)) => port.parse().ok(),
        None => Some(default),
    }
}

/// The machine's CPU time since boot, summed over all cores (the `cpu` line of /proc/stat), in
/// clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every state (user, nice, system, idle, iowait, irq, softirq, steal).
    pub total: u64,
    /// Idle and iowait: time a core had nothing to run.
    pub idle: u64,
    /// Cores (the `cpuN` lines).
    pub cores: u32,
}

impl CpuTimes {
    /// Reads /proc/stat now.
    pub fn now() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parses the text of /proc/stat. Guest time is already counted in user and nice, so only
    /// the first eight columns are summed.
    pub fn parse(text: &str) -> Option<CpuTimes> {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
        if v.len() < 4 {
            return None;
        }
        let cores = text
            .lines()
            .filter(|l| l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit())))
            .count() as u32;
        Some(CpuTimes { total: v.iter().sum(), idle: v[3] + v.get(4).copied().unwrap_or(0), cores })
    }

    /// The non-idle share of all cores between `before` and `self`, in percent (None if no
    /// tick passed).
    pub fn busy_pct_since(&self, before: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(before.total)?;
        let idle = self.idle.saturating_sub(before.idle).min(total);
        (total > 0).then(|| (total - idle) as f64 * 100.0 / total as f64)
    }
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// The machine's count of UDP datagrams dropped because a socket's receive buffer was full
/// (`Udp: RcvbufErrors` in /proc/net/snmp): where NON loss and lost ACKs go on loopback.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Datagrams dropped so far by the UDP sockets bound to local `port` (the `drops` column of
/// /proc/net/udp{,6}: full receive buffer). None if no socket is bound to it.
pub fn udp_port_drops(port: u16) -> Option<u64> {
    let mut total = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port =
                f.get(1).and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                let drops = f.get(12).and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
                total = Some(total.unwrap_or(0) + drops);
            }
        }
    }
    total
}

/// The soft limit on open files of this process.
pub fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// Open file descriptors of this process now.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let s = Process::current().sample().unwrap();
        assert!(s.rss > 0);
        assert!(Process::current().fds().unwrap() >= 3);
        assert!(s.cpu_s >= 0.0);
        assert!(fd_limit() >= 16);
        assert!(udp_rcvbuf_errors().is_some());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert_eq!(udp_port_owner(port), Some(std::process::id()));
        assert_eq!(udp_port_drops(port), Some(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(tcp_listener_owner(port), Some(std::process::id()));
        // Connections on that port (state ESTABLISHED) are not listeners.
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(tcp_listener_owner(port), Some(std::process::id()));
        let t = CpuTimes::now().unwrap();
        assert!(t.cores >= 1 && t.total >= t.idle);
    }

    #[test]
    fn proc_stat_gives_the_busy_share_of_all_cores() {
        let before = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1 2 3\nctxt 9\n";
        let after = "cpu  250 10 90 1000 50 0 0 0 20 0\ncpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\n";
        let b = CpuTimes::parse(before).unwrap();
        assert_eq!(b, CpuTimes { total: 1000, idle: 850, cores: 2 });
        let a = CpuTimes::parse(after).unwrap();
        // 400 ticks passed (guest time is not added twice), 200 of them idle.
        assert_eq!(a.total - b.total, 400);
        assert_eq!(a.busy_pct_since(&b), Some(50.0));
        assert_eq!(b.busy_pct_since(&b), None);
        assert_eq!(b.busy_pct_since(&a), None);
        // An older kernel's shorter line still parses; garbage does not.
        assert_eq!(CpuTimes::parse("cpu 1 2 3 4\ncpu0 1 2 3 4\n"), Some(CpuTimes { total: 10, idle: 4, cores: 1 }));
        assert_eq!(CpuTimes::parse("cpu 1 x 3 4\n"), None);
        assert_eq!(CpuTimes::parse("intr 1\n"), None);
    }

    #[test]
    fn the_broker_port_comes_from_the_mqtt_url() {
        assert_eq!(mqtt_url_port("mqtt://127.0.0.1:21883"), Some(21883));
        assert_eq!(mqtt_url_port("mqtt://localhost"), Some(1883));
        assert_eq!(mqtt_url_port("mqtts://broker:8884/"), Some(8884));
        assert_eq!(mqtt_url_port("mqtts://[::1]"), Some(8883));
        assert_eq!(mqtt_url_port("mqtt://[::1]:1999"), Some(1999));
        assert_eq!(mqtt_url_port("http://x:1"), None);
        assert_eq!(mqtt_url_port("mqtt://x:notaport"), None);
    }
}
