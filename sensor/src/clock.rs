//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time.

use std::time::{Duration, SystemTime};

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time at which the monotonic clock read `mono_ns`.
pub fn to_system_time(mono_ns: u64) -> SystemTime {
    let now_mono = monotonic_ns();
    let now = SystemTime::now();
    if mono_ns <= now_mono {
        now - Duration::from_nanos(now_mono - mono_ns)
    } else {
        now + Duration::from_nanos(mono_ns - now_mono)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_recent_monotonic_times_to_now() {
        let t = to_system_time(monotonic_ns());
        let skew = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "{skew:?}");
        let earlier = to_system_time(monotonic_ns() - 5_000_000_000);
        let age = SystemTime::now().duration_since(earlier).unwrap();
        assert!(age >= Duration::from_secs(5) && age < Duration::from_secs(6), "{age:?}");
    }
}
