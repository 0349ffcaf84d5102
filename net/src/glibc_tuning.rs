//! Two glibc tunables that cost our programs a fifth to a quarter of their CPU per GB when left
//! at their defaults. They can only be set before the process starts, so a program that
//! needs them executes itself again, once, with them set.
//!
//! **The heap's trim threshold.** The data path allocates and frees 16-64 KiB buffers all the
//! time (TLS records in rustls, HTTP/2 frames in `h2`, QUIC packets in quinn). With glibc's
//! default (128 KiB, adjusted upwards only by large mmapped frees), freeing such a buffer at
//! the top of a heap often hands the pages back to the kernel, and the next allocation faults
//! them in again, zero-filled: about 20% of each program's CPU per GB in the benchmark
//! (`docs/performance.md`). With the trim threshold at 4 MiB and the mmap threshold at 1 MiB
//! (setting one turns off glibc's adjustment of both), freed buffers are reused; idle memory
//! per agent, session and tunnel is unchanged.
//!
//! **`memcpy` on AMD Zen 3 and later.** glibc (2.36, as in Debian 12) copies anything over
//! about 2 KiB with `rep movsb` when the CPU reports fast short `rep movsb` (FSRM). On AMD CPUs
//! with FSRM that instruction slows to a crawl when the destination sits a few bytes past the
//! source modulo 4 KiB: on the benchmark machine (EPYC, family 25) a 16 KiB copy runs at 2.7
//! GB/s in that placement and at 90 GB/s in others. Where the allocator puts the buffers
//! decides the placement, so a process was either fast or up to a quarter slower per GB for its
//! whole life. Newer glibc releases stop using `rep movsb` below the L2 cache size on these
//! CPUs; the tunable does the same for older ones.
//!
//! Nothing changes when the operator already set every tunable we would, when the program runs
//! with raised privileges (glibc ignores tunables then), on other C libraries or systems, or
//! when the re-execution fails (the program then runs as it is). Setting `TELEWORK_GLIBC_TUNED`
//! (to anything) turns the re-execution off.

use std::ffi::OsString;

/// The copy threshold, and the size up to which copies then use vector loops (above L2 sizes).
const REP_MOVSB: (&str, usize) = ("glibc.cpu.x86_rep_movsb_threshold", 1 << 20);

/// The heap tunables, on every glibc machine.
const MALLOC: [(&str, usize); 2] = [
    ("glibc.malloc.trim_threshold", 4 << 20),
    ("glibc.malloc.mmap_threshold", 1 << 20),
];

/// Set on the re-executed process so that it never executes itself again.
pub const REEXEC_MARK: &str = "TELEWORK_GLIBC_TUNED";

/// On the re-executed process: the operator's own `GLIBC_TUNABLES`, if there was one, so that
/// programs we start (the RDP client) get the environment they would have had.
const ORIGINAL_TUNABLES: &str = "TELEWORK_ORIGINAL_GLIBC_TUNABLES";

/// What the process is started with, as far as the decision goes.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    /// `/proc/cpuinfo`.
    pub cpuinfo: &'a str,
    /// `GLIBC_TUNABLES`, if set.
    pub tunables: Option<&'a str>,
    /// Whether [`REEXEC_MARK`] is set.
    pub marked: bool,
    /// Whether the process runs in secure mode (set-user-ID, file capabilities: `AT_SECURE`).
    pub secure: bool,
}

