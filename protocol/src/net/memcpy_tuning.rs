//! Keeps glibc's `memcpy` off `rep movsb` on AMD Zen 3 and later, where it can be 30 times
//! slower for some buffer placements.
//!
//! glibc (2.36, as in Debian 12) copies anything over about 2 KiB with `rep movsb` when the CPU
//! reports fast short `rep movsb` (FSRM). On AMD CPUs with FSRM that instruction slows to a crawl
//! when the destination sits a few bytes past the source modulo 4 KiB: on the benchmark machine
//! (EPYC, family 25) a 16 KiB copy runs at 2.7 GB/s in that placement and at 90 GB/s in others.
//! Every record our programs move is copied a few times (by rustls, and by us into write
//! batches), and where the allocator happens to put those buffers decides the placement, so a
//! process was either fast or 25 % slower for its whole life. Newer glibc releases stop using
//! `rep movsb` below the L2 cache size on these CPUs; this does the same for older ones, through
//! glibc's own documented tunable, which can only be set before the process starts. So on an
//! affected machine the program executes itself again, once, with the tunable set.
//!
//! Nothing changes when the CPU is not affected, when the operator already set the tunable, on
//! other C libraries or systems, or when the re-execution fails (the program then simply runs
//! as it is). Setting `TELEWORK_MEMCPY_TUNED=1` turns the re-execution off.

/// The glibc tunable, and the size up to which copies then use vector loops (above L2 sizes).
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
const THRESHOLD: usize = 1 << 20;

/// Set on the re-executed process so that it never executes itself again (glibc drops tunables
/// for set-user-ID programs, which would otherwise loop).
pub const REEXEC_MARK: &str = "TELEWORK_MEMCPY_TUNED";

/// The `GLIBC_TUNABLES` value to run with, given `/proc/cpuinfo` and the current value; `None`
/// when nothing should change.
pub fn wanted_tunables(cpuinfo: &str, current: Option<&str>) -> Option<String> {
    let affected = cpuinfo_field(cpuinfo, "vendor_id") == Some("AuthenticAMD")
        && cpuinfo_field(cpuinfo, "flags")
            .is_some_and(|f| f.split_whitespace().any(|x| x == "fsrm"));
    if !affected {
        return None;
    }
    let ours = format!("{TUNABLE}={THRESHOLD}");
    match current {
        Some(c) if c.contains(TUNABLE) => None,
        Some(c) if !c.is_empty() => Some(format!("{c}:{ours}")),
        _ => Some(ours),
    }
}

/// The value of the first `name : value` line of `/proc/cpuinfo`.
fn cpuinfo_field<'a>(cpuinfo: &'a str, name: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// Executes this program again with the tunable set, if this machine needs it. Call it first
/// thing in `main`, before any thread starts. Returns only when nothing was done or the
/// execution failed.
pub fn reexec_if_needed() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        use std::os::unix::process::CommandExt;

        if std::env::var_os(REEXEC_MARK).is_some() {
            return;
        }
        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let current = std::env::var("GLIBC_TUNABLES").ok();
        let Some(tunables) = wanted_tunables(&cpuinfo, current.as_deref()) else {
            return;
        };
        // The resolved path, not `/proc/self/exe`, so that the process keeps its name in `ps`.
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        // `exec` replaces this process (same pid, same open files) and returns only on failure,
        // in which case the program carries on untuned.
        let _ = command
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .env(REEXEC_MARK, "1")
            .exec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN3: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
                        flags\t\t: fpu sse2 avx2 erms fsrm vaes\n\nprocessor\t: 1\n";
    const ZEN2: &str = "vendor_id\t: AuthenticAMD\ncpu family\t: 23\nflags\t\t: fpu avx2 erms\n";
    const INTEL: &str = "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 erms fsrm\n";

    #[test]
    fn only_amd_cpus_with_fast_short_rep_movsb_are_tuned() {
        assert_eq!(
            wanted_tunables(ZEN3, None).as_deref(),
            Some("glibc.cpu.x86_rep_movsb_threshold=1048576")
        );
        assert_eq!(wanted_tunables(ZEN2, None), None);
        assert_eq!(wanted_tunables(INTEL, None), None);
        assert_eq!(wanted_tunables("", None), None);
    }

    #[test]
    fn the_operators_tunables_are_kept_and_their_own_threshold_wins() {
        assert_eq!(
            wanted_tunables(ZEN3, Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=1048576")
        );
        assert_eq!(
            wanted_tunables(ZEN3, Some("glibc.cpu.x86_rep_movsb_threshold=4096")),
            None
        );
        assert_eq!(
            wanted_tunables(ZEN3, Some("")).as_deref(),
            Some("glibc.cpu.x86_rep_movsb_threshold=1048576")
        );
    }
}
