//! What /proc says about a process and about the machine.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Clock ticks per second of the CPU times in /proc/<pid>/stat (USER_HZ, 100 on Linux).
pub(crate) const TICKS_PER_SEC: f64 = 100.0;

/// Resident memory of process `pid`, KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss_kib(&status).context("no VmRSS line")
}

/// User + system CPU time of process `pid` (all threads), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
}

/// CPU use of a set of processes over an interval, from /proc.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    pids: Vec<u32>,
    start: std::time::Instant,
    ticks: Vec<u64>,
}

impl CpuMeter {
    /// Starts measuring `pids` (processes that cannot be read count as 0).
    pub(crate) fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: std::time::Instant::now(),
            ticks: pids.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).collect(),
        }
    }

    /// CPU seconds each process used since [`CpuMeter::start`], in the order given (a
    /// process that can no longer be read counts what it had used when last read: 0).
    pub(crate) fn seconds_each(&self) -> Vec<f64> {
        self.pids
            .iter()
            .zip(&self.ticks)
            .map(|(&p, &before)| {
                cpu_ticks(p).unwrap_or(before).saturating_sub(before) as f64 / TICKS_PER_SEC
            })
            .collect()
    }
}

/// Busy (not idle, not waiting for I/O) ticks of the whole machine, all CPUs together.
pub(crate) fn machine_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_busy_ticks(&s))
        .unwrap_or(0)
}

fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some(total - idle)
}

/// CPU use of the target's processes, Redis and the load generator during a measurement,
/// each in percent of one core; and of everything else on the machine, which on a shared
/// machine tells how disturbed a measurement was.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct CpuUse {
    /// The target's server processes together.
    pub(crate) server: f64,
    /// redis-server.
    pub(crate) redis: f64,
    /// This load generator.
    pub(crate) loadgen: f64,
    /// Every other process and the kernel's own work (machine busy time minus the above).
    #[serde(default)]
    pub(crate) other: f64,
}

/// CPU time used during a measurement, in seconds: what [`CpuUse`] gives as rates, as
/// amounts, with each Redis process on its own (one per primary of a Redis Cluster). An
/// amount divided by the work done (e.g. CPU seconds per 100 000 deliveries) compares
/// setups whose wall-clock rates a shared machine's scheduler blurs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CpuSeconds {
    /// Wall-clock seconds metered.
    pub(crate) wall: f64,
    /// The target's server processes together.
    pub(crate) server: f64,
    /// Every Redis process together.
    pub(crate) redis: f64,
    /// Each Redis process, in the order of `--redis-pid`.
    pub(crate) redis_each: Vec<f64>,
    /// This load generator.
    pub(crate) loadgen: f64,
}

impl CpuSeconds {
    /// The same amounts per `per` units of `work` (e.g. CPU seconds per 100 000 deliveries);
    /// `None` when no work was done. `wall` is scaled too (seconds per `per` units).
    pub(crate) fn per(&self, work: u64, per: f64) -> Option<CpuSeconds> {
        if work == 0 {
            return None;
        }
        let scale = per / work as f64;
        Some(CpuSeconds {
            wall: self.wall * scale,
            server: self.server * scale,
            redis: self.redis * scale,
            redis_each: self.redis_each.iter().map(|s| s * scale).collect(),
            loadgen: self.loadgen * scale,
        })
    }
}

/// Meters for [`CpuUse`] and [`CpuSeconds`].
#[derive(Debug)]
pub(crate) struct CpuMeters {
    server: CpuMeter,
    redis: CpuMeter,
    loadgen: CpuMeter,
    busy: u64,
}

impl CpuMeters {
    /// Starts measuring the target's processes `server` and the Redis processes `redis`.
    pub(crate) fn start(server: &[u32], redis: &[u32]) -> Self {
        Self {
            server: CpuMeter::start(server),
            redis: CpuMeter::start(redis),
            loadgen: CpuMeter::start(&[std::process::id()]),
            busy: machine_busy_ticks(),
        }
    }