/// The `GLIBC_TUNABLES` value to execute again with; `None` when nothing should change.
pub fn wanted_tunables(start: Start<'_>) -> Option<String> {
    if start.marked || start.secure {
        return None;
    }
    let cpuinfo = start.cpuinfo;
    let slow_rep_movsb = cpuinfo_field(cpuinfo, "vendor_id") == Some("AuthenticAMD")
        && cpuinfo_field(cpuinfo, "flags")
            .is_some_and(|f| f.split_whitespace().any(|x| x == "fsrm"));
    let operators = start.tunables.unwrap_or("");
    // The operator's own setting of a tunable wins.
    let ours: Vec<String> = MALLOC
        .iter()
        .chain(slow_rep_movsb.then_some(&REP_MOVSB))
        .filter(|(name, _)| !operators.contains(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if ours.is_empty() {
        return None;
    }
    let ours = ours.join(":");
    Some(if operators.is_empty() {
        ours
    } else {
        format!("{operators}:{ours}")
    })
}

/// The value of the first `name : value` line of `/proc/cpuinfo`.
fn cpuinfo_field<'a>(cpuinfo: &'a str, name: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// Whether an auxiliary vector (`/proc/self/auxv`, native-endian 64-bit pairs) says
/// `AT_SECURE`. Unreadable or odd input counts as secure, so the program is left alone.
pub fn auxv_is_secure(auxv: &[u8]) -> bool {
    const AT_SECURE: u64 = 23;
    if auxv.is_empty() || !auxv.len().is_multiple_of(16) {
        return true;
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_ne_bytes(w)
    };
    auxv.chunks_exact(16)
        .find(|pair| word(&pair[..8]) == AT_SECURE)
        .is_some_and(|pair| word(&pair[8..]) != 0)
}

/// Executes this program again with the tunables set, if this machine needs them. Call it first
/// thing in `main`, before any thread starts. Returns only when nothing was done or the
/// execution failed.
pub fn reexec_if_needed() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        use std::os::unix::process::CommandExt;

        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        // Tunables are ASCII; anything else is the operator's business, left alone.
        let tunables = match std::env::var_os("GLIBC_TUNABLES").map(OsString::into_string) {
            None => None,
            Some(Ok(tunables)) => Some(tunables),
            Some(Err(_)) => return,
        };
        let start = Start {
            cpuinfo: &cpuinfo,
            tunables: tunables.as_deref(),
            marked: std::env::var_os(REEXEC_MARK).is_some(),
            secure: std::fs::read("/proc/self/auxv").map_or(true, |a| auxv_is_secure(&a)),
        };
        let Some(wanted) = wanted_tunables(start) else {
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
        if let Some(original) = &tunables {
            command.env(ORIGINAL_TUNABLES, original);
        }
        // `exec` replaces this process (same pid, same open files) and returns only on failure.
        let _ = command
            .args(args)
            .env("GLIBC_TUNABLES", wanted)
            .env(REEXEC_MARK, "1")
            .exec();
        survive_sigpipe_again();
    }
}

/// A failed `exec` has already put SIGPIPE back to its default action, which would let a write
/// to a closed socket kill the program; catching it restores what the Rust runtime had set up
/// (writes then fail with EPIPE instead).
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn survive_sigpipe_again() {
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGPIPE,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
}

/// The environment changes that give a program we start the environment this one was started
/// with: `(name, Some(value))` to set, `(name, None)` to remove. Empty when this process was
/// not re-executed.
pub fn child_env() -> Vec<(&'static str, Option<OsString>)> {
    child_env_for(
        std::env::var_os(REEXEC_MARK).is_some(),
        std::env::var_os(ORIGINAL_TUNABLES),
    )
}

fn child_env_for(
    reexecuted: bool,
    original: Option<OsString>,
) -> Vec<(&'static str, Option<OsString>)> {
    if !reexecuted {
        return Vec::new();
    }
    vec![
        ("GLIBC_TUNABLES", original),
        (ORIGINAL_TUNABLES, None),
        (REEXEC_MARK, None),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN3: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
                        flags\t\t: fpu sse2 avx2 erms fsrm vaes\n\nprocessor\t: 1\n";
    const ZEN2: &str = "vendor_id\t: AuthenticAMD\ncpu family\t: 23\nflags\t\t: fpu avx2 erms\n";
    const INTEL: &str = "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 erms fsrm\n";
    const MALLOC_TUNED: &str =
        "glibc.malloc.trim_threshold=4194304:glibc.malloc.mmap_threshold=1048576";
    const ALL_TUNED: &str = "glibc.malloc.trim_threshold=4194304:\
        glibc.malloc.mmap_threshold=1048576:glibc.cpu.x86_rep_movsb_threshold=1048576";

    fn start(cpuinfo: &str) -> Start<'_> {
        Start {
            cpuinfo,
            tunables: None,
            marked: false,
            secure: false,
        }
    }

    #[test]
    fn the_heap_everywhere_and_memcpy_only_on_amd_cpus_with_fast_short_rep_movsb() {
        assert_eq!(wanted_tunables(start(ZEN3)).as_deref(), Some(ALL_TUNED));
        assert_eq!(wanted_tunables(start(ZEN2)).as_deref(), Some(MALLOC_TUNED));
        assert_eq!(wanted_tunables(start(INTEL)).as_deref(), Some(MALLOC_TUNED));
        assert_eq!(wanted_tunables(start("")).as_deref(), Some(MALLOC_TUNED));
    }

    #[test]
    fn the_operators_tunables_are_kept_and_their_own_values_win() {
        let with = |t| {
            wanted_tunables(Start {
                tunables: Some(t),
                ..start(ZEN3)
            })
        };
        assert_eq!(
            with("glibc.malloc.arena_max=2").as_deref(),
            Some(format!("glibc.malloc.arena_max=2:{ALL_TUNED}").as_str())
        );
        assert_eq!(
            with("glibc.cpu.x86_rep_movsb_threshold=4096:glibc.malloc.trim_threshold=0").as_deref(),
            Some(
                "glibc.cpu.x86_rep_movsb_threshold=4096:glibc.malloc.trim_threshold=0:\
                 glibc.malloc.mmap_threshold=1048576"
            )
        );
        assert_eq!(
            with("glibc.cpu.x86_rep_movsb_threshold=4096:glibc.malloc.trim_threshold=0:glibc.malloc.mmap_threshold=0"),
            None,
            "nothing left to set"
        );
        assert_eq!(with("").as_deref(), Some(ALL_TUNED));
    }

    #[test]
    fn never_twice_and_never_with_raised_privileges() {
        let marked = Start {
            marked: true,
            ..start(ZEN3)
        };
        assert_eq!(wanted_tunables(marked), None);
        let secure = Start {
            secure: true,
            ..start(ZEN3)
        };
        assert_eq!(wanted_tunables(secure), None);
    }

    #[test]
    fn children_get_the_environment_we_were_started_with() {
        assert!(child_env_for(false, None).is_empty());
        assert_eq!(
            child_env_for(true, None),
            vec![
                ("GLIBC_TUNABLES", None),
                (ORIGINAL_TUNABLES, None),
                (REEXEC_MARK, None)
            ]
        );
        assert_eq!(
            child_env_for(true, Some("glibc.malloc.arena_max=2".into()))[0],
            ("GLIBC_TUNABLES", Some("glibc.malloc.arena_max=2".into()))
        );
    }

    #[test]
    fn secure_mode_is_read_from_the_auxiliary_vector() {
        let auxv = |pairs: &[(u64, u64)]| -> Vec<u8> {
            pairs
                .iter()
                .flat_map(|(k, v)| [k.to_ne_bytes(), v.to_ne_bytes()].concat())
                .collect()
        };
        assert!(!auxv_is_secure(&auxv(&[(6, 4096), (23, 0), (0, 0)])));
        assert!(auxv_is_secure(&auxv(&[(6, 4096), (23, 1), (0, 0)])));
        assert!(!auxv_is_secure(&auxv(&[(6, 4096), (0, 0)])));
        assert!(auxv_is_secure(&[]), "unreadable counts as secure");
        assert!(auxv_is_secure(&[1, 2, 3]), "malformed counts as secure");
    }

    /// If this fails, the test process dies of SIGPIPE.
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    #[test]
    fn a_failed_exec_does_not_leave_sigpipe_fatal() {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new("/nonexistent/telework-relay").exec();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        survive_sigpipe_again();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(b);
        let err = (&a)
            .write_vectored(&[std::io::IoSlice::new(b"x")])
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn this_process_reads_as_not_secure() {
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        if !auxv.is_empty() {
            assert!(!auxv_is_secure(&auxv));
        }
    }
}