    /// What was used since the start, as rates and as amounts, from one reading of /proc.
    pub(crate) fn read_both(&self) -> (CpuUse, CpuSeconds) {
        let secs = self.loadgen.start.elapsed().as_secs_f64().max(1e-3);
        let busy = machine_busy_ticks().saturating_sub(self.busy) as f64 / TICKS_PER_SEC;
        let redis_each = self.redis.seconds_each();
        let amounts = CpuSeconds {
            wall: secs,
            server: self.server.seconds_each().iter().sum(),
            redis: redis_each.iter().sum(),
            redis_each,
            loadgen: self.loadgen.seconds_each().iter().sum(),
        };
        let percent = |s: f64| s / secs * 100.0;
        let rates = CpuUse {
            server: percent(amounts.server),
            redis: percent(amounts.redis),
            loadgen: percent(amounts.loadgen),
            other: percent((busy - amounts.server - amounts.redis - amounts.loadgen).max(0.0)),
        };
        (rates, amounts)
    }
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("unexpected /proc/<pid>/stat: {stat:?}")
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// The machine a run happened on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    /// Online CPUs.
    pub(crate) cpus: usize,
    /// CPU model from /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// Total memory, GiB.
    pub(crate) memory_gib: f64,
    /// Kernel release.
    pub(crate) kernel: String,
}

impl Machine {
    /// Reads this machine's description.
    pub(crate) fn current() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            memory_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0 / 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss() {
        let status = "Name:\tsessionhub\nVmPeak:\t  10 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_even_with_odd_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0 \
                    100 1000 200";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 22);
        assert!(parse_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn meters_this_process() {
        let meter = CpuMeter::start(&[std::process::id()]);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert_eq!(meter.seconds_each().len(), 1);
        assert!(meter.seconds_each()[0] >= 0.0);
        assert!(CpuMeter::start(&[]).seconds_each().is_empty());
    }

    #[test]
    fn meters_several_redis_processes_each_and_together() {
        let me = std::process::id();
        let meters = CpuMeters::start(&[], &[me, me, u32::MAX]);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let (rates, amounts) = meters.read_both();
        assert_eq!(amounts.redis_each.len(), 3);
        // The same process twice reads the same; one that does not exist reads 0.
        assert_eq!(amounts.redis_each[0], amounts.redis_each[1]);
        assert_eq!(amounts.redis_each[2], 0.0);
        assert_eq!(amounts.redis, amounts.redis_each.iter().sum::<f64>());
        assert_eq!(amounts.server, 0.0);
        assert!(amounts.wall > 0.0);
        let expected = amounts.redis / amounts.wall * 100.0;
        assert!((rates.redis - expected).abs() < 1e-9);
    }

    #[test]
    fn cpu_seconds_per_unit_of_work() {
        let used = CpuSeconds {
            wall: 10.0,
            server: 3.0,
            redis: 1.5,
            redis_each: vec![0.5, 1.0],
            loadgen: 2.0,
        };
        let per = used.per(300_000, 100_000.0).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(per.server, 1.0));
        assert!(close(per.redis, 0.5));
        assert!(close(per.redis_each[0], 0.5 / 3.0) && close(per.redis_each[1], 1.0 / 3.0));
        assert!(close(per.loadgen, 2.0 / 3.0));
        assert!(close(per.wall, 10.0 / 3.0));
        assert_eq!(used.per(0, 100_000.0), None);
    }

    #[test]
    fn reads_machine_busy_time() {
        let stat = "cpu  100 5 50 1000 20 1 4 3 0 0\ncpu0 50 2 25 500 10 0 2 1 0 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(163));
        assert_eq!(parse_busy_ticks("intr 1 2 3"), None);
    }

    #[test]
    fn describes_this_machine() {
        let m = Machine::current();
        assert!(m.cpus >= 1);
    }
}
